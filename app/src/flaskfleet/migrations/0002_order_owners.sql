-- Orders belong to API clients and are addressed by a random public id, never by the
-- sequential primary key (which would let anyone count orders or guess their neighbours').
-- Idempotency keys are scoped per client, so two clients using the same key stay apart.
--
-- Rows from before this migration get the owner 'legacy', a name config.py refuses for any
-- client: no token can read them through the API. The volatile default gives each existing
-- row its own public id; gen_random_uuid() is built in since PostgreSQL 13 and draws from a
-- cryptographically strong source.

ALTER TABLE orders
    ADD COLUMN public_id uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    ADD COLUMN owner text NOT NULL DEFAULT 'legacy';
-- From now on every insert names its owner.
ALTER TABLE orders ALTER COLUMN owner DROP DEFAULT;

ALTER TABLE idempotency_keys ADD COLUMN owner text NOT NULL DEFAULT 'legacy';
ALTER TABLE idempotency_keys ALTER COLUMN owner DROP DEFAULT;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (owner, key);
