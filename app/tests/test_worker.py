"""The worker tier against a real queue Redis and real `celery worker` processes: orders
confirmed exactly once through the outbox, the relay, redelivery after a killed worker,
retries and dead letters, expiry under concurrency, and the request id in task logs."""

import json
import signal
import threading
import time

import pytest
import redis
from conftest import (
    AUTH,
    QUEUE_CONSUMER,
    QUEUE_PRODUCER,
    RUNTIME_ROLE,
    metrics_text,
    wait_for,
)
from flaskfleet import jobs, shop
from flaskfleet.tasks import RELEASE_EXPIRED_ORDERS


def order_body(*lines):
    return {"items": [{"product_id": pid, "quantity": qty} for pid, qty in lines]}


def place(client, product_id: int, quantity: int = 1, **headers) -> dict:
    response = client.post(
        "/api/v1/orders", json=order_body((product_id, quantity)), headers={**AUTH, **headers}
    )
    assert response.status_code == 201, response.json
    return response.json


def wait_confirmed(cluster, order_id: str, timeout: float = 20.0) -> None:
    wait_for(
        lambda: cluster.primary.query(
            "SELECT status = 'confirmed' FROM orders WHERE public_id = %s", (order_id,)
        )[0][0],
        timeout,
        f"order {order_id} to be confirmed",
    )


def receipts(cluster) -> int:
    return cluster.primary.query("SELECT count(*) FROM order_receipts")[0][0]


def test_worker_confirms_an_order_once(client, product, cluster, start_worker):
    worker = start_worker()
    item = product(sku="CONFIRM", stock=5)
    placed = place(client, item["id"], 2)
    assert (placed["status"], placed["confirmed_at"]) == ("reserved", None)
    url = f"/api/v1/orders/{placed['id']}"
    order = wait_for(
        lambda: (body := client.get(url, headers=AUTH).json)["status"] == "confirmed" and body,
        what="the worker to confirm the order",
    )
    assert order["confirmed_at"] >= order["created_at"]
    assert receipts(cluster) == 1
    # Published by the app right after its commit, not left to the relay.
    assert cluster.primary.query("SELECT count(*) FROM outbox WHERE sent_at IS NULL")[0][0] == 0
    # The worker's main process serves the pool processes' task metrics and the queue depth.
    # The run time is recorded once the task has returned, a moment after its commit: wait for
    # every series rather than the first.
    port = int(worker.env["FLASKFLEET_WORKER_METRICS_PORT"])
    expected = (
        'flaskfleet_task_duration_seconds_count{outcome="success",task="flaskfleet.confirm_order"}',
        'flaskfleet_task_queue_wait_seconds_count{task="flaskfleet.confirm_order"}',
        'flaskfleet_queue_length{queue="flaskfleet"} 0.0',
        "flaskfleet_outbox_unsent 0.0",
        "flaskfleet_order_confirmation_lag_seconds_count 1.0",
    )
    text = ""

    def all_series() -> bool:
        nonlocal text
        text = metrics_text(port) or ""
        return all(series in text for series in expected)

    try:
        wait_for(all_series, what="the confirmation in the worker's metrics")
    except TimeoutError:
        missing = [series for series in expected if series not in text]
        raise AssertionError(f"missing from the worker's metrics: {missing}") from None


def test_task_logs_carry_the_request_id(client, product, cluster, start_worker):
    worker = start_worker()
    item = product(sku="TRACED")
    order = place(client, item["id"], **{"X-Request-ID": "req-trace-42"})
    wait_confirmed(cluster, order["id"])
    lines = wait_for(
        lambda: [
            line
            for line in worker.log_lines()
            if line.get("logger") == "flaskfleet.tasks" and line.get("order_id") == order["id"]
        ],
        what="the task's log line",
    )
    assert lines[0]["request_id"] == "req-trace-42"
    assert lines[0]["task"] == "flaskfleet.confirm_order"
    assert {"time", "level", "message", "task_id"} <= set(lines[0])
    # Celery's own lines about the task are JSON with the same fields.
    wait_for(
        lambda: any(
            line.get("logger") == "celery.app.trace" and line.get("request_id") == "req-trace-42"
            for line in worker.log_lines()
        ),
        what="Celery's line about the task",
    )


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"


def traced_task_lines(worker, order_id: str) -> list[dict]:
    """Every line the worker wrote while running the order's confirmation (those carrying its
    task id), once the task has logged its outcome."""
    (task_id,) = wait_for(
        lambda: {
            line["task_id"]
            for line in worker.log_lines()
            if line.get("message") == "order confirmation" and line.get("order_id") == order_id
        },
        what="the task's log line",
    )
    # Celery's line about the task's end comes a moment after the task's own.
    return wait_for(
        lambda: (
            (lines := [line for line in worker.log_lines() if line.get("task_id") == task_id])
            and any(line.get("logger") == "celery.app.trace" for line in lines)
            and lines
        ),
        what="Celery's line about the task",
    )


def assert_child_of(lines: list[dict], request_id: str, request_span: str) -> None:
    """Each line carries the request's id and trace, and one span: the run's, whose parent
    is the request's span."""
    for line in lines:
        assert line["request_id"] == request_id, line
        assert line["trace_id"] == TRACE_ID, line
        assert line["parent_span_id"] == request_span, line
    (span,) = {line["span_id"] for line in lines}
    assert len(span) == 16 and span not in (request_span, CLIENT_SPAN)


def test_task_logs_carry_the_trace_as_a_child_of_the_request(
    client, product, cluster, start_worker
):
    worker = start_worker()
    item = product(sku="TRACE-CHILD")
    order = place(client, item["id"], **{"X-Request-ID": "req-w3c", "traceparent": TRACEPARENT})
    # The outbox row names the request's span (a child of the client's) as the task's parent.
    ((stored,),) = cluster.primary.query("SELECT traceparent FROM outbox")
    version, trace_id, request_span, flags = stored.split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert len(request_span) == 16 and request_span != CLIENT_SPAN
    wait_confirmed(cluster, order["id"])
    assert_child_of(traced_task_lines(worker, order["id"]), "req-w3c", request_span)


def test_the_relay_carries_the_trace(
    client, product, cluster, queue_server, start_worker, start_beat, capfd
):
    item = product(sku="TRACE-RELAY")
    capfd.readouterr()
    queue_server.stop()
    try:
        order = place(
            client, item["id"], **{"X-Request-ID": "req-relayed", "traceparent": TRACEPARENT}
        )
    finally:
        queue_server.start()
    app_lines = [
        json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")
    ]
    (warning,) = [
        line
        for line in app_lines
        if line.get("message") == "could not publish a task, the relay will"
    ]
    assert (warning["request_id"], warning["trace_id"], warning["parent_span_id"]) == (
        "req-relayed",
        TRACE_ID,
        CLIENT_SPAN,
    )
    worker = start_worker()
    start_beat()
    wait_confirmed(cluster, order["id"], timeout=30)
    assert any(line.get("message") == "relayed unsent tasks" for line in worker.log_lines())
    assert_child_of(traced_task_lines(worker, order["id"]), "req-relayed", warning["span_id"])


def test_periodic_tasks_start_a_trace_of_their_own(app, cluster, start_worker):
    worker = start_worker()
    app.extensions["flaskfleet"].celery.send_task(RELEASE_EXPIRED_ORDERS)
    lines = wait_for(
        lambda: [
            line
            for line in worker.log_lines()
            if line.get("task") == RELEASE_EXPIRED_ORDERS and line.get("task_id")
        ],
        what="the periodic task's log lines",
    )
    for line in lines:
        assert len(line["trace_id"]) == 32 and len(line["span_id"]) == 16, line
        assert "parent_span_id" not in line and "request_id" not in line, line


def test_a_task_delivered_twice_confirms_once(app, client, product, cluster, start_worker):
    item = product(sku="TWICE", stock=5)
    order = place(client, item["id"], 3)
    # The same task, published a second time (as the relay racing the app would).
    ((outbox_id, task_id),) = cluster.primary.query("SELECT id, task_id::text FROM outbox")
    row = jobs.OutboxRow(outbox_id, task_id, "flaskfleet.confirm_order", [order["id"]], "dup")
    for _ in range(3):
        jobs.publish(app.extensions["flaskfleet"].celery, row)
    worker = start_worker(concurrency=2)
    wait_confirmed(cluster, order["id"])
    outcomes = wait_for(
        lambda: (
            (
                found := [
                    line["outcome"]
                    for line in worker.log_lines()
                    if line.get("message") == "order confirmation"
                ]
            )
            and len(found) == 4
            and found
        ),
        what="all four deliveries to run",
    )
    assert sorted(outcomes) == ["already_confirmed"] * 3 + ["confirmed"]
    assert receipts(cluster) == 1
    ((stock,),) = cluster.primary.query("SELECT stock FROM products")
    assert stock == 2


def test_an_order_placed_while_the_queue_is_down_is_confirmed_later(
    client, product, cluster, queue_server, start_worker, start_beat
):
    item = product(sku="QUEUE-DOWN")
    queue_server.stop()
    try:
        started = time.monotonic()
        order = place(client, item["id"])
        # The broker timeout is short: a queue that is down costs the order about a second.
        assert time.monotonic() - started < 5
    finally:
        queue_server.start()
    ((sent_at,),) = cluster.primary.query("SELECT sent_at FROM outbox")
    assert sent_at is None
    # Once the queue is back the app publishes at once again.
    later = place(client, item["id"])
    assert cluster.primary.query("SELECT sent_at IS NOT NULL FROM outbox ORDER BY id")[1][0]
    worker = start_worker()
    # One beat per worker node; redbeat's lock lets only one of them schedule.
    beats = [start_beat(), start_beat()]
    wait_confirmed(cluster, order["id"], timeout=30)
    wait_confirmed(cluster, later["id"])
    assert receipts(cluster) == 2
    assert cluster.primary.query("SELECT count(*) FROM outbox WHERE sent_at IS NULL")[0][0] == 0
    assert any(line.get("message") == "relayed unsent tasks" for line in worker.log_lines())
    scheduling = [
        any(line["message"].startswith("Scheduler: Sending due task") for line in beat.log_lines())
        for beat in beats
    ]
    assert sorted(scheduling) == [False, True]


def test_a_killed_worker_task_is_redelivered_and_runs_once(
    client, product, cluster, queue_server, start_worker
):
    item = product(sku="KILLED", stock=5)
    order = place(client, item["id"])
    # Hold the order's row lock, so that the task is stuck mid-run when its worker dies.
    lock = cluster.primary.connect()
    lock.autocommit = False
    with lock.cursor() as cur:
        cur.execute("SELECT 1 FROM orders WHERE public_id = %s FOR UPDATE", (order["id"],))
    try:
        doomed = start_worker(concurrency=1)
        wait_for(
            lambda: cluster.primary.query(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
                " AND wait_event_type = 'Lock'",
                (RUNTIME_ROLE,),
            )[0][0],
            what="the task to wait for the order's lock",
        )
        delivered_at = time.time()
        doomed.signal(signal.SIGKILL)
        doomed.process.wait(timeout=10)
    finally:
        lock.rollback()
        lock.close()
    admin = queue_server.admin()
    assert admin.hlen("ffq:unacked") == 1, "the task should be held, unacknowledged"
    assert receipts(cluster) == 0
    # A worker with a short visibility timeout takes the task back once it has passed.
    visibility = 3
    time.sleep(max(delivered_at + visibility + 0.5 - time.time(), 0))
    start_worker(FLASKFLEET_TASK_VISIBILITY_TIMEOUT=str(visibility), FLASKFLEET_TASK_TIME_LIMIT="2")
    wait_confirmed(cluster, order["id"])
    wait_for(lambda: admin.hlen("ffq:unacked") == 0, what="the redelivered task to be acked")
    assert receipts(cluster) == 1
    ((task_id,),) = cluster.primary.query("SELECT task_id::text FROM outbox")
    assert cluster.primary.query("SELECT task_id FROM order_receipts")[0][0] == task_id


def flask_tasks(app, *args: str):
    """`flask --app flaskfleet tasks ...` through Flask's CLI runner (in process)."""
    return app.test_cli_runner().invoke(args=["tasks", *args])


def test_retries_then_dead_letter_then_requeue(app, client, product, cluster, start_worker):
    worker = start_worker(FLASKFLEET_TASK_MAX_RETRIES="2")
    item = product(sku="DEAD", stock=5)
    # The confirmation fails for as long as the runtime role may not write receipts.
    cluster.primary.query(f"REVOKE INSERT ON order_receipts FROM {RUNTIME_ROLE}")
    try:
        order = place(client, item["id"], **{"X-Request-ID": "req-dead-1"})
        wait_for(
            lambda: cluster.primary.query("SELECT count(*) FROM dead_letters")[0][0],
            30,
            "the task to be dead-lettered",
        )
    finally:
        cluster.primary.query(f"GRANT INSERT ON order_receipts TO {RUNTIME_ROLE}")
    ((letter_id, task, args, attempts, request_id, error, first, last),) = cluster.primary.query(
        "SELECT id, task, args, attempts, request_id, error, first_failed_at, last_failed_at"
        " FROM dead_letters"
    )
    assert (task, args, attempts, request_id) == (
        "flaskfleet.confirm_order",
        [order["id"]],
        3,
        "req-dead-1",
    )
    assert "InsufficientPrivilege" in error
    assert first < last
    retries = [
        line for line in worker.log_lines() if line.get("message") == "task failed, retrying"
    ]
    assert [line["attempt"] for line in retries] == [1, 2]
    assert cluster.primary.query("SELECT status FROM orders")[0][0] == "reserved"
    port = int(worker.env["FLASKFLEET_WORKER_METRICS_PORT"])
    text = metrics_text(port)
    assert 'flaskfleet_task_retries_total{task="flaskfleet.confirm_order"} 2.0' in text
    assert 'flaskfleet_task_dead_letters_total{task="flaskfleet.confirm_order"} 1.0' in text
    assert 'flaskfleet_dead_letters{task="flaskfleet.confirm_order"} 1.0' in text

    listed = flask_tasks(app, "dead-letters")
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.startswith(f"{letter_id}\tflaskfleet.confirm_order\t")
    assert "attempts=3" in listed.stdout
    requeued = flask_tasks(app, "requeue", str(letter_id))
    assert requeued.exit_code == 0, requeued.output
    wait_confirmed(cluster, order["id"])
    assert receipts(cluster) == 1
    assert flask_tasks(app, "dead-letters").stdout == "no dead letters\n"
    assert str(letter_id) in flask_tasks(app, "dead-letters", "--all").stdout
    again = flask_tasks(app, "requeue", str(letter_id))
    assert again.exit_code != 0
    assert "requeued already" in again.stderr


def test_expiry_releases_stock_exactly_once_under_concurrency(app, client, product, cluster):
    """Expiry runs, new orders and a confirmation race; every expired order's stock comes back
    exactly once, and no order is both confirmed and expired."""
    services = app.extensions["flaskfleet"]
    item = product(sku="EXPIRE", stock=100)
    orders = [place(client, item["id"], 2)["id"] for _ in range(10)]
    stale = orders[:6]
    cluster.primary.query(
        "UPDATE orders SET created_at = now() - interval '1 hour'"
        " WHERE public_id = ANY(%s::uuid[])",
        (stale,),
    )
    expire = services.celery.tasks[RELEASE_EXPIRED_ORDERS]
    barrier = threading.Barrier(9)
    failures = []

    def run(action):
        barrier.wait()
        try:
            action()
        except Exception as exc:  # collected and asserted below
            failures.append(exc)

    actions = [expire] * 4
    actions += [lambda: place(app.test_client(), item["id"], 1) for _ in range(4)]
    actions.append(lambda: services.db.write(lambda conn: shop.confirm_order(conn, stale[0], "t")))
    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    expire()
    rows = dict(
        cluster.primary.query(
            "SELECT public_id::text, status FROM orders WHERE public_id = ANY(%s::uuid[])",
            (stale,),
        )
    )
    expired = [order for order in stale if rows[order] == "expired"]
    assert set(rows.values()) <= {"expired", "confirmed"}
    assert len(expired) in {5, 6}
    assert (rows[stale[0]] == "confirmed") == (receipts(cluster) == 1)
    ((stock,),) = cluster.primary.query("SELECT stock FROM products")
    # 10 orders of 2 and 4 of 1 taken; 2 back per expired order.
    assert stock == 100 - 20 - 4 + 2 * len(expired)
    ((fresh_reserved,),) = cluster.primary.query(
        "SELECT count(*) FROM orders"
        " WHERE status = 'reserved' AND created_at > now() - interval '1 minute'"
    )
    assert fresh_reserved == 8
    # The product's cached stock was dropped with the release.
    assert client.get(f"/api/v1/products/{item['id']}", headers=AUTH).json["stock"] == stock


@pytest.mark.parametrize(
    ("user", "command"),
    [
        (QUEUE_PRODUCER, ("BRPOP", "ffq:flaskfleet", "1")),
        (QUEUE_PRODUCER, ("RPOP", "ffq:flaskfleet")),
        (QUEUE_PRODUCER, ("LRANGE", "ffq:flaskfleet", "0", "-1")),
        (QUEUE_PRODUCER, ("HGETALL", "ffq:unacked")),
        (QUEUE_PRODUCER, ("DEL", "ffq:flaskfleet")),
        (QUEUE_PRODUCER, ("LPUSH", "ff:cache:x", "1")),
        (QUEUE_CONSUMER, ("LPUSH", "ff:cache:x", "1")),
        (QUEUE_CONSUMER, ("LRANGE", "ffq:flaskfleet", "0", "-1")),
        *(
            (user, command)
            for user in (QUEUE_PRODUCER, QUEUE_CONSUMER)
            for command in (
                ("FLUSHALL",),
                ("CONFIG", "GET", "*"),
                ("KEYS", "*"),
                ("SCAN", "0"),
                ("ACL", "LIST"),
                ("CLIENT", "LIST"),
                ("SHUTDOWN", "NOSAVE"),
                ("SUBSCRIBE", "ffq:x"),
            )
        ),
    ],
)
def test_queue_users_are_least_privileged(queue_server, user, command):
    client = redis.Redis.from_url(queue_server.url_for(user))
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command(*command)


def test_beat_schedules_again_after_the_queue_returns(
    client, product, cluster, queue_server, start_worker, start_beat
):
    """The queue's Redis goes away while beat holds redbeat's lock: beat keeps running, and once
    Redis is back (its append-only file kept the schedule) the relay confirms an order committed
    during the outage, with no restart of beat."""
    item = product(sku="BEAT-OUTAGE")
    start_worker()
    beat = start_beat()

    def sends() -> int:
        return sum(
            line["message"].startswith("Scheduler: Sending due task") for line in beat.log_lines()
        )

    wait_for(lambda: sends() > 0, 30, "beat to schedule")
    queue_server.stop()
    try:
        order = place(client, item["id"])
        wait_for(
            lambda: any(
                line["message"] == "queue unreachable, the scheduler waits"
                for line in beat.log_lines()
            ),
            30,
            "beat to notice the outage",
        )
    finally:
        queue_server.start()
    wait_confirmed(cluster, order["id"], timeout=40)
    assert beat.process.poll() is None
    assert not any(
        line["message"] == "the queue has lost the schedule, installing it again"
        for line in beat.log_lines()
    )


def test_beat_installs_the_schedule_again_when_the_queue_lost_it(queue_server, start_beat):
    beat = start_beat()

    def messages() -> list[str]:
        return [line["message"] for line in beat.log_lines()]

    wait_for(lambda: any(m.startswith("Scheduler: Sending") for m in messages()), 30, "beat")
    queue_server.admin().flushdb()
    reinstalled = "the queue has lost the schedule, installing it again"
    wait_for(lambda: reinstalled in messages(), 30, "beat to install the schedule again")
    wait_for(
        lambda: any(
            message.startswith("Scheduler: Sending due task relay-outbox")
            for message in messages()[messages().index(reinstalled) :]
        ),
        30,
        "beat to send the relay after installing the schedule",
    )
    assert queue_server.admin().exists("ffq:redbeat::schedule")
