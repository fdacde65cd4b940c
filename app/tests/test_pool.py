"""The connection pool against the real primary: connections are reused, not reopened, and
handed out without a round trip of their own."""

import logging
from contextlib import ExitStack

import pytest
from flaskfleet.db import ConnectionLost, ConnectionPool, Database


def primary_pool(cluster, maxconn: int) -> ConnectionPool:
    return ConnectionPool(
        "test", cluster.primary.url(), minconn=1, maxconn=maxconn, timeout=5, connect_timeout=3,
        statement_timeout=10,
    )  # fmt: skip


def backend_pids(pool: ConnectionPool, concurrent: int) -> set[int]:
    """Check out `concurrent` connections at once; return their server process ids."""
    with ExitStack() as stack:
        conns = [stack.enter_context(pool.connection()) for _ in range(concurrent)]
        pids = set()
        for conn in conns:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                pids.add(cur.fetchone()[0])
        return pids


def test_connections_beyond_the_minimum_stay_open_for_the_next_checkout(cluster):
    pool = primary_pool(cluster, maxconn=4)
    try:
        first = backend_pids(pool, 3)
        assert len(first) == 3
        # psycopg2's own pool would have closed two of them on return.
        assert backend_pids(pool, 3) == first
    finally:
        pool.close()


def last_statement(cluster, pid: int) -> tuple[str, str]:
    """(state, query) of a server process: the last statement its client sent, as the server
    saw it."""
    return cluster.primary.query(
        "SELECT state, query FROM pg_stat_activity WHERE pid = %s", (pid,)
    )[0]


def test_a_checkout_sends_nothing_and_a_read_one_statement(cluster):
    """No ping, no BEGIN, no SET at checkout or checkin: a one-statement read is one round
    trip, and a block's first statement is the first thing its connection sends."""
    pool = primary_pool(cluster, maxconn=1)

    def read_pid(conn) -> int:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid() /* the read */")
            return cur.fetchone()[0]

    try:
        pid = pool.read(read_pid)
        assert last_statement(cluster, pid) == ("idle", "SELECT pg_backend_pid() /* the read */")
        with pool.connection() as conn:
            # The same connection (libpq knows its server process without asking).
            assert conn.info.backend_pid == pid
            assert last_statement(cluster, pid) == (
                "idle",
                "SELECT pg_backend_pid() /* the read */",
            )
            with conn.cursor() as cur:
                cur.execute("SELECT 'the block' AS first_statement")
            # psycopg2 sent BEGIN before it: the transaction the block asked for.
            assert last_statement(cluster, pid) == (
                "idle in transaction",
                "SELECT 'the block' AS first_statement",
            )
        assert pool.read(read_pid) == pid
    finally:
        pool.close()


def test_a_checked_out_connection_is_idle_and_in_a_transaction_only_when_used(cluster):
    pool = primary_pool(cluster, maxconn=2)
    try:
        with pool.connection() as conn:
            # Transactional, and nothing was sent at checkout: no transaction is open yet.
            assert conn.autocommit is False
            assert conn.info.transaction_status == 0  # TRANSACTION_STATUS_IDLE
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            assert conn.info.transaction_status == 2  # TRANSACTION_STATUS_INTRANS
    finally:
        pool.close()


def test_reads_run_without_a_transaction_around_them(cluster):
    primary = primary_pool(cluster, maxconn=2)

    def query(conn):
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        return conn.autocommit, conn.info.transaction_status

    try:
        (autocommit, status), server = Database(primary, None).read(query)
        assert server == "primary"
        assert autocommit is True
        assert status == 0  # idle: no BEGIN was sent, so no ROLLBACK is owed
        # The next checkout is transactional again, for writes.
        with primary.connection() as conn:
            assert conn.autocommit is False
    finally:
        primary.close()


def terminate_all(cluster, pids: set[int]) -> None:
    """As a server restart does to every pooled connection."""
    cluster.primary.query(
        "SELECT pg_terminate_backend(pid, 5000) FROM unnest(%s::int[]) AS pid", (list(pids),)
    )


def pid_query(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


def test_one_dead_connection_closes_every_idle_one(cluster):
    pool = primary_pool(cluster, maxconn=4)
    try:
        old = backend_pids(pool, 3)
        terminate_all(cluster, old)
        with pytest.raises(ConnectionLost, match=r"^test: "), pool.connection() as conn:
            pid_query(conn)
        # Not kept for the next checkouts to trip over one by one.
        assert not pool._get_pool()._pool
        assert not old & backend_pids(pool, 3)
    finally:
        pool.close()


def test_a_read_on_a_dead_connection_runs_again_on_a_new_one(cluster, caplog):
    pool = primary_pool(cluster, maxconn=4)
    try:
        old = backend_pids(pool, 3)
        terminate_all(cluster, old)
        with caplog.at_level(logging.WARNING, logger="flaskfleet.db"):
            assert pool.read(pid_query) not in old
        assert [r.message for r in caplog.records] == [
            "database read lost its connection, running it again on a new connection"
        ]
        assert not old & backend_pids(pool, 3)
    finally:
        pool.close()


def test_a_read_that_fails_again_is_unavailable(cluster):
    """Once only: here the second connection is lost too."""
    pool = primary_pool(cluster, maxconn=2)
    runs = []

    def terminated(conn) -> None:
        runs.append(conn.info.backend_pid)
        terminate_all(cluster, {conn.info.backend_pid})
        pid_query(conn)

    try:
        with pytest.raises(ConnectionLost, match=r"^test: "):
            pool.read(terminated)
        assert len(set(runs)) == 2
        assert pool.read(pid_query) not in runs
    finally:
        pool.close()
