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
    "Cache look-ups by result: hit, miss or error (Redis unreachable).",
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


def render() -> tuple[bytes, str]:
    """The exposition text: summed over all worker processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
