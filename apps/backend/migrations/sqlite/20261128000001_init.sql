-- API tokens: only the SHA-256 of a token is kept, so a database leak yields no usable token.
CREATE TABLE api_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE INDEX api_tokens_user_id ON api_tokens (user_id);

-- seq orders the list endpoint and backs its cursor; id is the public, opaque identifier.
CREATE TABLE deployments (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    user_id         TEXT NOT NULL,
    -- Second line of defence behind the idempotency store: at most one deployment per user
    -- and key, even if the store forgot the key (in-memory store after a restart).
    -- NULLs are distinct, so requests without a key never collide.
    idempotency_key TEXT,
    project         TEXT NOT NULL,
    environment     TEXT NOT NULL,
    git_ref         TEXT NOT NULL,
    description     TEXT,
    status          TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    CONSTRAINT deployments_user_key UNIQUE (user_id, idempotency_key)
);

CREATE INDEX deployments_user_seq ON deployments (user_id, seq DESC);
