"""Circuit breakers: a dependency that stops answering (not refusing) is skipped after a few
failures, probed by one caller once the cool-down is over, and shown in /readyz and /metrics.
Also the database connections' statement timeout and keepalives, and missing products cached."""

import re
import socket
import threading

import psycopg2
import pytest
from conftest import AUTH, wait_for
from flaskfleet import metrics
from flaskfleet.breakers import Breaker, BreakerOpen
from flaskfleet.cache import product_key


class Flaky(Exception):
    pass


def breaker(**overrides) -> Breaker:
    options = {
        "failures": 3,
        "reset_seconds": 0.2,
        "max_reset_seconds": 0.5,
        "expected_exception": Flaky,
    }
    return Breaker(f"test-{id(overrides)}", **{**options, **overrides})


def fail():
    raise Flaky("down")


def state_value(name: str) -> float:
    return metrics.BREAKER_STATE.labels(name)._value.get()


def test_opens_after_the_set_number_of_consecutive_failures_and_then_skips_the_call():
    guarded = breaker()
    calls = []
    for _ in range(2):
        with pytest.raises(Flaky):
            guarded.call(fail)
    assert guarded.state == "closed"
    # A success in between starts the count again.
    assert guarded.call(lambda: "ok") == "ok"
    for _ in range(3):
        with pytest.raises(Flaky):
            guarded.call(fail)
    assert guarded.state == "open"
    assert state_value(guarded.name) == 2
    with pytest.raises(BreakerOpen):
        guarded.call(calls.append, "should not run")
    assert calls == []


def test_other_errors_do_not_count():
    guarded = breaker()
    for _ in range(5):
        with pytest.raises(KeyError):
            guarded.call(lambda: {}["missing"])
    assert guarded.state == "closed"


def test_one_probe_after_the_cool_down_closes_it_on_success():
    guarded = breaker(failures=1)
    with pytest.raises(Flaky):
        guarded.call(fail)
    wait_for(lambda: guarded.state == "half_open", timeout=2, what="the cool-down to pass")
    probe_started, release_probe = threading.Event(), threading.Event()

    def slow_success():
        probe_started.set()
        release_probe.wait(5)
        return "ok"

    results = []
    prober = threading.Thread(target=lambda: results.append(guarded.call(slow_success)))
    prober.start()
    assert probe_started.wait(5)
    # While the probe runs, everyone else still skips the dependency.
    assert state_value(guarded.name) == 1
    with pytest.raises(BreakerOpen):
        guarded.call(lambda: "second caller")
    release_probe.set()
    prober.join(5)
    assert results == ["ok"]
    assert guarded.state == "closed"
    assert guarded.snapshot() == {"state": "closed", "consecutive_failures": 0}
    assert state_value(guarded.name) == 0


def test_a_failed_probe_doubles_the_cool_down_up_to_the_cap_and_success_resets_it():
    guarded = breaker(failures=1, reset_seconds=0.1, max_reset_seconds=0.3)
    opened_before = metrics.BREAKER_OPENED.labels(guarded.name)._value.get()
    with pytest.raises(Flaky):
        guarded.call(fail)
    cool_downs = [guarded.reset_seconds]
    for _ in range(3):
        wait_for(lambda: guarded.state == "half_open", timeout=2, what="the cool-down to pass")
        with pytest.raises(Flaky):
            guarded.call(fail)
        cool_downs.append(guarded.reset_seconds)
    # 0.1 -> 0.2 -> 0.3 (the cap) -> 0.3, each with up to a quarter taken off as jitter.
    for cool_down, nominal in zip(cool_downs, (0.1, 0.2, 0.3, 0.3), strict=True):
        assert nominal * 0.75 <= cool_down <= nominal, cool_downs
    assert metrics.BREAKER_OPENED.labels(guarded.name)._value.get() - opened_before == 4
    snapshot = guarded.snapshot()
    assert snapshot["state"] == "open" and 0 < snapshot["probe_in_seconds"] <= 0.3
    wait_for(lambda: guarded.state == "half_open", timeout=2, what="the cool-down to pass")
    guarded.call(lambda: None)
    assert guarded.state == "closed"
    with pytest.raises(Flaky):
        guarded.call(fail)
    assert 0.075 <= guarded.reset_seconds <= 0.1


@pytest.mark.parametrize(
    "options",
    [{"failures": 0}, {"reset_seconds": 0}, {"reset_seconds": 2, "max_reset_seconds": 1}],
)
def test_nonsense_settings_are_refused(options):
    with pytest.raises(ValueError, match="failures >= 1"):
        breaker(**options)


@pytest.fixture
def silent_port():
    """A TCP port that accepts connections and never answers: a dependency dropping packets
    after the handshake, as far as a client's timeouts are concerned."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    yield server.getsockname()[1]
    server.close()


def counter(metrics_text: str, name: str, **labels) -> float:
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    match = re.search(rf"^{name}\{{{selector}\}} (\S+)$", metrics_text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# Open after two failures and stay open for the rest of the test.
OPENS_AFTER_TWO_FAILURES = {
    "FLASKFLEET_BREAKER_FAILURES": "2",
    "FLASKFLEET_BREAKER_RESET_SECONDS": "60",
    "FLASKFLEET_BREAKER_MAX_RESET_SECONDS": "60",
}


def test_silent_redis_is_skipped_after_the_set_failures(make_app, product, silent_port):
    created = product(sku="SILENT-REDIS")
    app = make_app(
        FLASKFLEET_REDIS_URL=f"redis://127.0.0.1:{silent_port}/0",
        **OPENS_AFTER_TWO_FAILURES,
    )
    client = app.test_client()
    before = client.get("/metrics").data.decode()
    for _ in range(4):
        response = client.get(f"/api/v1/products/{created['id']}")
        assert response.status_code == 200
        assert response.json["sku"] == "SILENT-REDIS"
        assert response.headers["X-Cache"] == "MISS"
    after = client.get("/metrics").data.decode()
    name = "flaskfleet_cache_requests_total"
    # The first request's look-up and store time out (two failures: open); the next three
    # requests skip Redis for both.
    assert counter(after, name, result="error") - counter(before, name, result="error") == 2
    assert counter(after, name, result="skipped") - counter(before, name, result="skipped") == 6
    assert counter(after, "flaskfleet_breaker_state", breaker="redis") == 2
    assert counter(after, "flaskfleet_breaker_opened_total", breaker="redis") >= 1
    ready = client.get("/readyz").json
    assert ready["status"] == "degraded"
    assert ready["checks"]["redis"]["status"] == "down"
    assert ready["checks"]["redis"]["error"] == "TimeoutError"
    assert ready["checks"]["redis"]["breaker"]["state"] == "open"
    assert 0 < ready["checks"]["redis"]["breaker"]["probe_in_seconds"] <= 60


def test_silent_replica_is_skipped_after_the_set_failures(make_app, product, silent_port):
    created = product(sku="SILENT-REPLICA")
    app = make_app(
        FLASKFLEET_DATABASE_REPLICA_URL=f"postgresql://flaskfleet@127.0.0.1:{silent_port}/x",
        # No cache: every read below goes to a database.
        FLASKFLEET_REDIS_URL="",
        FLASKFLEET_DB_CONNECT_TIMEOUT="2",
        **OPENS_AFTER_TWO_FAILURES,
    )
    client = app.test_client()
    before = client.get("/metrics").data.decode()
    for _ in range(4):
        response = client.get("/api/v2/products")
        assert response.status_code == 200
        assert response.headers["X-Read-Source"] == "primary"
        assert [item["sku"] for item in response.json["items"]] == ["SILENT-REPLICA"]
    after = client.get("/metrics").data.decode()
    name = "flaskfleet_db_reads_to_primary_total"
    down = counter(after, name, reason="replica_down") - counter(
        before, name, reason="replica_down"
    )
    skipped = counter(after, name, reason="replica_skipped") - counter(
        before, name, reason="replica_skipped"
    )
    assert (down, skipped) == (2, 2)
    ready = client.get("/readyz").json
    assert ready["checks"]["replica"]["status"] == "down"
    assert ready["checks"]["replica"]["breaker"]["state"] == "open"
    assert client.get(f"/api/v1/products/{created['id']}").headers["X-Read-Source"] == "primary"


def test_pooled_connections_carry_the_statement_timeout_and_keepalives(make_app):
    app = make_app(FLASKFLEET_DB_STATEMENT_TIMEOUT="2.5")
    for pool in (app.extensions["flaskfleet"].db.primary, app.extensions["flaskfleet"].db.replica):
        with pool.connection() as conn:
            with conn.cursor() as cur:
                cur.execute("SHOW statement_timeout")
                assert cur.fetchone()[0] == "2500ms"
            parameters = conn.get_dsn_parameters()
            assert parameters["keepalives"] == "1"
            assert parameters["keepalives_idle"] == "10"
            assert parameters["tcp_user_timeout"] == "3000"


def test_a_runaway_query_is_cancelled_by_the_server(make_app):
    app = make_app(FLASKFLEET_DB_STATEMENT_TIMEOUT="0.2")
    pool = app.extensions["flaskfleet"].db.primary
    with (
        pool.connection() as conn,
        conn.cursor() as cur,
        pytest.raises(psycopg2.errors.QueryCanceled, match="statement timeout"),
    ):
        cur.execute("SELECT pg_sleep(5)")


def test_a_missing_product_is_cached_for_the_missing_timeout(
    make_app, redis_server, cluster, product
):
    app = make_app(FLASKFLEET_CACHE_MISSING_TIMEOUT="7")
    client = app.test_client()
    existing = product(sku="BEFORE")
    missing_id = existing["id"] + 1
    assert client.get(f"/api/v1/products/{missing_id}").status_code == 404
    admin = redis_server.admin()
    assert admin.get(product_key(missing_id)) == b"null"
    assert 0 < admin.ttl(product_key(missing_id)) <= 7
    # The second look-up is answered from the cache: the database is not asked.
    cluster.primary.query(
        "INSERT INTO products (id, sku, name, price_cents, stock) OVERRIDING SYSTEM VALUE"
        " VALUES (%s, 'BEHIND-CACHE', 'Inserted behind the app', 1, 1)",
        (missing_id,),
    )
    cluster.wait_replica_caught_up()
    response = client.get(f"/api/v1/products/{missing_id}")
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"
    # A write through the API deletes the negative entry like any other: the next read finds it.
    replacement = {
        "sku": "BEHIND-CACHE",
        "name": "Written by the API",
        "price_cents": 1,
        "stock": 1,
    }
    assert (
        client.put(f"/api/v1/products/{missing_id}", json=replacement, headers=AUTH).status_code
        == 200
    )
    assert admin.get(product_key(missing_id)) is None
    assert client.get(f"/api/v1/products/{missing_id}").json["name"] == "Written by the API"
