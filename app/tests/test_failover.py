"""Following the leader: the primary URL lists every database server with
target_session_attrs=read-write, as the app role writes it, and a failover moves the leader.

Two standalone servers stand in for the database hosts. A server "leads" while it takes writes;
it stops leading when default_transaction_read_only is switched on and reloaded, which, like a
former leader back as a standby, leaves the sessions it has open but refuses their writes
(SQLSTATE 25006) and makes libpq pass it over for read-write connections.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack
from types import SimpleNamespace

import psycopg2
import psycopg2.errors
import pytest
from conftest import (
    AUTH,
    OWNER_ROLE,
    RUNTIME_ROLE,
    PostgresServer,
    new_postgres_server,
    pg_bin,
    postgres_servers,
    prepare_app_database,
    start_streaming_replica,
    wait_for,
)
from flaskfleet import jobs, metrics, migrations
from flaskfleet.db import ConnectionPool, Database, DatabaseUnavailable, write_retry_reason


class Servers:
    """Two servers, the first leading; lead() moves the leader."""

    def __init__(self, first: PostgresServer, second: PostgresServer) -> None:
        self.servers = (first, second)

    def url(self, user: str = "postgres") -> str:
        hosts = ",".join(f"127.0.0.1:{server.port}" for server in self.servers)
        return f"postgresql://{user}@{hosts}/flaskfleet?target_session_attrs=read-write"

    def lead(self, leader: PostgresServer | None) -> None:
        """Make `leader` the only server taking writes; None: none does (mid-switchover)."""
        for server in self.servers:
            setting = "RESET default_transaction_read_only"
            if server is not leader:
                setting = "SET default_transaction_read_only = on"
            server.query(f"ALTER SYSTEM {setting}")
            server.query("SELECT pg_reload_conf()")
            expected = "off" if server is leader else "on"
            wait_for(
                lambda server=server, expected=expected: (
                    server.query("SHOW default_transaction_read_only")[0][0] == expected
                ),
                what=f"the server on port {server.port} to reload",
            )


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with postgres_servers("flaskfleet-failover-") as (base, run_as, started):
        for name in ("first", "second"):
            server = new_postgres_server(pg_bin(), base, name, run_as)
            server.start()
            started.append(server)
            prepare_app_database(server)
            migrations.upgrade(server.url(user=OWNER_ROLE))
        yield Servers(*started)


@pytest.fixture
def first_leads(servers: Servers) -> Servers:
    for server in servers.servers:
        # Past a read-only default, whichever server led last.
        conn = psycopg2.connect(server.url(), options="-c default_transaction_read_only=off")
        try:
            with conn, conn.cursor() as cur:
                cur.execute("TRUNCATE products RESTART IDENTITY CASCADE")
        finally:
            conn.close()
    servers.lead(servers.servers[0])
    return servers


def server_port(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT inet_server_port()")
        return cur.fetchone()[0]


def insert_product(sku: str):
    def statement(conn) -> int:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO products (sku, name, price_cents, stock) VALUES (%s, %s, 1, 1)",
                (sku, sku),
            )
        return server_port(conn)

    return statement


def retries(reason: str) -> float:
    return metrics.DB_WRITE_RETRIES.labels(reason)._value.get()


def primary_pool(servers: Servers, maxconn: int = 3) -> ConnectionPool:
    return ConnectionPool(
        "primary", servers.url(), minconn=1, maxconn=maxconn, timeout=5, connect_timeout=3,
        statement_timeout=10,
    )  # fmt: skip


def backend_pid(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


def terminate(server: PostgresServer, pid: int) -> None:
    """End a session as a leader shutting down does ("terminating connection due to
    administrator command", SQLSTATE 57P01), and wait until it is gone."""
    assert server.query("SELECT pg_terminate_backend(%s, 5000)", (pid,)) == [(True,)]


def terminate_backend(server: PostgresServer, conn) -> None:
    terminate(server, backend_pid(conn))


class Calls:
    """Wraps a write's statement, counting its runs; `before` runs first in each."""

    def __init__(self, statement, before=None) -> None:
        self.statement = statement
        self.before = before
        self.count = 0

    def __call__(self, conn):
        self.count += 1
        if self.before is not None:
            self.before(self.count, conn)
        return self.statement(conn)


def test_a_write_on_a_server_that_stopped_leading_runs_again_on_the_new_leader(first_leads, caplog):
    first, second = first_leads.servers
    pool = primary_pool(first_leads)
    database = Database(pool, None)
    retried_before = retries("read_only")
    try:
        # Three idle connections, all to the leader of the moment.
        with ExitStack() as stack:
            conns = [stack.enter_context(pool.connection()) for _ in range(3)]
            assert {server_port(conn) for conn in conns} == {first.port}

        first_leads.lead(second)

        # The pooled connection's server (the old leader) still answers, and refuses the
        # write; the transaction runs again on a new connection, to the new leader.
        statement = Calls(insert_product("DURING-SWITCHOVER"))
        with caplog.at_level(logging.WARNING, logger="flaskfleet.db"):
            assert database.write(statement)[0] == second.port
        assert statement.count == 2
        assert retries("read_only") - retried_before == 1
        assert [
            record.reason
            for record in caplog.records
            if record.message.startswith("database write failed before its commit")
        ] == ["read_only"]
        # No connection to the old leader is kept: the next writes go to the new one at once.
        assert database.write(insert_product("AND-AGAIN"))[0] == second.port
        assert all(conn.info.port == second.port for conn in pool._get_pool()._pool)
        assert retries("read_only") - retried_before == 1
        assert second.query("SELECT sku FROM products ORDER BY id") == [
            ("DURING-SWITCHOVER",),
            ("AND-AGAIN",),
        ]
        assert first.query("SELECT count(*) FROM products") == [(0,)]
    finally:
        pool.close()


def test_a_fresh_connection_passes_over_idle_ones(first_leads):
    """A retry connects anew: an idle connection another request put back after the failure
    may still point at the old leader."""
    first, second = first_leads.servers
    pool = primary_pool(first_leads, maxconn=2)
    try:
        with pool.connection() as conn:
            assert server_port(conn) == first.port
        first_leads.lead(second)
        with pool.connection(fresh=True) as conn:
            assert server_port(conn) == second.port
        # The idle one is left for its next write to judge.
        assert sorted(conn.info.port for conn in pool._get_pool()._pool) == sorted(
            [first.port, second.port]
        )
    finally:
        pool.close()


def test_a_write_refused_while_no_server_leads_is_unavailable(first_leads):
    """Mid-switchover, before the new leader takes writes: the retry finds no server to
    connect to, and the request fails as unavailable (its client retries later)."""
    first, second = first_leads.servers
    pool = primary_pool(first_leads)
    database = Database(pool, None)
    retried_before = retries("read_only")
    try:
        assert database.write(insert_product("BEFORE"))[0] == first.port
        first_leads.lead(None)
        statement = Calls(insert_product("NOBODY-LEADS"))
        with pytest.raises(DatabaseUnavailable) as refused:
            database.write(statement)
        assert isinstance(refused.value.__cause__, psycopg2.OperationalError)
        assert statement.count == 1
        assert retries("read_only") - retried_before == 1

        first_leads.lead(second)
        assert database.write(insert_product("AFTER"))[0] == second.port
        assert first.query("SELECT sku FROM products") == [("BEFORE",)]
        assert second.query("SELECT sku FROM products") == [("AFTER",)]
    finally:
        pool.close()


def test_a_write_whose_connection_was_terminated_runs_again(first_leads):
    first, _ = first_leads.servers
    pool = primary_pool(first_leads, maxconn=2)
    database = Database(pool, None)
    retried_before = retries("connection_lost")

    def terminated_the_first_time(count: int, conn) -> None:
        if count == 1:
            terminate_backend(first, conn)

    try:
        statement = Calls(insert_product("ONCE"), before=terminated_the_first_time)
        assert database.write(statement)[0] == first.port
        assert statement.count == 2
        assert retries("connection_lost") - retried_before == 1
        assert first.query("SELECT sku FROM products") == [("ONCE",)]
    finally:
        pool.close()


def restart(server: PostgresServer) -> None:
    """Stop the server as a failover stops a leader (every session gets 57P01 and ends) and
    start it again on the same port."""
    server.stop("fast")
    server.start()


def test_a_read_on_a_connection_whose_server_restarted_runs_again(first_leads, caplog):
    first, _ = first_leads.servers
    pool = primary_pool(first_leads)
    database = Database(pool, None)
    try:
        with ExitStack() as stack:
            old = {backend_pid(stack.enter_context(pool.connection())) for _ in range(3)}
        restart(first)
        query = Calls(backend_pid)
        with caplog.at_level(logging.WARNING, logger="flaskfleet.db"):
            pid, source = database.read(query)
        assert source == "primary"
        assert pid not in old
        assert query.count == 2
        assert [record.message for record in caplog.records] == [
            "database read lost its connection, running it again on a new connection"
        ]
        # The other dead connections were closed with the first: the next reads run once.
        query = Calls(backend_pid)
        for _ in range(3):
            assert database.read(query)[0] not in old
        assert query.count == 3
    finally:
        pool.close()


def test_a_write_on_a_connection_whose_server_restarted_runs_again(first_leads):
    """The pooled connection is dead before the transaction's first statement (its BEGIN
    fails): nothing was sent, so the transaction runs on a new connection."""
    first, _ = first_leads.servers
    pool = primary_pool(first_leads)
    database = Database(pool, None)
    retried_before = retries("connection_lost")
    try:
        with ExitStack() as stack:
            old = {backend_pid(stack.enter_context(pool.connection())) for _ in range(3)}
        restart(first)
        statement = Calls(insert_product("AFTER-RESTART"))
        assert database.write(statement)[0] == first.port
        assert statement.count == 2
        assert retries("connection_lost") - retried_before == 1
        statement = Calls(insert_product("AND-AGAIN"))
        assert database.write(statement)[0] == first.port
        assert statement.count == 1
        assert not old & {conn.info.backend_pid for conn in pool._get_pool()._pool}
        assert first.query("SELECT sku FROM products ORDER BY id") == [
            ("AFTER-RESTART",),
            ("AND-AGAIN",),
        ]
    finally:
        pool.close()


def test_a_write_that_fails_again_on_its_retry_is_unavailable(first_leads):
    first, _ = first_leads.servers
    pool = primary_pool(first_leads, maxconn=2)
    database = Database(pool, None)
    retried_before = retries("connection_lost")
    try:
        statement = Calls(
            insert_product("LOST"), before=lambda _, conn: terminate_backend(first, conn)
        )
        with pytest.raises(DatabaseUnavailable) as lost:
            database.write(statement)
        assert isinstance(lost.value.__cause__, psycopg2.OperationalError)
        assert statement.count == 2
        assert retries("connection_lost") - retried_before == 1
        assert database.write(insert_product("NEXT"))[0] == first.port
        assert first.query("SELECT sku FROM products") == [("NEXT",)]
    finally:
        pool.close()


def test_a_write_whose_connection_is_lost_during_its_commit_is_not_run_again(first_leads):
    """The session ends after the last statement, so the COMMIT goes out on a dead
    connection: the client cannot tell a commit lost on its way from an answer lost on its
    way back, and must not run the transaction a second time."""
    first, _ = first_leads.servers
    pool = primary_pool(first_leads, maxconn=2)
    database = Database(pool, None)
    retried_before = {reason: retries(reason) for reason in ("read_only", "connection_lost")}

    def insert_then_lose_the_session(conn) -> int:
        port = insert_product("IN-DOUBT")(conn)
        terminate_backend(first, conn)
        return port

    try:
        statement = Calls(insert_then_lose_the_session)
        with pytest.raises(DatabaseUnavailable) as lost:
            database.write(statement)
        assert isinstance(lost.value.__cause__, psycopg2.OperationalError)
        assert statement.count == 1
        assert {reason: retries(reason) for reason in retried_before} == retried_before
        assert first.query("SELECT count(*) FROM products") == [(0,)]
    finally:
        pool.close()


def test_the_relay_is_not_run_again(first_leads):
    """The relay publishes inside its transaction: run again, it would publish twice."""
    first, _ = first_leads.servers
    first.query("TRUNCATE outbox")
    first.query(
        "INSERT INTO outbox (task, args, created_at)"
        " VALUES ('flaskfleet.noop', '[]', now() - interval '1 minute')"
    )
    pool = primary_pool(first_leads, maxconn=1)
    database = Database(pool, None)
    with pool.connection() as conn:
        relay_pid = backend_pid(conn)
    published = []

    class Broker:
        def send_task(self, task: str, **_) -> None:
            published.append(task)
            # The leader goes away between publishing and marking the row sent.
            terminate(first, relay_pid)

    try:
        with pytest.raises(DatabaseUnavailable):
            jobs.relay(SimpleNamespace(db=database, celery=Broker()))
        assert published == ["flaskfleet.noop"]
        assert first.query("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == [(1,)]
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("error", "connection_closed", "commit_sent", "reason"),
    [
        (psycopg2.errors.ReadOnlySqlTransaction(), False, False, "read_only"),
        (psycopg2.errors.AdminShutdown(), True, False, "connection_lost"),
        (psycopg2.OperationalError("server closed the connection unexpectedly"), True, False,
         "connection_lost"),
        (psycopg2.InterfaceError("connection already closed"), True, False, "connection_lost"),
        # During the COMMIT: committed or not, nobody knows.
        (psycopg2.errors.ReadOnlySqlTransaction(), False, True, None),
        (psycopg2.errors.AdminShutdown(), True, True, None),
        (psycopg2.OperationalError("server closed the connection unexpectedly"), True, True,
         None),
        # The statement's own errors, on a connection still open.
        (psycopg2.errors.QueryCanceled(), False, False, None),
        (psycopg2.errors.DeadlockDetected(), False, False, None),
        (psycopg2.errors.UniqueViolation(), False, False, None),
        (ValueError("not a database error"), False, False, None),
    ],
)  # fmt: skip
def test_which_write_failures_are_run_again(error, connection_closed, commit_sent, reason):
    assert (
        write_retry_reason(error, connection_closed=connection_closed, commit_sent=commit_sent)
        == reason
    )


@pytest.fixture
def app_env(app_env, first_leads: Servers) -> dict[str, str]:
    """The app's settings with its primary URL naming both servers (no replica)."""
    env = {**app_env, "FLASKFLEET_DATABASE_URL": first_leads.url(user=RUNTIME_ROLE)}
    del env["FLASKFLEET_DATABASE_REPLICA_URL"]
    return env


def test_the_api_writes_through_a_switchover_to_the_new_leader(first_leads, client):
    first, second = first_leads.servers

    def create(sku: str):
        body = {"sku": sku, "name": sku, "price_cents": 100, "stock": 5}
        return client.post("/api/v1/products", json=body, headers=AUTH)

    assert create("BEFORE").status_code == 201
    first_leads.lead(second)
    during = create("DURING")
    assert during.status_code == 201, during.json
    assert create("AFTER").status_code == 201
    assert first.query("SELECT sku FROM products") == [("BEFORE",)]
    assert second.query("SELECT sku FROM products ORDER BY id") == [("DURING",), ("AFTER",)]


def test_the_api_answers_503_while_no_server_leads(first_leads, client):
    first, second = first_leads.servers
    body = {"sku": "NOBODY-LEADS", "name": "x", "price_cents": 100, "stock": 5}
    assert client.get("/api/v1/products", headers=AUTH).status_code == 200
    first_leads.lead(None)
    refused = client.post("/api/v1/products", json=body, headers=AUTH)
    assert refused.status_code == 503, refused.json
    assert refused.json["error"]["code"] == "database_unavailable"
    assert int(refused.headers["Retry-After"]) > 0
    first_leads.lead(second)
    assert client.post("/api/v1/products", json=body, headers=AUTH).status_code == 201
    assert first.query("SELECT count(*) FROM products") == [(0,)]


def test_a_read_pool_drops_its_standby_once_it_is_promoted(caplog):
    """The replica's URL asks for a standby (target_session_attrs=standby), as the app role
    writes it. Reads get a connection to the standby; once that server is promoted (a
    switchover or failover) its open connections would go on reading from a leader. The
    server reports in_hot_standby off with its next answer on each connection; the pool
    drops the connection that brought it, and its idle siblings, and asks libpq for a standby
    again: with none left, the read pool is unavailable (the app's replica breaker then reads
    from the primary pool)."""
    with postgres_servers("flaskfleet-standby-") as (base, run_as, started):
        primary = new_postgres_server(
            pg_bin(), base, "primary", run_as, wal_level="replica", hot_standby="on"
        )
        primary.start()
        started.append(primary)
        prepare_app_database(primary)
        standby = start_streaming_replica(primary, base, run_as, started)
        hosts = f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
        pool = ConnectionPool(
            "replica", f"postgresql://postgres@{hosts}/flaskfleet?target_session_attrs=standby",
            minconn=1, maxconn=2, timeout=5, connect_timeout=3, statement_timeout=10,
        )  # fmt: skip

        def in_recovery(conn) -> bool:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_is_in_recovery()")
                return cur.fetchone()[0]

        try:
            with pool.connection() as one, pool.connection() as other:
                assert {server_port(one), server_port(other)} == {standby.port}
            pooled = list(pool._get_pool()._pool)
            with (
                caplog.at_level(logging.WARNING, logger="flaskfleet.db"),
                pool.connection() as conn,
            ):
                assert conn.get_parameter_status("in_hot_standby") == "on"
                standby.run("pg_ctl", "-D", str(standby.data_dir), "-w", "promote")
                # Nothing is pushed to an idle session: the news comes with the next answer,
                # from the server already promoted.
                assert conn.get_parameter_status("in_hot_standby") == "on"
                conn.autocommit = True
                assert in_recovery(conn) is False
                assert conn.get_parameter_status("in_hot_standby") == "off"
            # Dropped at checkin, with the idle one.
            assert conn in pooled
            assert all(pooled_conn.closed for pooled_conn in pooled)
            assert not pool._get_pool()._pool
            assert [record.message for record in caplog.records] == [
                "database server left recovery, reconnecting to a standby"
            ]
            with pytest.raises(DatabaseUnavailable, match=r"^replica: "):
                pool.read(in_recovery)
        finally:
            pool.close()
