-- A key binds its deployment for the idempotency TTL only, not forever: after the TTL the same
-- (user, key) may create a new deployment. The UNIQUE (user_id, idempotency_key) constraint
-- goes; the database guard now looks the key up through a plain index, within the TTL, in the
-- inserting transaction and under an advisory lock on the pair (src/db/insert.rs).
ALTER TABLE deployments DROP CONSTRAINT deployments_user_key;

-- The guard's lookup: the user's newest deployment with a key.
CREATE INDEX deployments_user_key ON deployments (user_id, idempotency_key, seq DESC);
