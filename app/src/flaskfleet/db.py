"""PostgreSQL access: one pool per process for the primary and one for the replica.

The primary is whichever server leads: its URL may list every database host with
target_session_attrs=read-write, so libpq connects to the one that accepts writes (and the
replica's, with standby, to a server in recovery). After a failover the pooled connections still
point at the old leader. No statement checks a connection before it is handed out (that
would cost a round trip per request): one whose server is gone fails its first statement
(ConnectionLost), and one that finds its server taking no writes any more (a former leader
back as a standby) fails its first write, SQLSTATE 25006. Either way it is closed with every
idle one, which point at the same server, so the next checkout connects afresh, through the
URL's host list, to the server that leads now. A read that lost its connection runs once more
on a new one: it is safe to repeat. A write transaction that failed either way before its
COMMIT was sent runs once more on a new connection too, so a switchover goes unnoticed by
clients; one that failed during its COMMIT (committed or not, nobody knows) or failed again
fails as unavailable.

The replica pool's connections are made to a standby, which a switchover or failover may
promote under them. PostgreSQL (14 and later) reports in_hot_standby to its clients, and a
promoted server reports it off with the next answer on each connection, so no query needs to
ask: a connection back from a block with in_hot_standby off is closed with its idle siblings,
and libpq finds a standby again (or none: reads then go to the primary pool). The one request
whose answer brought the news was served by the promoted server, which is as good for a read.

Reads go to the replica unless the client carries the WAL position of its own last write and
the replica has not replayed that far yet; then, or when the replica is unreachable, they go
to the primary. Writes always go to the primary and return the WAL position after commit.
A circuit breaker stands before the replica: once it has failed a few times in a row, reads
go straight to the primary instead of each waiting for the connect timeout.

Every connection carries a statement timeout (a runaway query is cancelled by the server,
not left holding a pool slot) and TCP keepalives with a user timeout, so a server that stops
answering (packets dropped, not refused) breaks the connection in seconds instead of the
kernel's default of many minutes.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.pool

from flaskfleet import metrics
from flaskfleet.breakers import Breaker, BreakerOpen

log = logging.getLogger(__name__)

T = TypeVar("T")

LSN_PATTERN = re.compile(r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$")

# Errors that mean "this server or connection is gone", as opposed to a bad query.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


# libpq's TCP settings: probe an idle connection after 10 s, every 5 s, give up after 3
# probes; drop a connection whose sent data has gone unacknowledged for 3 s (the server
# acknowledges a query at once, however long it then runs; 3 s covers 4 retransmissions).
TCP_OPTIONS = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 3_000,
}


class DatabaseUnavailable(Exception):
    """No usable connection to the database could be had in time."""

    # Set by Database.write: why the failed transaction may run again (write_retry_reason).
    retry_reason: str | None = None


class ConnectionLost(DatabaseUnavailable):
    """The server closed the connection, or the network lost it, while the block used it: a
    restart or a failover (a pooled connection is not checked before it is handed out)."""


class _KeepAlivePool(psycopg2.pool.ThreadedConnectionPool):
    """psycopg2's pool opens `minconn` connections up front and, on return, closes any
    connection beyond `minconn` idle ones: under concurrency every checkout past the first
    would open a new connection (py-spy showed connect() as a third of a worker's time with
    4 threads). This one opens `minconn` up front but keeps up to `maxconn` open."""

    def __init__(self, minconn: int, maxconn: int, *args, **kwargs) -> None:
        super().__init__(minconn, maxconn, *args, **kwargs)
        # psycopg2's _putconn keeps a returned connection while fewer than `minconn` are idle.
        self.minconn = maxconn

    def getconn_new(self):
        """Check out a connection made now, as getconn() would once no idle one is left."""
        with self._lock:
            if self.closed:
                raise psycopg2.pool.PoolError("connection pool is closed")
            return self._connect(self._getkey())

    def close_idle(self) -> None:
        """Close every idle connection; the next getconn() connects afresh."""
        with self._lock:
            for conn in self._pool:
                conn.close()
            self._pool.clear()


class ConnectionPool:
    """A thread-safe psycopg2 pool that waits for a free slot and hands out idle connections
    unchecked: a dead one fails its first statement (see the module docstring).

    The underlying pool is created lazily, and again after a fork, so importing the app in a
    master process never shares sockets with workers, and a database that is down at start-up
    does not stop the service from starting.
    """

    def __init__(
        self,
        name: str,
        dsn: str,
        *,
        minconn: int,
        maxconn: int,
        timeout: float,
        connect_timeout: int,
        statement_timeout: float,
    ) -> None:
        self.name = name
        self._dsn = dsn
        self._minconn = minconn
        self._maxconn = maxconn
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._statement_timeout_ms = max(1, round(statement_timeout * 1000))
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(maxconn)
        self._pool: _KeepAlivePool | None = None
        self._pid: int | None = None
        # A URL that asks libpq for a standby (the replica's) gets a connection to a server in
        # recovery, but a switchover or failover promotes that server under its open
        # connections: each checkin looks at what the server last reported (_checkin).
        self._standby_only = (
            psycopg2.extensions.parse_dsn(dsn).get("target_session_attrs") == "standby"
        )

    def _get_pool(self) -> _KeepAlivePool:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = _KeepAlivePool(
                    self._minconn,
                    self._maxconn,
                    self._dsn,
                    connect_timeout=self._connect_timeout,
                    application_name=f"flaskfleet-{self.name}",
                    options=f"-c statement_timeout={self._statement_timeout_ms}",
                    **TCP_OPTIONS,
                )
                self._pid = os.getpid()
                metrics.DB_POOL_SIZE.labels(self.name).set(self._maxconn)
            return self._pool

    @contextmanager
    def connection(self, *, fresh: bool = False) -> Iterator[psycopg2.extensions.connection]:
        """A connection for the block, transactional (psycopg2 sends BEGIN before its first
        statement); `fresh` makes a new one instead of reusing an idle one (which may point at
        the same server as the one that failed). A connection the server or the network closed
        under the block raises ConnectionLost."""
        if not self._slots.acquire(timeout=self._timeout):
            raise DatabaseUnavailable(f"{self.name}: pool exhausted for {self._timeout}s")
        try:
            try:
                pool = self._get_pool()
                conn = pool.getconn_new() if fresh else pool.getconn()
            except CONNECTION_ERRORS as exc:
                raise DatabaseUnavailable(f"{self.name}: {exc}".strip()) from exc
            # Reads put it in autocommit. Setting this sends nothing to the server.
            conn.autocommit = False
            metrics.DB_POOL_IN_USE.labels(self.name).inc()
            read_only = False
            try:
                yield conn
            except psycopg2.errors.ReadOnlySqlTransaction as exc:
                # The server refuses writes: it no longer leads (the app never asks for a
                # read-only transaction). Its other connections here would fail the same way.
                read_only = True
                log.warning(
                    "database server refuses writes, reconnecting", extra={"pool": self.name}
                )
                raise DatabaseUnavailable(f"{self.name}: {str(exc).strip()}") from exc
            except CONNECTION_ERRORS as exc:
                if not conn.closed:
                    raise
                # The server went away (a failover or a restart), before or under the
                # statement; _checkin closes the idle connections to it too.
                raise ConnectionLost(f"{self.name}: {str(exc).strip()}") from exc
            finally:
                metrics.DB_POOL_IN_USE.labels(self.name).dec()
                self._checkin(pool, conn, read_only=read_only)
        finally:
            self._slots.release()

    def _checkin(self, pool: _KeepAlivePool, conn, *, read_only: bool) -> None:
        """Return conn to the pool, or close it when it is broken. When its server is of no
        use any more (gone, refusing writes: `read_only`, or, for a standby-only pool,
        promoted), every idle connection is closed with it: they point at the same server,
        and the next checkout connects afresh, through the URL's host list, to one that fits."""
        unusable = read_only or bool(conn.closed)
        if not unusable:
            try:
                conn.rollback()
            except CONNECTION_ERRORS:
                unusable = True
            else:
                unusable = self._left_recovery(conn)
        pool.putconn(conn, close=unusable)
        if unusable:
            pool.close_idle()

    def _left_recovery(self, conn) -> bool:
        """Whether this standby-only pool's connection is to a server promoted since, as the
        server's latest answer on it (the ROLLBACK's, or in autocommit the block's last
        statement's) reported: no round trip of its own."""
        if not self._standby_only or conn.get_parameter_status("in_hot_standby") != "off":
            return False
        log.warning(
            "database server left recovery, reconnecting to a standby", extra={"pool": self.name}
        )
        return True

    def read(self, query: Callable[[psycopg2.extensions.connection], T]) -> T:
        """query(conn) in autocommit: no BEGIN and ROLLBACK round trips around it. When the
        connection turns out dead (ConnectionLost: its idle siblings are closed with it), the
        query runs once more on a new connection, a read being safe to repeat; a second
        failure is the caller's."""
        try:
            return self._read_once(query, fresh=False)
        except ConnectionLost as exc:
            log.warning(
                "database read lost its connection, running it again on a new connection",
                extra={"pool": self.name, "error": str(exc)},
            )
        return self._read_once(query, fresh=True)

    def _read_once(self, query: Callable[[psycopg2.extensions.connection], T], *, fresh: bool) -> T:
        with self.connection(fresh=fresh) as conn:
            conn.autocommit = True
            return query(conn)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.closeall()
            self._pool = None


class Database:
    """Routes reads and writes between the primary and the (optional) replica pools."""

    def __init__(
        self,
        primary: ConnectionPool,
        replica: ConnectionPool | None,
        replica_breaker: Breaker | None = None,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self.replica_breaker = replica_breaker

    def read(
        self, query: Callable[[psycopg2.extensions.connection], T], min_lsn: str | None = None
    ) -> tuple[T, str]:
        """Run a read-only query; returns its result and the name of the server that ran it."""
        if self.replica is not None:
            try:
                result = self._read_replica(self.replica, query, min_lsn)
            except BreakerOpen:
                metrics.DB_READ_ROUTED.labels("replica_skipped").inc()
            except (DatabaseUnavailable, *CONNECTION_ERRORS) as exc:
                metrics.DB_READ_ROUTED.labels("replica_down").inc()
                log.warning("replica unavailable, reading from primary", extra={"error": str(exc)})
            else:
                if result is not None:
                    return result[0], "replica"
                metrics.DB_READ_ROUTED.labels("replica_behind").inc()
        return self.primary.read(query), "primary"

    def _read_replica(self, replica: ConnectionPool, query, min_lsn: str | None) -> tuple | None:
        """(result,) from the replica, or None when it has not replayed min_lsn yet."""

        def replayed_query(conn) -> tuple | None:
            if min_lsn is None or _has_replayed(conn, min_lsn):
                return (query(conn),)
            return None

        # Around the retry: a connection found dead and replaced is no failure of the replica.
        guard = self.replica_breaker.guard() if self.replica_breaker else nullcontext()
        with guard:
            return replica.read(replayed_query)

    def write(
        self, statement: Callable[[psycopg2.extensions.connection], T], *, retry: bool = True
    ) -> tuple[T, str]:
        """Run a statement in one primary transaction; returns its result and the commit LSN.

        When the transaction fails before its COMMIT is sent because its server refuses writes
        or its connection is gone (a switchover, failover or restart; a pooled connection may
        have been dead before the transaction began, as nothing checks it at checkout), the
        statement runs once more from the start, on a new connection that libpq makes to the
        server leading now: the failed transaction left nothing behind, so nothing is applied
        twice. `statement` must then do nothing outside its transaction; one that does
        (publishes, counts) passes retry=False, and fails on a dead pooled connection.
        """
        try:
            return self._write_once(statement, fresh=False)
        except DatabaseUnavailable as exc:
            if not retry or exc.retry_reason is None:
                raise
            metrics.DB_WRITE_RETRIES.labels(exc.retry_reason).inc()
            log.warning(
                "database write failed before its commit, running it again on a new connection",
                extra={"pool": self.primary.name, "reason": exc.retry_reason, "error": str(exc)},
            )
        return self._write_once(statement, fresh=True)

    def _write_once(
        self, statement: Callable[[psycopg2.extensions.connection], T], *, fresh: bool
    ) -> tuple[T, str]:
        commit_sent = False
        reason: str | None = None
        try:
            with self.primary.connection(fresh=fresh) as conn:
                try:
                    result = statement(conn)
                    commit_sent = True
                    conn.commit()
                except Exception as exc:
                    reason = write_retry_reason(
                        exc, connection_closed=bool(conn.closed), commit_sent=commit_sent
                    )
                    # A connection the server dropped has nothing to roll back.
                    if not conn.closed:
                        conn.rollback()
                    raise
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_current_wal_lsn()::text")
                    (lsn,) = cur.fetchone()
                return result, lsn
        except DatabaseUnavailable as exc:
            exc.retry_reason = reason
            raise

    def close(self) -> None:
        self.primary.close()
        if self.replica is not None:
            self.replica.close()


def write_retry_reason(
    error: BaseException, *, connection_closed: bool, commit_sent: bool
) -> str | None:
    """Why a write transaction that raised `error` may run again from the start on a new
    connection: "read_only" (its server no longer leads) or "connection_lost" (the server
    closed the connection, or the network lost it); None when it may not. Only a failure
    before COMMIT was sent qualifies, the transaction then being rolled back or lost with its
    session. During the COMMIT the outcome is unknown: the caller must see the error. Any
    other error (a constraint, a timeout, a deadlock) is the statement's own.
    """
    if commit_sent:
        return None
    if isinstance(error, psycopg2.errors.ReadOnlySqlTransaction):
        return "read_only"
    if isinstance(error, CONNECTION_ERRORS) and connection_closed:
        return "connection_lost"
    return None


def _has_replayed(conn, lsn: str) -> bool:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, false)",
            (lsn,),
        )
        (replayed,) = cur.fetchone()
    return bool(replayed)
