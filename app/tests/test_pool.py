"""The connection pool against the real primary: connections are reused, not reopened."""

from contextlib import ExitStack

from flaskfleet.db import ConnectionPool, Database


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


def test_a_checked_out_connection_is_idle_and_in_a_transaction_only_when_used(cluster):
    pool = primary_pool(cluster, maxconn=2)
    try:
        with pool.connection() as conn:
            # The pre-ping left no transaction open and restored transactional mode.
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


def test_one_stale_connection_replaces_every_idle_one_with_one_new_connection(cluster):
    pool = primary_pool(cluster, maxconn=4)
    try:
        old = backend_pids(pool, 3)
        # As after a server restart: every pooled connection is dead.
        cluster.primary.query(
            "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (list(old),)
        )
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            (fresh,) = cur.fetchone()
        assert fresh not in old
        # The dead ones were closed, not kept for the next checkouts to trip over one by one.
        assert pool._get_pool()._pool and all(not c.closed for c in pool._get_pool()._pool)
        assert not old & backend_pids(pool, 3)
    finally:
        pool.close()
