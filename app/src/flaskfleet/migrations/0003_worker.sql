-- The background worker tier: orders are reserved until a worker confirms them (or a
-- periodic task releases their stock), tasks reach the queue through an outbox written in the
-- same transaction as the change that needs them, report jobs and a dead-letter store.
--
-- Orders placed before this migration were final when placed: they become 'confirmed'
-- (confirmed_at stays NULL, no worker confirmed them). The column default turns 'confirmed'
-- too, so that an order placed by a node still running the previous release during a rolling
-- deploy (which neither names a status nor writes an outbox row) is never expired; this
-- release names 'reserved' on every insert.

UPDATE orders SET status = 'confirmed' WHERE status = 'reserved';
ALTER TABLE orders
    ALTER COLUMN status SET DEFAULT 'confirmed',
    ADD COLUMN confirmed_at timestamptz,
    ADD COLUMN expired_at timestamptz,
    ADD CONSTRAINT orders_status_check CHECK (status IN ('reserved', 'confirmed', 'expired'));
-- The expiry task's scan: only orders still waiting, oldest first.
CREATE INDEX orders_reserved_created_at_idx ON orders (created_at) WHERE status = 'reserved';
-- The sales report's range scan.
CREATE INDEX orders_created_at_idx ON orders (created_at);

-- One receipt per order, whatever the number of deliveries of its confirm task.
CREATE TABLE order_receipts (
    order_id    bigint PRIMARY KEY REFERENCES orders (id) ON DELETE CASCADE,
    total_cents bigint NOT NULL,
    task_id     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Tasks to publish. The app publishes a row right after its commit and marks it sent; the
-- relay publishes whatever is still unsent a few seconds later (the queue was down).
CREATE TABLE outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id    uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    task       text NOT NULL,
    args       jsonb NOT NULL,
    request_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz
);
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent_at_idx ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Background jobs a client asked for (sales reports), addressed by a random public id.
CREATE TABLE jobs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    public_id   uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    owner       text NOT NULL,
    kind        text NOT NULL,
    params      jsonb NOT NULL,
    status      text NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'done', 'failed')),
    result      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz
);

-- Tasks that failed every retry, for an operator to read and requeue
-- (flask --app flaskfleet tasks dead-letters / requeue <id>).
CREATE TABLE dead_letters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id         text NOT NULL,
    task            text NOT NULL,
    args            jsonb NOT NULL,
    request_id      text,
    error           text NOT NULL,
    attempts        integer NOT NULL,
    first_failed_at timestamptz NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    requeued_at     timestamptz
);
