-- The W3C traceparent of the request that caused a task (flaskfleet.tracing): the relay and a
-- requeue publish it with the task, whose log lines then carry the request's trace id. NULL for
-- rows written before this release, or by a node still running the previous one during a
-- rolling deploy: their tasks start a trace of their own.
ALTER TABLE outbox ADD COLUMN traceparent text;
ALTER TABLE dead_letters ADD COLUMN traceparent text;
