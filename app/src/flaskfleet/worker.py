"""Entry point of the worker tier, configured from the same FLASKFLEET_* variables as the app:

    celery --app flaskfleet.worker worker --without-gossip --without-mingle --without-heartbeat
    celery --app flaskfleet.worker beat

Importing this module builds the worker's Celery app (`celery`) and connects the worker's
signal handlers: JSON logs carrying the id and the trace of the request that caused each task,
task metrics, and the Prometheus endpoint its main process serves on FLASKFLEET_WORKER_METRICS_PORT
(0 = off) with the metrics of every pool process (PROMETHEUS_MULTIPROC_DIR must be set) plus
the queue's depth and the outbox's and dead-letter store's backlogs, read at scrape time.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import redis
from celery import signals
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from flaskfleet import build_services, jobs, logs, metrics, tracing
from flaskfleet.config import Settings, unknown_variables
from flaskfleet.tasks import KEY_PREFIX, QUEUE

log = logging.getLogger(__name__)

settings = Settings.from_env()
logs.configure()
for _name in unknown_variables():
    log.warning("ignoring unknown configuration variable", extra={"variable": _name})
services = build_services(settings, worker=True)
celery = services.celery

# perf_counter() at the start of each task this process is running, by task id.
_started: dict[str, float] = {}


@signals.setup_logging.connect
def _json_logs(**_kwargs) -> None:
    """Every logger (Celery's too) as JSON lines on stderr, like the app's."""
    logs.configure("")


@signals.before_task_publish.connect
def _stamp_publish_time(headers: dict, **_kwargs) -> None:
    # Tasks from beat and the relay; the app's and a retry's carry their own time already.
    headers.setdefault(jobs.PUBLISHED_AT_HEADER, time.time())


@signals.task_prerun.connect
def _task_started(task_id: str, task, **_kwargs) -> None:
    headers = task.request.headers or {}
    fields = {"task": task.name, "task_id": task_id, "retries": task.request.retries}
    if headers.get(jobs.REQUEST_ID_HEADER):
        fields["request_id"] = headers[jobs.REQUEST_ID_HEADER]
    # This run's span, a child of the request's; a task without a valid traceparent (a
    # periodic one) starts a trace of its own.
    traceparent = headers.get(jobs.TRACEPARENT_HEADER)
    trace = tracing.continue_from(traceparent if isinstance(traceparent, str) else None)
    fields |= trace.log_fields()
    logs.task_fields.set(fields)
    published_at = headers.get(jobs.PUBLISHED_AT_HEADER)
    if isinstance(published_at, int | float):
        metrics.TASK_QUEUE_WAIT.labels(task.name).observe(max(time.time() - published_at, 0))
    _started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _task_finished(task_id: str, task, state: str | None = None, **_kwargs) -> None:
    started = _started.pop(task_id, None)
    if started is not None:
        outcome = {"SUCCESS": "success", "RETRY": "retry"}.get(state or "", "failure")
        metrics.TASK_DURATION.labels(task.name, outcome).observe(time.perf_counter() - started)
    logs.task_fields.set(None)


def _multiproc_dir() -> Path | None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(directory) if directory else None


@signals.worker_init.connect
def _check_metrics_dir(**_kwargs) -> None:
    """Before the pool starts: the metrics of pool processes need the multiprocess directory,
    emptied of a previous run's files (their values would be summed in)."""
    if not settings.worker_metrics_port:
        return
    directory = _multiproc_dir()
    if directory is None:
        # SystemExit, not an exception: Celery logs and ignores exceptions in signal handlers.
        raise SystemExit(
            "PROMETHEUS_MULTIPROC_DIR must be set to a writable directory while"
            " FLASKFLEET_WORKER_METRICS_PORT is on (0 turns the metrics off)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


class BacklogCollector:
    """The queue's and the stores' backlogs, read when Prometheus scrapes. A source that does
    not answer leaves its series out (alert on their absence) rather than failing the scrape."""

    def __init__(self) -> None:
        self._redis = redis.Redis.from_url(
            settings.broker_url.get_secret_value(), socket_timeout=2, socket_connect_timeout=2
        )

    def collect(self):
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.llen(KEY_PREFIX + QUEUE).hlen(KEY_PREFIX + "unacked")
                waiting, unacked = pipe.execute()
        except redis.RedisError as exc:
            log.warning("metrics: queue unreachable", extra={"error": repr(exc)})
        else:
            depth = GaugeMetricFamily(
                "flaskfleet_queue_length", "Tasks waiting in the queue.", labels=["queue"]
            )
            depth.add_metric([QUEUE], waiting)
            yield depth
            yield GaugeMetricFamily(
                "flaskfleet_queue_unacked",
                "Tasks delivered to a worker and not yet acknowledged (running or due later).",
                value=unacked,
            )
        try:
            (dead_letters, outbox), _ = services.db.read(_store_backlogs)
        except Exception as exc:  # the database: leave these series out of this scrape
            log.warning("metrics: database unreachable", extra={"error": repr(exc)})
            return
        pending = GaugeMetricFamily(
            "flaskfleet_dead_letters",
            "Dead letters not yet requeued, by task.",
            labels=["task"],
        )
        for task, count in dead_letters:
            pending.add_metric([task], count)
        yield pending
        unsent, oldest_age = outbox
        yield GaugeMetricFamily(
            "flaskfleet_outbox_unsent", "Outbox rows not yet published.", value=unsent
        )
        yield GaugeMetricFamily(
            "flaskfleet_outbox_oldest_unsent_age_seconds",
            "Age of the oldest unpublished outbox row (0 when there is none).",
            value=oldest_age,
        )


def _store_backlogs(conn):
    with conn.cursor() as cur:
        cur.execute(
            "SELECT task, count(*) FROM dead_letters WHERE requeued_at IS NULL GROUP BY task"
        )
        dead_letters = cur.fetchall()
        cur.execute(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float"
            " FROM outbox WHERE sent_at IS NULL"
        )
        outbox = cur.fetchone()
    return dead_letters, outbox


@signals.worker_ready.connect
def _serve_metrics(**_kwargs) -> None:
    if not settings.worker_metrics_port:
        return
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(BacklogCollector())
    start_http_server(
        settings.worker_metrics_port, settings.worker_metrics_address, registry=registry
    )
    log.info(
        "serving metrics",
        extra={"address": settings.worker_metrics_address, "port": settings.worker_metrics_port},
    )


@signals.worker_process_shutdown.connect
def _pool_process_gone(pid: int | None = None, **_kwargs) -> None:
    # Its "live" gauges (database pool use) no longer count.
    if _multiproc_dir() is not None:
        mark_process_dead(pid or os.getpid())
