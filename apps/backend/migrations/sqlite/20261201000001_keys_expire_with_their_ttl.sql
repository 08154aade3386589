-- A key binds its deployment for the idempotency TTL only, not forever: after the TTL the same
-- (user, key) may create a new deployment. SQLite cannot drop a table constraint, so the table
-- is rebuilt without UNIQUE (user_id, idempotency_key), keeping every row and its seq (and
-- with them the list cursors already handed out). The database guard now looks the key up
-- through a plain index, within the TTL, in the inserting transaction (src/db/insert.rs).
CREATE TABLE deployments_rebuilt (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    user_id         TEXT NOT NULL,
    -- The Idempotency-Key the deployment was created with; NULL without one.
    idempotency_key TEXT,
    project         TEXT NOT NULL,
    environment     TEXT NOT NULL,
    git_ref         TEXT NOT NULL,
    description     TEXT,
    status          TEXT NOT NULL,
    created_at      TEXT NOT NULL
);

INSERT INTO deployments_rebuilt
    (seq, id, user_id, idempotency_key, project, environment, git_ref, description, status,
     created_at)
SELECT seq, id, user_id, idempotency_key, project, environment, git_ref, description, status,
       created_at
FROM deployments;

-- AUTOINCREMENT's high-water mark moves over too: a seq is never handed out twice.
DELETE FROM sqlite_sequence WHERE name = 'deployments_rebuilt';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'deployments_rebuilt', seq FROM sqlite_sequence WHERE name = 'deployments';

DROP TABLE deployments;

ALTER TABLE deployments_rebuilt RENAME TO deployments;

CREATE INDEX deployments_user_seq ON deployments (user_id, seq DESC);

-- The guard's lookup: the user's newest deployment with a key.
CREATE INDEX deployments_user_key ON deployments (user_id, idempotency_key, seq DESC);
