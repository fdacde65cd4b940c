"""Work handed to the worker tier: the outbox that publishes tasks, report jobs, the dead-letter
store, and the `flask --app flaskfleet tasks` commands an operator uses on it.

A change that needs a task (an order to confirm, a report to compute) writes an outbox row in
its own transaction, so the task exists exactly when the change does. After the commit the
caller publishes it at once and marks it sent; if the queue is down the row stays unsent and
the relay (a periodic task) publishes it later. A row may thus be published twice (the caller
and the relay racing, or a crash between publishing and marking): every task is idempotent.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup
from psycopg2 import sql
from psycopg2.extras import RealDictCursor

from flaskfleet import metrics, tracing

log = logging.getLogger(__name__)

# Task message headers: the request that caused the task (its id goes into the task's log
# lines), the W3C traceparent whose span (the request's) is the parent of the task's, when it
# was published (queue wait metric), and its first failure (dead letters).
REQUEST_ID_HEADER = "flaskfleet_request_id"
TRACEPARENT_HEADER = tracing.HEADER
PUBLISHED_AT_HEADER = "flaskfleet_published_at"
FIRST_FAILED_AT_HEADER = "flaskfleet_first_failed_at"

# The relay leaves rows this young to the app, which publishes them right after its commit.
RELAY_GRACE_SECONDS = 5
RELAY_BATCH = 100


@dataclass(frozen=True)
class OutboxRow:
    id: int
    task_id: str
    task: str
    args: list[Any]
    request_id: str | None
    # The traceparent naming the span that caused the task (the request's) as its parent.
    traceparent: str | None = None


def add(
    conn, task: str, args: list[Any], request_id: str | None, traceparent: str | None
) -> OutboxRow:
    """Record a task to publish, in the caller's transaction."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO outbox (task, args, request_id, traceparent) VALUES (%s, %s, %s, %s)"
            " RETURNING id, task_id::text",
            (task, json.dumps(args), request_id, traceparent),
        )
        outbox_id, task_id = cur.fetchone()
    return OutboxRow(outbox_id, task_id, task, args, request_id, traceparent)


def publish(celery, row: OutboxRow) -> None:
    """Send the task to the queue, once: the caller decides what a failure means."""
    headers = {REQUEST_ID_HEADER: row.request_id, PUBLISHED_AT_HEADER: time.time()}
    if row.traceparent:
        headers[TRACEPARENT_HEADER] = row.traceparent
    celery.send_task(row.task, args=row.args, task_id=row.task_id, headers=headers, retry=False)


def _mark_sent(conn, outbox_ids: list[int]) -> None:
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE outbox SET sent_at = now() WHERE id = ANY(%s) AND sent_at IS NULL",
            (outbox_ids,),
        )


def publish_committed(services, row: OutboxRow) -> None:
    """Publish a row whose transaction has committed. Nothing here may fail the change that
    wrote it: whatever goes wrong is logged, and the relay publishes the row later."""
    if services.celery is None:
        return
    try:
        publish(services.celery, row)
    except Exception as exc:  # any broker failure: the row stays for the relay
        metrics.OUTBOX_PUBLISH_FAILURES.labels(row.task).inc()
        log.warning(
            "could not publish a task, the relay will",
            extra={"task": row.task, "task_id": row.task_id, "error": repr(exc)},
        )
        return
    try:
        services.db.write(lambda conn: _mark_sent(conn, [row.id]))
    except Exception as exc:  # published but not marked: the relay publishes a duplicate
        log.warning(
            "could not mark a published task sent",
            extra={"task": row.task, "task_id": row.task_id, "error": repr(exc)},
        )


def relay(services) -> int:
    """Publish unsent rows older than the grace period; returns how many were published.

    FOR UPDATE SKIP LOCKED lets relays on several worker nodes share the backlog without
    publishing a row twice. A publish failure stops the batch; the rows published before it
    are marked sent, and the failure is raised after the commit.
    """
    failure: Exception | None = None

    def statement(conn) -> int:
        nonlocal failure
        with conn.cursor() as cur:
            cur.execute(
                "SELECT id, task_id::text, task, args, request_id, traceparent FROM outbox"
                " WHERE sent_at IS NULL AND created_at < now() - make_interval(secs => %s)"
                " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                (RELAY_GRACE_SECONDS, RELAY_BATCH),
            )
            rows = [OutboxRow(*values) for values in cur.fetchall()]
        sent = []
        for row in rows:
            try:
                publish(services.celery, row)
            except Exception as exc:  # the broker: keep what was sent, raise after commit
                failure = exc
                break
            sent.append(row.id)
            metrics.OUTBOX_RELAYED.labels(row.task).inc()
        if sent:
            _mark_sent(conn, sent)
        return len(sent)

    # Never run twice: the tasks published before its transaction failed would be published
    # again at once. Its rows stay unsent, for the next relay run.
    published, _ = services.db.write(statement, retry=False)
    if failure is not None:
        raise failure
    return published


def prune_outbox(conn, keep_days: int) -> int:
    """Delete rows sent more than keep_days ago; returns how many."""
    with conn.cursor() as cur:
        cur.execute(
            "DELETE FROM outbox WHERE sent_at < now() - make_interval(days => %s)", (keep_days,)
        )
        return cur.rowcount


# Report jobs.


# What GET /api/v1/jobs/<id> shows: the public id stands in for the sequential key.
JOB_COLUMNS = sql.SQL(
    "public_id::text AS id, kind, params, status, result, created_at, started_at, finished_at"
)


def _job_body(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row,
        **{
            key: row[key].isoformat()
            for key in ("created_at", "started_at", "finished_at")
            if row[key] is not None
        },
    }


def create_job(conn, owner: str, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            sql.SQL(
                "INSERT INTO jobs (owner, kind, params) VALUES (%s, %s, %s) RETURNING {}"
            ).format(JOB_COLUMNS),
            (owner, kind, json.dumps(params)),
        )
        return _job_body(cur.fetchone())


def get_job(conn, public_id: uuid.UUID, owner: str) -> dict[str, Any] | None:
    """The job, if it exists and belongs to `owner`: another client's job is not found."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            sql.SQL("SELECT {} FROM jobs WHERE public_id = %s AND owner = %s").format(JOB_COLUMNS),
            (str(public_id), owner),
        )
        row = cur.fetchone()
    return _job_body(row) if row else None


def start_job(conn, public_id: str) -> dict[str, Any] | None:
    """Mark the job running and return its params; None if it is done (a duplicate delivery).
    A failed job runs again: an operator requeued its dead letter."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE jobs SET status = 'running', started_at = now()"
            " WHERE public_id = %s AND status <> 'done' RETURNING params",
            (public_id,),
        )
        row = cur.fetchone()
    return row[0] if row else None


def finish_job(conn, public_id: str, status: str, result: Any = None) -> None:
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE jobs SET status = %s, result = %s, finished_at = now()"
            " WHERE public_id = %s AND status <> 'done'",
            (status, None if result is None else json.dumps(result), public_id),
        )


# The dead-letter store.


def record_dead_letter(
    conn,
    *,
    task_id: str,
    task: str,
    args: list[Any],
    request_id: str | None,
    traceparent: str | None,
    error: str,
    attempts: int,
    first_failed_at: float,
) -> int:
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO dead_letters (task_id, task, args, request_id, traceparent, error,"
            " attempts, first_failed_at, last_failed_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, to_timestamp(%s), now()) RETURNING id",
            (
                task_id,
                task,
                json.dumps(args),
                request_id,
                traceparent,
                error,
                attempts,
                first_failed_at,
            ),
        )
        return cur.fetchone()[0]


def list_dead_letters(conn, include_requeued: bool) -> list[dict[str, Any]]:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            "SELECT id, task, args, error, attempts, first_failed_at, last_failed_at, requeued_at,"
            " task_id, request_id, traceparent FROM dead_letters"
            " WHERE %s OR requeued_at IS NULL ORDER BY id",
            (include_requeued,),
        )
        return cur.fetchall()


class NotRequeueable(Exception):
    """The dead letter does not exist or was requeued already."""


def requeue(conn, dead_letter_id: int) -> OutboxRow:
    """Put a dead letter's task back into the outbox (a new task id, the same arguments,
    originating request and trace) and mark the letter requeued, in one transaction."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE dead_letters SET requeued_at = now()"
            " WHERE id = %s AND requeued_at IS NULL RETURNING task, args, request_id, traceparent",
            (dead_letter_id,),
        )
        row = cur.fetchone()
    if row is None:
        raise NotRequeueable(f"dead letter {dead_letter_id} does not exist or was requeued already")
    task, args, request_id, traceparent = row
    return add(conn, task, args, request_id, traceparent)


tasks_cli = AppGroup("tasks", help="The worker tier's dead-letter store.")


def _when(value: datetime.datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


@tasks_cli.command("dead-letters")
@click.option("--all", "include_requeued", is_flag=True, help="Include requeued letters.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dead_letters_command(include_requeued: bool, as_json: bool) -> None:
    """List tasks that failed every retry (oldest first)."""
    services = current_app.extensions["flaskfleet"]
    # From the primary, not a replica: the list must show a requeue made a moment ago.
    rows, _ = services.db.write(lambda conn: list_dead_letters(conn, include_requeued))
    for row in rows:
        if as_json:
            click.echo(json.dumps(row, default=str))
            continue
        click.echo(
            f"{row['id']}\t{row['task']}\t{json.dumps(row['args'])}\tattempts={row['attempts']}"
            f"\tfirst={_when(row['first_failed_at'])}\tlast={_when(row['last_failed_at'])}"
            f"\trequeued={_when(row['requeued_at'])}\t{row['error']}"
        )
    if not rows and not as_json:
        click.echo("no dead letters")


@tasks_cli.command("requeue")
@click.argument("dead_letter_id", type=click.IntRange(min=1))
def requeue_command(dead_letter_id: int) -> None:
    """Run a dead-lettered task again (published now, or by the relay if the queue is down)."""
    services = current_app.extensions["flaskfleet"]
    try:
        row, _ = services.db.write(lambda conn: requeue(conn, dead_letter_id))
    except NotRequeueable as exc:
        raise click.ClickException(str(exc)) from None
    publish_committed(services, row)
    click.echo(f"requeued dead letter {dead_letter_id} as task {row.task_id}")
