"""Prometheus metrics; multiprocess-safe under Gunicorn when PROMETHEUS_MULTIPROC_DIR is set."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

# The *_created series double the output and no dashboard of ours reads them.
disable_created_metrics()

HTTP_REQUESTS = Counter(
    "flaskfleet_http_requests_total",
    "HTTP requests by route, method and status code.",
    ["method", "route", "status"],
)
HTTP_ERRORS = Counter(
    "flaskfleet_http_request_errors_total",
    "HTTP requests answered with a 5xx status, by route.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "flaskfleet_http_request_duration_seconds",
    "Time spent handling a request, by route.",
    ["method", "route"],
)
CACHE_REQUESTS = Counter(
    "flaskfleet_cache_requests_total",
    "Cache look-ups by result: hit, miss, error (Redis unreachable) or skipped (breaker open).",
    ["result"],
)
DB_POOL_IN_USE = Gauge(
    "flaskfleet_db_pool_connections_in_use",
    "Connections currently checked out of the pool.",
    ["pool"],
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "flaskfleet_db_pool_connections_max",
    "Largest number of connections the pool may hold.",
    ["pool"],
    multiprocess_mode="livesum",
)
DB_READ_ROUTED = Counter(
    "flaskfleet_db_reads_to_primary_total",
    "Reads sent to the primary although a replica is configured, by reason.",
    ["reason"],
)
DB_WRITE_RETRIES = Counter(
    "flaskfleet_db_write_retries_total",
    "Write transactions run again on a new connection after failing before their commit, by"
    " reason: read_only (the server no longer leads) or connection_lost.",
    ["reason"],
)
BREAKER_STATE = Gauge(
    "flaskfleet_breaker_state",
    "Circuit breaker state by dependency: 0 closed, 1 half-open (probing), 2 open. Each process"
    " has its own breakers; the worst of the live processes is served.",
    ["breaker"],
    multiprocess_mode="livemax",
)
BREAKER_OPENED = Counter(
    "flaskfleet_breaker_opened_total",
    "Times a circuit breaker opened, after consecutive failures or a failed probe.",
    ["breaker"],
)

# The worker tier. Task metrics are recorded in the worker's pool processes and served, summed,
# by its main process (flaskfleet.worker), which also reports the queue and the stores.
TASK_QUEUE_WAIT = Histogram(
    "flaskfleet_task_queue_wait_seconds",
    "Time from publishing a task (or a retry's due time) to a worker starting it, by task.",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
)
TASK_DURATION = Histogram(
    "flaskfleet_task_duration_seconds",
    "Run time of a task, by task and outcome (success, retry, failure).",
    ["task", "outcome"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
TASK_RETRIES = Counter(
    "flaskfleet_task_retries_total", "Task runs that failed and were scheduled again.", ["task"]
)
TASK_FAILURES = Counter(
    "flaskfleet_task_failures_total", "Task runs that raised, retried or not, by task.", ["task"]
)
TASK_DEAD_LETTERS = Counter(
    "flaskfleet_task_dead_letters_total",
    "Tasks moved to the dead-letter store after their last retry, by task.",
    ["task"],
)
ORDER_CONFIRMATION_LAG = Histogram(
    "flaskfleet_order_confirmation_lag_seconds",
    "Time from placing an order to a worker confirming it.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
)
OUTBOX_PUBLISH_FAILURES = Counter(
    "flaskfleet_outbox_publish_failures_total",
    "Tasks the app could not publish right after its commit (the relay publishes them later).",
    ["task"],
)
OUTBOX_RELAYED = Counter(
    "flaskfleet_outbox_relayed_total",
    "Tasks the relay published because nobody had published them yet.",
    ["task"],
)


def render() -> tuple[bytes, str]:
    """The exposition text: summed over all worker processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
