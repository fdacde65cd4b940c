"""The Celery app of the worker tier and its tasks, built from the same Settings as the web app.

The broker is a Redis of its own (noeviction, AOF), never the cache's. Every key Celery, kombu
and redbeat write there starts with KEY_PREFIX, so that Redis ACLs can scope the app (which
only publishes) and the workers (which consume and schedule). There is no result backend: the
state of a job lives in PostgreSQL.

Delivery is at least once: a task is acknowledged after it ran (acks_late) and given back when
its worker dies (reject_on_worker_lost), and the broker redelivers a task unacknowledged for
the visibility timeout. Every task is therefore idempotent. Tasks that fail are retried with
exponential backoff and full jitter, FLASKFLEET_TASK_MAX_RETRIES times, then stored as dead
letters (jobs.py) for an operator to requeue.
"""

from __future__ import annotations

import datetime
import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore, Reject, Retry
from kombu import Queue

from flaskfleet import jobs, metrics, shop
from flaskfleet.config import ConfigError, Settings

log = logging.getLogger(__name__)

QUEUE = "flaskfleet"
KEY_PREFIX = "ffq:"
REDBEAT_KEY_PREFIX = KEY_PREFIX + "redbeat:"

CONFIRM_ORDER = "flaskfleet.confirm_order"
SALES_REPORT = "flaskfleet.sales_report"
RELAY_OUTBOX = "flaskfleet.relay_outbox"
RELEASE_EXPIRED_ORDERS = "flaskfleet.release_expired_orders"
PRUNE_OUTBOX = "flaskfleet.prune_outbox"

RELAY_EVERY_SECONDS = 2.0
RELEASE_EXPIRED_EVERY_SECONDS = 30.0
PRUNE_OUTBOX_EVERY_SECONDS = 3600.0
OUTBOX_KEEP_DAYS = 7
EXPIRY_BATCH = 100
# Tasks other than the report touch a few rows: they get at most this long.
SHORT_TASK_TIME_LIMIT = 30
# Backoff: 1 s before the first retry, doubling, each drawn uniformly below that (full
# jitter, so that many tasks failing together do not retry together), capped.
RETRY_BACKOFF_MAX = 600


def _limits(hard: int) -> dict[str, float]:
    """A hard time limit and a soft one (SoftTimeLimitExceeded, which the retry handles) before
    it, so that a slow task normally fails cleanly rather than having its process killed."""
    return {"time_limit": hard, "soft_time_limit": max(hard * 0.9, hard - 30)}


def retry_backoff_cap(settings: Settings) -> float:
    """A retry waits, unacknowledged, in the worker that will run it: waiting and running must
    end within the visibility timeout, or the broker hands the task to a second worker."""
    room = settings.task_visibility_timeout - settings.task_time_limit
    return max(min(RETRY_BACKOFF_MAX, room / 2), 0.5)


class FlaskfleetTask(Task):
    """Retries a failed run with backoff and jitter up to FLASKFLEET_TASK_MAX_RETRIES, then
    stores it as a dead letter. Periodic tasks (dead_letter = False) neither retry nor store:
    their next run does the same work."""

    dead_letter = True
    # The retries are counted here (settings.task_max_retries); Celery's own limit is off.
    max_retries = None
    # Called with the task's arguments once it is dead-lettered (e.g. to fail a report job).
    on_dead_letter: Callable[..., None] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except (Retry, Reject, Ignore):
            raise
        except Exception as exc:
            metrics.TASK_FAILURES.labels(self.name).inc()
            if self.dead_letter:
                self._retry_or_dead_letter(exc, list(args))
            raise

    def _retry_or_dead_letter(self, exc: Exception, args: list[Any]) -> None:
        services = self.app.services
        request = self.request
        headers = dict(request.headers or {})
        first_failed_at = headers.setdefault(jobs.FIRST_FAILED_AT_HEADER, time.time())
        cap = retry_backoff_cap(services.settings)
        attempt = request.retries + 1
        if request.retries < services.settings.task_max_retries:
            countdown = random.uniform(0, min(cap, 2.0**request.retries))  # noqa: S311 -- jitter
            log.warning(
                "task failed, retrying",
                extra={"attempt": attempt, "countdown": round(countdown, 3), "error": repr(exc)},
            )
            metrics.TASK_RETRIES.labels(self.name).inc()
            # The queue wait of the retry counts from when it is due.
            headers[jobs.PUBLISHED_AT_HEADER] = time.time() + countdown
            raise self.retry(exc=exc, countdown=countdown, headers=headers)
        try:
            dead_letter_id, _ = services.db.write(
                lambda conn: jobs.record_dead_letter(
                    conn,
                    task_id=request.id,
                    task=self.name,
                    args=args,
                    request_id=headers.get(jobs.REQUEST_ID_HEADER),
                    traceparent=headers.get(jobs.TRACEPARENT_HEADER),
                    error=repr(exc),
                    attempts=attempt,
                    first_failed_at=first_failed_at,
                )
            )
            if self.on_dead_letter is not None:
                self.on_dead_letter(*args)
        except Exception as store_exc:
            # Not stored: keep the task rather than lose it, and try again later.
            log.error("could not store a dead letter", extra={"error": repr(store_exc)})
            headers[jobs.PUBLISHED_AT_HEADER] = time.time() + cap
            raise self.retry(exc=exc, countdown=cap, headers=headers) from store_exc
        metrics.TASK_DEAD_LETTERS.labels(self.name).inc()
        log.error(
            "task failed every retry, stored as a dead letter",
            extra={"dead_letter_id": dead_letter_id, "attempts": attempt, "error": repr(exc)},
        )


def make_celery(settings: Settings, *, worker: bool) -> Celery:
    """The Celery app: a worker's (worker=True: waits for the broker, reconnects for ever) or
    the web app's, which only publishes and gives up on the broker within a second."""
    if settings.broker_url is None:
        raise ConfigError("FLASKFLEET_BROKER_URL is required to publish or run tasks")
    broker_url = settings.broker_url.get_secret_value()
    celery = Celery("flaskfleet", set_as_current=False)
    transport_options: dict[str, Any] = {
        "global_keyprefix": KEY_PREFIX,
        "visibility_timeout": settings.task_visibility_timeout,
        # One list per queue: no priorities, so the queue depth is one LLEN.
        "priority_steps": [0],
    }
    if worker:
        # BRPOP blocks for a second at a time: the socket timeout must be longer.
        transport_options |= {"socket_timeout": 10, "socket_connect_timeout": 5}
    else:
        # A request publishes once, briefly; a queue that is down leaves the task to the relay.
        transport_options |= {"socket_timeout": 1, "socket_connect_timeout": 1, "max_retries": 0}
    celery.conf.update(
        broker_url=broker_url,
        broker_transport_options=transport_options,
        broker_connection_timeout=5 if worker else 1,
        broker_connection_retry_on_startup=True,
        # kombu would connect to a rediss:// URL without verifying the server's certificate;
        # the CA comes from the URL (?ssl_ca_certs=/path), redbeat takes the same settings.
        broker_use_ssl=(
            {"ssl_cert_reqs": ssl.CERT_REQUIRED} if broker_url.startswith("rediss://") else None
        ),
        # JSON only: whoever can write to the queue must not be able to run code in a worker.
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # Without a result backend there is nothing to expire: no backend_cleanup schedule.
        result_expires=None,
        task_default_queue=QUEUE,
        task_queues=[Queue(QUEUE)],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Remote control, events, gossip and mingle use Redis pub/sub, which the workers' ACL
        # user may not; nothing here needs them (metrics come from flaskfleet.worker).
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        # Logging is flaskfleet's JSON (flaskfleet.worker), written to the real stderr: Celery
        # must not replace stdout and stderr with its logging proxies.
        worker_redirect_stdouts=False,
        beat_scheduler="flaskfleet.beat:Scheduler",
        # Short enough for the relay's schedule; the lock outlives five ticks.
        beat_max_loop_interval=5,
        redbeat_redis_url=broker_url,
        redbeat_redis_options={"socket_timeout": 5, "socket_connect_timeout": 5},
        redbeat_key_prefix=REDBEAT_KEY_PREFIX,
        redbeat_lock_timeout=30,
        beat_schedule={
            name: {
                "task": task,
                "schedule": every,
                # A run not started within its interval is dropped: the next one does its
                # work, so a backlog of periodic runs cannot pile up while workers are down.
                "options": {"expires": every},
            }
            for name, task, every in (
                ("relay-outbox", RELAY_OUTBOX, RELAY_EVERY_SECONDS),
                ("release-expired-orders", RELEASE_EXPIRED_ORDERS, RELEASE_EXPIRED_EVERY_SECONDS),
                ("prune-outbox", PRUNE_OUTBOX, PRUNE_OUTBOX_EVERY_SECONDS),
            )
        },
    )
    _register_tasks(celery, settings)
    return celery


def _register_tasks(celery: Celery, settings: Settings) -> None:
    short = _limits(min(SHORT_TASK_TIME_LIMIT, settings.task_time_limit))
    # Not shared: each Celery app (one per Services) gets its own tasks, bound to its services.
    common = {"base": FlaskfleetTask, "bind": True, "shared": False}

    @celery.task(name=CONFIRM_ORDER, **common, **short)
    def confirm_order(self: FlaskfleetTask, order_id: str) -> None:
        (outcome, lag), _ = self.app.services.db.write(
            lambda conn: shop.confirm_order(conn, order_id, self.request.id)
        )
        if lag is not None:
            metrics.ORDER_CONFIRMATION_LAG.observe(lag)
        log.info("order confirmation", extra={"order_id": order_id, "outcome": outcome})

    def fail_report(job_id: str) -> None:
        celery.services.db.write(lambda conn: jobs.finish_job(conn, job_id, "failed"))

    report_limits = _limits(settings.task_time_limit)
    # PostgreSQL cancels the report's query before the soft time limit: a query blocked in
    # libpq would not see the soft limit's signal until it returned, and the hard limit kills
    # the process, whose task Celery then acknowledges as failed (no retry, no dead letter).
    report_statement_ms = int(report_limits["soft_time_limit"] * 900)

    @celery.task(name=SALES_REPORT, on_dead_letter=fail_report, **common, **report_limits)
    def sales_report(self: FlaskfleetTask, job_id: str) -> None:
        services = self.app.services
        params, _ = services.db.write(lambda conn: jobs.start_job(conn, job_id))
        if params is None:
            log.info("report already done", extra={"job_id": job_id})
            return
        first_day = datetime.date.fromisoformat(params["from"])
        last_day = datetime.date.fromisoformat(params["to"])
        result, source = services.db.read(
            lambda conn: shop.sales_report(conn, first_day, last_day, report_statement_ms)
        )
        services.db.write(lambda conn: jobs.finish_job(conn, job_id, "done", result))
        log.info("report done", extra={"job_id": job_id, "read_from": source})

    @celery.task(name=RELAY_OUTBOX, dead_letter=False, **common, **short)
    def relay_outbox(self: FlaskfleetTask) -> None:
        published = jobs.relay(self.app.services)
        if published:
            log.info("relayed unsent tasks", extra={"count": published})

    @celery.task(name=RELEASE_EXPIRED_ORDERS, dead_letter=False, **common, **short)
    def release_expired_orders(self: FlaskfleetTask) -> None:
        services = self.app.services
        seconds = services.settings.order_reservation_seconds
        while True:
            product_ids, _ = services.db.write(
                lambda conn: shop.release_expired_orders(conn, seconds, EXPIRY_BATCH)
            )
            if not product_ids:
                return
            services.cache.invalidate_products(product_ids)
            log.info("released expired reservations", extra={"product_ids": product_ids})

    @celery.task(name=PRUNE_OUTBOX, dead_letter=False, **common, **short)
    def prune_outbox(self: FlaskfleetTask) -> None:
        deleted, _ = self.app.services.db.write(
            lambda conn: jobs.prune_outbox(conn, OUTBOX_KEEP_DAYS)
        )
        if deleted:
            log.info("pruned sent outbox rows", extra={"count": deleted})
