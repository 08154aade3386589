-- Tokens get a public id (random, unrelated to the token), a name, an expiry, a revocation
-- time and a coarse "last used" time (written at most once a minute per token).
ALTER TABLE api_tokens
    ADD COLUMN id TEXT,
    ADD COLUMN name TEXT,
    ADD COLUMN expires_at TIMESTAMPTZ,
    ADD COLUMN revoked_at TIMESTAMPTZ,
    ADD COLUMN last_used_at TIMESTAMPTZ;
UPDATE api_tokens SET id = 'tok_' || replace(gen_random_uuid()::text, '-', '') WHERE id IS NULL;
ALTER TABLE api_tokens ALTER COLUMN id SET NOT NULL;
CREATE UNIQUE INDEX api_tokens_id ON api_tokens (id);
