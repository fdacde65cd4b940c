"""Real servers for the tests: a PostgreSQL primary with a streaming replica, Redis for the
cache and limits, a second Redis for the task queue, and Celery worker and beat processes.

All run from the Debian binaries on 127.0.0.1, on free ports, in temporary directories, and are
stopped and removed at the end of the session. PostgreSQL refuses to run as root, so when the
tests run as root its commands run as the `postgres` user.

The app runs with the privileges it has in production: in PostgreSQL as a runtime role that
may only read and write rows (migrations run as the owner role), in Redis as the ACL user the
redis role creates, from the same rule string (group_vars/all/redis_acl.yml), with the
`default` user off. The queue Redis has the app's producer user and the workers' consumer
user, from the same file; the app (in the test process) publishes as the producer, the worker
and beat subprocesses run as the consumer. A statement or command the app or a worker needs
but is not granted fails here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
import redis
import yaml
from flaskfleet import create_app, migrations

REPOSITORY = Path(__file__).resolve().parents[2]
SRC = REPOSITORY / "app" / "src"
REDIS_ACL_VARS = REPOSITORY / "group_vars" / "all" / "redis_acl.yml"

# Database roles as the postgresql role creates them: the owner runs migrations, the app runs
# as the runtime role, which gets DML on the owner's tables through default privileges.
OWNER_ROLE = "flaskfleet_owner"
RUNTIME_ROLE = "flaskfleet_app"

# API clients: name -> (token, scopes). Only the tokens' SHA-256 reaches the app.
ALL_SCOPES = ["products:write", "orders:write", "orders:read", "reports:read"]
CLIENTS = {
    "admin": (secrets.token_urlsafe(32), ALL_SCOPES),
    "shop": (secrets.token_urlsafe(32), ["orders:write", "orders:read"]),
    "catalog": (secrets.token_urlsafe(32), ["products:write"]),
    "analyst": (secrets.token_urlsafe(32), ["reports:read"]),
}
API_CLIENTS = json.dumps(
    [
        {"name": name, "token_sha256": hashlib.sha256(token.encode()).hexdigest(), "scopes": scopes}
        for name, (token, scopes) in CLIENTS.items()
    ]
)


def bearer(client: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {CLIENTS[client][0]}"}


AUTH = bearer("admin")


def pg_bin() -> Path:
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name)
    )
    if not candidates:
        pytest.exit("PostgreSQL server binaries not found (install postgresql or set PG_BIN)")
    return candidates[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class PostgresServer:
    """One PostgreSQL instance (primary or replica) under pg_ctl."""

    def __init__(self, bin_dir: Path, data_dir: Path, port: int, run_as: str | None) -> None:
        self.bin_dir = bin_dir
        self.data_dir = data_dir
        self.port = port
        self.run_as = run_as

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / program), *args]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)

    def url(self, dbname: str = "flaskfleet", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        log = str(self.data_dir.parent / f"{self.data_dir.name}.log")
        self.run("pg_ctl", "-D", str(self.data_dir), "-l", log, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def connect(self, dbname: str = "flaskfleet", user: str = "postgres"):
        conn = psycopg2.connect(self.url(dbname, user), connect_timeout=5)
        conn.autocommit = True
        return conn

    def query(self, sql: str, params: tuple = (), dbname: str = "flaskfleet"):
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()


def postgres_base_dir(prefix: str, run_as: str | None) -> Path:
    """A temporary directory for servers' data directories and sockets, theirs to write."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    if run_as:
        user = pwd.getpwnam(run_as)
        os.chown(base, user.pw_uid, user.pw_gid)
    return base


@contextlib.contextmanager
def postgres_servers(prefix: str) -> Iterator[tuple[Path, str | None, list[PostgresServer]]]:
    """A base directory for test servers (base, run_as, started): the caller appends each server
    it starts to `started`; on the way out they are stopped, newest first, and the base removed."""
    run_as = "postgres" if os.geteuid() == 0 else None
    base = postgres_base_dir(prefix, run_as)
    started: list[PostgresServer] = []
    try:
        yield base, run_as, started
    finally:
        for server in reversed(started):
            with contextlib.suppress(subprocess.CalledProcessError):
                server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def prepare_app_database(server: PostgresServer) -> None:
    """The app's two roles and its database, as the postgresql role makes them."""
    for role in (OWNER_ROLE, RUNTIME_ROLE):
        server.query(f"CREATE ROLE {role} LOGIN", dbname="postgres")
    create_app_database(server, "flaskfleet")


def new_postgres_server(
    bin_dir: Path, base: Path, name: str, run_as: str | None, **settings: str
) -> PostgresServer:
    """An initialised, stopped server on 127.0.0.1 and a free port; `settings` are added to
    its postgresql.conf."""
    server = PostgresServer(bin_dir, base / name, free_port(), run_as)
    server.run(
        "initdb", "-D", str(server.data_dir), "-U", "postgres", "-A", "trust",
        "-E", "UTF8", "--locale=C", "--no-sync",
    )  # fmt: skip
    # Test-only durability settings: fsync off makes the cluster start and write quickly.
    settings = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(server.port),
        "unix_socket_directories": f"'{base}'",
        "fsync": "off",
        "full_page_writes": "off",
        **settings,
    }
    with open(server.data_dir / "postgresql.conf", "a") as conf:
        conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
    return server


def create_app_database(primary: PostgresServer, dbname: str) -> None:
    """A database owned by the owner role, whose future tables the runtime role may only read
    and write: CONNECT, USAGE on the schema, DML on tables and USAGE/SELECT on sequences,
    granted as default privileges for the owner (what the postgresql role does)."""
    primary.query(f'CREATE DATABASE "{dbname}" OWNER {OWNER_ROLE}', dbname="postgres")
    for statement in (
        f'REVOKE ALL ON DATABASE "{dbname}" FROM PUBLIC',
        f'GRANT CONNECT ON DATABASE "{dbname}" TO {RUNTIME_ROLE}',
        "REVOKE ALL ON SCHEMA public FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA public TO {RUNTIME_ROLE}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER_ROLE} IN SCHEMA public"
        f" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {RUNTIME_ROLE}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER_ROLE} IN SCHEMA public"
        f" GRANT USAGE, SELECT ON SEQUENCES TO {RUNTIME_ROLE}",
    ):
        primary.query(statement, dbname=dbname)


@dataclass
class Cluster:
    primary: PostgresServer
    replica: PostgresServer

    def wait_replica_caught_up(self, timeout: float = 20.0) -> None:
        ((target,),) = self.primary.query("SELECT pg_current_wal_lsn()::text")
        wait_for(
            lambda: self.replica.query(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, false)", (target,)
            )[0][0],
            timeout,
            "the replica to replay up to the primary",
        )

    def restart_replica(self) -> None:
        self.replica.start()
        wait_for(
            lambda: self.primary.query(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
            )[0][0],
            what="the replica to stream again",
        )
        self.wait_replica_caught_up()


def _acl_vars() -> dict:
    variables = yaml.safe_load(REDIS_ACL_VARS.read_text())
    for value in variables.values():
        assert "{{" not in value, f"{REDIS_ACL_VARS} must hold plain values, not templates"
    return variables


def _rules(name: str) -> str:
    return " ".join(_acl_vars()[name].split())


def app_redis_acl() -> tuple[str, str]:
    """(user, rules) the redis role gives the app, read from the inventory's group_vars."""
    return _acl_vars()["flaskfleet_redis_app_user"], _rules("flaskfleet_redis_app_acl_rules")


# The queue Redis's users in the tests (the rules are the inventory's).
QUEUE_PRODUCER = "flaskfleet"
QUEUE_CONSUMER = "flaskfleet_worker"


class RedisServer:
    """Redis with the given ACL users (name -> rules; the first is the app's), an admin user
    for the tests' own housekeeping, and the `default` user off. The users live in an ACL
    file, so they survive a restart."""

    def __init__(
        self, directory: Path, port: int, users: dict[str, str], *server_args: str
    ) -> None:
        self.directory = directory
        self.port = port
        self.server_args = server_args
        self.process: subprocess.Popen | None = None
        self.app_user = next(iter(users))
        self.passwords = {name: secrets.token_hex(16) for name in users}
        self.admin_password = secrets.token_hex(16)
        # As the redis role writes it: `default` off, yet allowed every command, which Redis
        # 7.0 needs to replay transactions from the append-only file (see users.acl.j2).
        (directory / "users.acl").write_text(
            "user default off ~* &* +@all\n"
            f"user admin on >{self.admin_password} ~* &* +@all\n"
            + "".join(
                f"user {name} on >{self.passwords[name]} {rules}\n" for name, rules in users.items()
            )
        )

    def url_for(self, user: str) -> str:
        return f"redis://{user}:{self.passwords[user]}@127.0.0.1:{self.port}/0"

    @property
    def url(self) -> str:
        """The app's URL: its ACL user."""
        return self.url_for(self.app_user)

    def admin(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            username="admin",
            password=self.admin_password,
            socket_connect_timeout=0.5,
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--aclfile",
                str(self.directory / "users.acl"),
                *self.server_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self._pings(self.admin()), what="redis to start")

    @staticmethod
    def _pings(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def start_streaming_replica(
    primary: PostgresServer, base: Path, run_as: str | None, started: list[PostgresServer]
) -> PostgresServer:
    """A standby cloned from `primary` (pg_basebackup), started and streaming from it."""
    replica = PostgresServer(primary.bin_dir, base / "replica", free_port(), run_as)
    primary.run(
        "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
        "-D", str(replica.data_dir), "-R", "-X", "stream", "-c", "fast",
    )  # fmt: skip
    with open(replica.data_dir / "postgresql.conf", "a") as conf:
        conf.write(f"port = {replica.port}\n")
    replica.start()
    started.append(replica)
    wait_for(
        lambda: primary.query("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")[
            0
        ][0],
        what="streaming replication",
    )
    return replica


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    bin_dir = pg_bin()
    with postgres_servers("flaskfleet-pg-") as (base, run_as, started):
        primary = new_postgres_server(
            bin_dir, base, "primary", run_as,
            wal_level="replica", max_wal_senders="5", hot_standby="on", max_connections="100",
        )  # fmt: skip
        primary.start()
        started.append(primary)
        prepare_app_database(primary)
        replica = start_streaming_replica(primary, base, run_as, started)
        result = Cluster(primary, replica)
        migrations.upgrade(primary.url(user=OWNER_ROLE))
        result.wait_replica_caught_up()
        yield result


@contextlib.contextmanager
def _redis(prefix: str, users: dict[str, str], *server_args: str) -> Iterator[RedisServer]:
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    server = RedisServer(directory, free_port(), users, *server_args)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    user, rules = app_redis_acl()
    with _redis("flaskfleet-redis-", {user: rules}, "--appendonly", "no") as server:
        yield server


@pytest.fixture(scope="session")
def queue_server() -> Iterator[RedisServer]:
    """The queue Redis, configured as a broker: never evict, append-only file synced each second."""
    users = {
        QUEUE_PRODUCER: _rules("flaskfleet_queue_producer_acl_rules"),
        QUEUE_CONSUMER: _rules("flaskfleet_queue_consumer_acl_rules"),
    }
    with _redis(
        "flaskfleet-queue-",
        users,
        "--maxmemory-policy", "noeviction", "--appendonly", "yes", "--appendfsync", "everysec",
    ) as server:  # fmt: skip
        yield server


@pytest.fixture
def app_env(cluster: Cluster, redis_server: RedisServer, queue_server) -> dict[str, str]:
    """Configuration for a fully wired app, as the environment would give it."""
    return {
        "FLASKFLEET_DATABASE_URL": cluster.primary.url(user=RUNTIME_ROLE),
        "FLASKFLEET_DATABASE_REPLICA_URL": cluster.replica.url(user=RUNTIME_ROLE),
        "FLASKFLEET_REDIS_URL": redis_server.url,
        "FLASKFLEET_BROKER_URL": queue_server.url_for(QUEUE_PRODUCER),
        "FLASKFLEET_SECRET_KEY": "test-secret-key-0123456789",
        "FLASKFLEET_API_CLIENTS": API_CLIENTS,
        "FLASKFLEET_DB_POOL_MIN": "1",
        "FLASKFLEET_DB_POOL_MAX": "8",
        "FLASKFLEET_CACHE_TIMEOUT": "60",
        "FLASKFLEET_RATELIMIT_PER_CLIENT": "1000 per second",
        "FLASKFLEET_READ_YOUR_WRITES_SECONDS": "30",
        "FLASKFLEET_RELEASE": "test-release",
    }


@pytest.fixture
def clean_state(cluster: Cluster, redis_server: RedisServer, queue_server) -> None:
    """Empty tables and Redis, and let the replica see the empty tables before the test."""
    cluster.primary.query(
        "TRUNCATE order_receipts, order_items, orders, idempotency_keys, products, outbox, jobs,"
        " dead_letters RESTART IDENTITY CASCADE"
    )
    redis_server.admin().flushdb()
    queue_server.admin().flushdb()
    cluster.wait_replica_caught_up()


@pytest.fixture
def make_app(app_env, clean_state):
    """Factory for apps with configuration overrides; their pools are closed afterwards."""
    apps = []

    def make(**overrides: str):
        app = create_app({**app_env, **overrides})
        app.testing = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["flaskfleet"].db.close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    """A client that keeps cookies, like a browser: it is the writer in these tests."""
    return app.test_client()


@pytest.fixture
def anonymous(app):
    """A second client without the writer's cookies."""
    return app.test_client()


@pytest.fixture
def product(client, cluster):
    """Create a product and return it, with the replica caught up."""

    def make(sku: str = "SKU-1", stock: int = 10, price_cents: int = 1250, **fields):
        body = {"sku": sku, "name": f"Product {sku}", "price_cents": price_cents, "stock": stock}
        response = client.post("/api/v1/products", json={**body, **fields}, headers=AUTH)
        assert response.status_code == 201, response.json
        cluster.wait_replica_caught_up()
        return response.json

    return make


class CeleryProcess:
    """`celery --app flaskfleet.worker <command>` as the Ansible role runs it, in a process
    group of its own (a worker's pool processes included), its JSON log lines in a file."""

    def __init__(self, env: dict[str, str], directory: Path, command: list[str]) -> None:
        self.env = env
        self.log_path = directory / f"{command[0]}-{secrets.token_hex(4)}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "--app", "flaskfleet.worker", "--quiet", *command],
            env=env,
            cwd=directory,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_lines(self) -> list[dict]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"message": line, "not_json": True})
        return lines

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM: finish the task in hand), then kill what is left."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(timeout=10)
        # Pool processes of a killed worker must not outlive it.
        self.signal(signal.SIGKILL)
        self._log.close()


def metrics_text(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def assert_granted(processes: list[CeleryProcess]) -> None:
    """No command a worker or beat sent was refused by the queue Redis's ACL."""
    for process in processes:
        refused = [
            line
            for line in process.log_path.read_text().splitlines()
            if "NOPERM" in line or "no permissions" in line
        ]
        assert not refused, "\n".join(refused)


@pytest.fixture
def worker_env(app_env, queue_server: RedisServer, tmp_path: Path) -> dict[str, str]:
    """The environment of the worker and beat processes: the app's settings, with the queue's
    consumer user and the worker's metrics port."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLASKFLEET_")}
    multiproc = tmp_path / "worker-metrics"
    multiproc.mkdir()
    return {
        **env,
        **app_env,
        "FLASKFLEET_BROKER_URL": queue_server.url_for(QUEUE_CONSUMER),
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")])),
    }


@pytest.fixture
def start_worker(worker_env, tmp_path: Path):
    """Start a worker (settings overridable) and wait until it serves its metrics, which it
    does once it consumes; every worker started is stopped after the test."""
    started: list[CeleryProcess] = []

    def start(concurrency: int = 2, **overrides: str) -> CeleryProcess:
        env = {**worker_env, "FLASKFLEET_WORKER_METRICS_PORT": str(free_port()), **overrides}
        worker = CeleryProcess(
            env,
            tmp_path,
            [
                "worker", "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--pool", "prefork", "--concurrency", str(concurrency),
                "--hostname", f"test-{len(started)}@%h",
            ],
        )  # fmt: skip
        started.append(worker)
        port = int(env["FLASKFLEET_WORKER_METRICS_PORT"])
        try:
            wait_for(lambda: metrics_text(port), 30, "the worker to serve its metrics")
        except TimeoutError:
            raise AssertionError(worker.log_path.read_text()) from None
        return worker

    yield start
    for worker in started:
        worker.stop()
    assert_granted(started)


@pytest.fixture
def start_beat(worker_env, tmp_path: Path):
    started: list[CeleryProcess] = []

    def start() -> CeleryProcess:
        beat = CeleryProcess(worker_env, tmp_path, ["beat"])
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.stop()
    assert_granted(started)
