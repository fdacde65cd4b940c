"""Following the leader: the primary URL lists every database server with
target_session_attrs=read-write, as the app role writes it, and a failover moves the leader.

Two standalone servers stand in for the database hosts. A server "leads" while it takes writes;
it stops leading when default_transaction_read_only is switched on and reloaded, which, like a
former leader back as a standby, leaves the sessions it has open but refuses their writes
(SQLSTATE 25006) and makes libpq pass it over for read-write connections.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack

import psycopg2
import psycopg2.errors
import pytest
from conftest import (
    AUTH,
    OWNER_ROLE,
    RUNTIME_ROLE,
    PostgresServer,
    create_app_database,
    new_postgres_server,
    pg_bin,
    postgres_base_dir,
    wait_for,
)
from flaskfleet import migrations
from flaskfleet.db import ConnectionPool, Database, DatabaseUnavailable


class Servers:
    """Two servers, the first leading; lead() moves the leader."""

    def __init__(self, first: PostgresServer, second: PostgresServer) -> None:
        self.servers = (first, second)

    def url(self, user: str = "postgres") -> str:
        hosts = ",".join(f"127.0.0.1:{server.port}" for server in self.servers)
        return f"postgresql://{user}@{hosts}/flaskfleet?target_session_attrs=read-write"

    def lead(self, leader: PostgresServer) -> None:
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
    run_as = "postgres" if os.geteuid() == 0 else None
    base = postgres_base_dir("flaskfleet-failover-", run_as)
    started: list[PostgresServer] = []
    try:
        for name in ("first", "second"):
            server = new_postgres_server(pg_bin(), base, name, run_as)
            server.start()
            started.append(server)
            for role in (OWNER_ROLE, RUNTIME_ROLE):
                server.query(f"CREATE ROLE {role} LOGIN", dbname="postgres")
            create_app_database(server, "flaskfleet")
            migrations.upgrade(server.url(user=OWNER_ROLE))
        yield Servers(*started)
    finally:
        for server in reversed(started):
            with contextlib.suppress(subprocess.CalledProcessError):
                server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


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


def test_a_write_on_a_server_that_stopped_leading_reconnects_to_the_new_leader(first_leads):
    first, second = first_leads.servers
    pool = ConnectionPool(
        "primary", first_leads.url(), minconn=1, maxconn=3, timeout=5, connect_timeout=3,
        statement_timeout=10,
    )  # fmt: skip
    database = Database(pool, None)
    try:
        # Three idle connections, all to the leader of the moment.
        with ExitStack() as stack:
            conns = [stack.enter_context(pool.connection()) for _ in range(3)]
            assert {server_port(conn) for conn in conns} == {first.port}

        first_leads.lead(second)

        # The pooled connection passes its ping (the old leader still answers) and its write
        # is refused: the request fails as unavailable, the connection is not kept.
        with pytest.raises(DatabaseUnavailable) as refused:
            database.write(insert_product("REFUSED"))
        assert isinstance(refused.value.__cause__, psycopg2.errors.ReadOnlySqlTransaction)
        # Nor are the other two: the next write connects afresh, to the new leader.
        assert database.write(insert_product("AFTER-FAILOVER"))[0] == second.port
        assert database.write(insert_product("AND-AGAIN"))[0] == second.port
        assert all(conn.info.port == second.port for conn in pool._get_pool()._pool)
        assert second.query("SELECT sku FROM products ORDER BY id") == [
            ("AFTER-FAILOVER",),
            ("AND-AGAIN",),
        ]
        assert first.query("SELECT count(*) FROM products") == [(0,)]
    finally:
        pool.close()


def test_a_write_whose_server_went_away_is_unavailable_and_the_next_one_reconnects(first_leads):
    first, _ = first_leads.servers
    pool = ConnectionPool(
        "primary", first_leads.url(), minconn=1, maxconn=2, timeout=5, connect_timeout=3,
        statement_timeout=10,
    )  # fmt: skip
    database = Database(pool, None)

    def terminated_under_the_statement(conn):
        # As a leader shutting down does to its sessions: "terminating connection due to
        # administrator command".
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            (pid,) = cur.fetchone()
        first.query("SELECT pg_terminate_backend(%s)", (pid,))
        return insert_product("LOST")(conn)

    try:
        with pytest.raises(DatabaseUnavailable) as lost:
            database.write(terminated_under_the_statement)
        assert isinstance(lost.value.__cause__, psycopg2.OperationalError)
        assert database.write(insert_product("NEXT"))[0] == first.port
        assert first.query("SELECT sku FROM products") == [("NEXT",)]
    finally:
        pool.close()


@pytest.fixture
def app_env(app_env, first_leads: Servers) -> dict[str, str]:
    """The app's settings with its primary URL naming both servers (no replica)."""
    env = {**app_env, "FLASKFLEET_DATABASE_URL": first_leads.url(user=RUNTIME_ROLE)}
    del env["FLASKFLEET_DATABASE_REPLICA_URL"]
    return env


def test_the_api_answers_503_once_then_writes_to_the_new_leader(first_leads, client):
    first, second = first_leads.servers

    def create(sku: str):
        body = {"sku": sku, "name": sku, "price_cents": 100, "stock": 5}
        return client.post("/api/v1/products", json=body, headers=AUTH)

    assert create("BEFORE").status_code == 201
    first_leads.lead(second)
    refused = create("DURING")
    assert refused.status_code == 503, refused.json
    assert refused.json["error"]["code"] == "database_unavailable"
    assert int(refused.headers["Retry-After"]) > 0
    assert create("AFTER").status_code == 201
    assert first.query("SELECT sku FROM products") == [("BEFORE",)]
    assert second.query("SELECT sku FROM products") == [("AFTER",)]
