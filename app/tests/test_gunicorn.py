"""The real service under Gunicorn with the shipped gunicorn.conf.py: plain bind and systemd
socket activation, readiness notification, HUP reload, multiprocess metrics, JSON access log,
a master that imports nothing of the application, the worker class as configured, and the
gevent worker with psycopg2 waiting cooperatively."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from conftest import AUTH, free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families

APP_DIR = Path(__file__).resolve().parents[1]
CONF = APP_DIR / "gunicorn.conf.py"
START_TIMEOUT = 90


# A sender's span (nginx's, in the stack): version, trace id, parent span id, flags.
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def gunicorn_env(app_env: dict[str, str], **extra: str) -> dict[str, str]:
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FLASKFLEET_", "GUNICORN_", "LISTEN_", "PROMETHEUS_", "NOTIFY_"))
    }
    pythonpath = os.pathsep.join(filter(None, [str(APP_DIR / "src"), os.environ.get("PYTHONPATH")]))
    return {**inherited, **app_env, "PYTHONPATH": pythonpath, **extra}


@contextmanager
def running(
    command: list[str], env: dict[str, str], log: Path, **popen
) -> Iterator[subprocess.Popen]:
    with open(log, "w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=output, **popen)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def worker_pids(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


def get_ready(base: str, process: subprocess.Popen) -> requests.Response:
    def attempt():
        assert process.poll() is None, "gunicorn exited"
        try:
            response = requests.get(f"{base}/readyz", timeout=10)
        except (requests.ConnectionError, requests.Timeout):
            return None
        return response if response.status_code == 200 else None

    return wait_for(attempt, START_TIMEOUT, "gunicorn to answer /readyz")


def counter(base: str, name: str, **labels: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_gunicorn_bind_ready_notify_metrics_and_hup(app_env, clean_state, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(START_TIMEOUT)
    env = gunicorn_env(
        app_env,
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS="2",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        NOTIFY_SOCKET=str(notify_path),
    )
    log = tmp_path / "gunicorn.log"
    command = [sys.executable, "-m", "gunicorn", "-c", str(CONF)]
    with running(command, env, log, cwd=tmp_path) as process:
        # Type=notify: the arbiter itself tells systemd it is ready.
        assert notify.recv(4096).decode().startswith("READY=1")
        response = get_ready(base, process)
        body = response.json()
        assert body["status"] == "ready"
        assert {name: check["status"] for name, check in body["checks"].items()} == {
            "primary": "ok",
            "replica": "ok",
            "redis": "ok",
        }
        assert response.headers["X-App-Version"] == "test-release"
        workers = wait_for(lambda: len(worker_pids(process.pid)) == 2 and worker_pids(process.pid))

        # Several workers, one sum: every request is counted whichever worker served it.
        for _ in range(12):
            assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        assert counter(base, "flaskfleet_http_requests_total", route="/healthz") == 12

        process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: len(worker_pids(process.pid)) == 2 and not worker_pids(process.pid) & workers,
            START_TIMEOUT,
            "HUP to replace both workers",
        )
        reloaded = get_ready(base, process)
        assert reloaded.json()["status"] == "ready"
        assert counter(base, "flaskfleet_http_requests_total", route="/healthz") == 12
        served_by = requests.get(
            f"{base}/healthz", headers={"X-Request-ID": "after-hup"}, timeout=5
        )
        assert served_by.headers["X-Request-ID"] == "after-hup"
        as_admin = requests.get(
            f"{base}/api/v2/products",
            headers={**AUTH, "X-Request-ID": "as-admin", "traceparent": TRACEPARENT},
            timeout=5,
        )
        assert as_admin.status_code == 200

    access = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{") and '"message": "request"' in line
    ]
    by_request = {entry["request_id"]: entry for entry in access}
    assert by_request["after-hup"]["status"] == 200
    # The client the app authenticated is in the access log line; anonymous requests have none.
    assert by_request["as-admin"]["client"] == "admin"
    assert by_request["after-hup"]["client"] is None
    # The request's span: a child of the sender's, in the sender's trace.
    assert by_request["as-admin"]["trace_id"] == TRACEPARENT.split("-")[1]
    assert by_request["as-admin"]["parent_span_id"] == TRACEPARENT.split("-")[2]
    assert len(by_request["after-hup"]["trace_id"]) == 32
    assert all(entry["method"] == "GET" and "duration_ms" in entry for entry in access)
    assert all((entry["logger"], entry["level"]) == ("gunicorn.access", "info") for entry in access)
    # Each worker, the two after the HUP included, logs where it loaded the application from.
    loaded = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{") and '"message": "application loaded"' in line
    ]
    assert len(loaded) == 4, loaded
    assert {entry["app_file"] for entry in loaded} == {
        str(APP_DIR / "src" / "flaskfleet" / "wsgi.py")
    }
    notify.close()


# What Gunicorn's gevent worker module imports beside the standard library: gevent itself with
# greenlet, zope.*, packaging (its version check) and Cython's runtime modules.
GEVENT_PACKAGES = ("gevent", "greenlet", "zope", "packaging", "cython_runtime", "_cython_")


@pytest.mark.parametrize(
    ("worker_class", "worker_module", "its_packages"),
    [
        ("sync", "gunicorn.workers.sync", ()),
        ("gthread", "gunicorn.workers.gthread", ()),
        ("gevent", "gunicorn.workers.ggevent", GEVENT_PACKAGES),
    ],
)
def test_gunicorn_master_imports_nothing_of_the_application(
    app_env, tmp_path, worker_class, worker_module, its_packages
):
    """Workers are forked from the master and reuse what it imported: were the flaskfleet package
    (or a dependency of it) imported there, a HUP after a release switch would keep serving the
    previous release's code. Loading the config, the logger and the worker class as the master
    does must import only the standard library and Gunicorn, and for gevent the worker module's
    own packages (which is why the app role restarts a gevent service for a new release)."""
    script = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "from gunicorn.app.wsgiapp import WSGIApplication\n"
        "from gunicorn.arbiter import Arbiter\n"
        f"sys.argv = ['gunicorn', '-c', {str(CONF)!r}]\n"
        "arbiter = Arbiter(WSGIApplication())\n"
        "arbiter.log.info('configured')\n"
        "arbiter.cfg.child_exit(arbiter, type('Worker', (), {'pid': 1})())\n"
        "print(json.dumps({'modules': sorted(set(sys.modules) - before),\n"
        "                  'logger': type(arbiter.log).__name__}))\n"
    )
    env = gunicorn_env(
        app_env,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        GUNICORN_WORKER_CLASS=worker_class,
    )
    result = run_script(script, env, tmp_path)
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["logger"] == "JsonGunicornLogger"
    assert worker_module in report["modules"]
    allowed = sys.stdlib_module_names | {"gunicorn", "__config__", "__mp_main__"}
    foreign = {
        name
        for name in report["modules"]
        if name.split(".")[0] not in allowed and not name.startswith(its_packages)
    }
    assert not foreign, foreign
    logged = json.loads(result.stderr.strip().splitlines()[-1])
    assert (logged["logger"], logged["message"]) == ("gunicorn.error", "configured")


def test_gunicorn_adopts_systemd_socket_and_keeps_it_over_hup(app_env, clean_state, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    unused_port = free_port()
    base = f"http://127.0.0.1:{port}"
    # What systemd does: the socket on fd 3, LISTEN_FDS=1 and LISTEN_PID set to Gunicorn's pid
    # (exec keeps the pid).
    activate = (
        "import os, sys\n"
        f"os.dup2({listener.fileno()}, 3)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
    )
    command = [sys.executable, "-c", activate, "-m", "gunicorn", "-c", str(CONF)]
    # A bind in the environment must not be forced on top of the activated socket.
    env = gunicorn_env(app_env, GUNICORN_WORKERS="2", GUNICORN_BIND=f"127.0.0.1:{unused_port}")
    log = tmp_path / "gunicorn.log"
    with running(command, env, log, cwd=tmp_path, pass_fds=[listener.fileno()]) as process:
        listener.close()
        assert get_ready(base, process).json()["status"] == "ready"
        workers = wait_for(lambda: len(worker_pids(process.pid)) == 2 and worker_pids(process.pid))
        process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: len(worker_pids(process.pid)) == 2 and not worker_pids(process.pid) & workers,
            START_TIMEOUT,
            "HUP to replace both workers",
        )
        assert get_ready(base, process).json()["status"] == "ready"
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", unused_port)) != 0


def master_settings(env: dict[str, str], cwd: Path) -> dict:
    """The worker class and its settings as the master resolves them from gunicorn.conf.py."""
    script = (
        "import json, sys\n"
        "from gunicorn.app.wsgiapp import WSGIApplication\n"
        "from gunicorn.arbiter import Arbiter\n"
        f"sys.argv = ['gunicorn', '-c', {str(CONF)!r}]\n"
        "arbiter = Arbiter(WSGIApplication())\n"
        "print(json.dumps({'class': arbiter.worker_class.__name__,\n"
        "                  'threads': arbiter.cfg.threads,\n"
        "                  'worker_connections': arbiter.cfg.worker_connections}))\n"
    )
    return json.loads(run_script(script, env, cwd).stdout.splitlines()[-1])


def run_script(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """A Python script run as Gunicorn's master would run it; its last stdout line is JSON."""
    return subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, ("SyncWorker", 1, 1000)),
        ({"GUNICORN_WORKER_CLASS": "sync"}, ("SyncWorker", 1, 1000)),
        ({"GUNICORN_WORKER_CLASS": "gthread"}, ("ThreadWorker", 1, 1000)),
        ({"GUNICORN_WORKER_CLASS": "gthread", "GUNICORN_THREADS": "4"}, ("ThreadWorker", 4, 1000)),
        (
            {"GUNICORN_WORKER_CLASS": "gevent", "GUNICORN_WORKER_CONNECTIONS": "50"},
            ("GeventWorker", 1, 50),
        ),
    ],
    ids=["default", "sync", "gthread-one-thread", "gthread", "gevent"],
)
def test_gunicorn_runs_the_worker_class_configured(app_env, tmp_path, settings, expected):
    resolved = master_settings(gunicorn_env(app_env, **settings), tmp_path)
    assert (resolved["class"], resolved["threads"], resolved["worker_connections"]) == expected


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"GUNICORN_WORKER_CLASS": "eventlet"},
            "GUNICORN_WORKER_CLASS must be one of sync, gthread, gevent, got 'eventlet'",
        ),
        # What used to turn sync into gthread silently.
        (
            {"GUNICORN_THREADS": "4"},
            "GUNICORN_THREADS=4 needs GUNICORN_WORKER_CLASS=gthread (got sync)",
        ),
        (
            {"GUNICORN_WORKER_CLASS": "gevent", "GUNICORN_THREADS": "4"},
            "GUNICORN_THREADS=4 needs GUNICORN_WORKER_CLASS=gthread (got gevent)",
        ),
        (
            {"GUNICORN_WORKER_CLASS": "gevent", "GUNICORN_WORKER_CONNECTIONS": "0"},
            "GUNICORN_WORKER_CONNECTIONS must be an integer >= 1, got '0'",
        ),
    ],
    ids=["unknown-class", "sync-with-threads", "gevent-with-threads", "no-connections"],
)
def test_gunicorn_refuses_bad_worker_settings_before_listening(
    app_env, tmp_path, settings, message
):
    port = free_port()
    env = gunicorn_env(app_env, GUNICORN_BIND=f"127.0.0.1:{port}", **settings)
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", str(CONF)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Listening at" not in result.stderr


def test_gevent_worker_overlaps_its_requests_database_waits(
    app_env, clean_state, cluster, tmp_path
):
    """One gevent worker serves two requests whose queries wait in PostgreSQL at the same time:
    psycopg2 lets other greenlets run while it waits (the wait callback post_fork sets), where
    a blocking libpq call would stop the whole worker, the second request with it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Reads from the primary, where the test holds the lock they wait for.
    primary_only = {k: v for k, v in app_env.items() if k != "FLASKFLEET_DATABASE_REPLICA_URL"}
    env = gunicorn_env(
        primary_only,
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS="1",
        GUNICORN_WORKER_CLASS="gevent",
    )
    log = tmp_path / "gunicorn.log"
    command = [sys.executable, "-m", "gunicorn", "-c", str(CONF)]
    with running(command, env, log, cwd=tmp_path) as process:
        assert get_ready(base, process).json()["status"] == "ready"
        ids = []
        for sku in ("GREEN-1", "GREEN-2"):
            body = {"sku": sku, "name": sku, "price_cents": 100, "stock": 1}
            created = requests.post(f"{base}/api/v1/products", json=body, headers=AUTH, timeout=10)
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])

        locker = cluster.primary.connect()
        locker.autocommit = False
        responses: dict[int, requests.Response] = {}

        def read(product_id: int) -> None:
            responses[product_id] = requests.get(f"{base}/api/v2/products/{product_id}", timeout=30)

        def waiting_on_a_lock() -> int:
            return cluster.primary.query(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'flaskfleet-primary' AND wait_event_type = 'Lock'"
            )[0][0]

        readers = [threading.Thread(target=read, args=(product_id,)) for product_id in ids]
        try:
            with locker.cursor() as cur:
                cur.execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
            for reader in readers:
                reader.start()
            # Both wait on the lock at once, in the one worker (the statement timeout is 10 s).
            wait_for(lambda: waiting_on_a_lock() == 2, 8, "both requests' queries to wait")
            assert len(worker_pids(process.pid)) == 1
        finally:
            locker.rollback()
            locker.close()
            for reader in readers:
                if reader.is_alive():
                    reader.join(timeout=30)
        assert {pid: r.status_code for pid, r in responses.items()} == {pid: 200 for pid in ids}
        assert {r.json()["id"] for r in responses.values()} == set(ids)


def test_gevent_wait_callback_bounds_connecting_by_connect_timeout(cluster, tmp_path):
    """libpq ignores connect_timeout when psycopg2 polls it for gevent: the wait callback
    enforces it, so a server that accepts connections and never answers fails the attempt in
    connect_timeout (as a psycopg2 error, which the app's pools handle) instead of holding it
    for ever; one that refuses is passed over for the URL's next server, as libpq does."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    refusing = free_port()
    live = cluster.primary.port
    script = (
        "from gevent import monkey\n"
        "monkey.patch_all()\n"
        "import json, os, runpy, time\n"
        "import psycopg2\n"
        "os.environ['GUNICORN_WORKER_CLASS'] = 'gevent'\n"
        f"runpy.run_path({str(CONF)!r})['post_fork'](None, None)\n"
        "def attempt(ports):\n"
        "    started = time.monotonic()\n"
        "    try:\n"
        "        conn = psycopg2.connect(host=','.join(['127.0.0.1'] * len(ports)),\n"
        "            port=','.join(map(str, ports)), user='postgres', dbname='postgres',\n"
        "            sslmode='disable', connect_timeout=2)\n"
        "    except psycopg2.OperationalError as exc:\n"
        "        return str(exc).strip(), time.monotonic() - started\n"
        "    with conn.cursor() as cur:\n"
        "        cur.execute('SELECT inet_server_port()')\n"
        "        return cur.fetchone()[0], time.monotonic() - started\n"
        "print(json.dumps({'silent': attempt([%d]), 'refusing_then_live': attempt([%d, %d])}))\n"
        % (silent.getsockname()[1], refusing, live)
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", script],
            env=gunicorn_env({}),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    finally:
        silent.close()
    outcome = json.loads(result.stdout.splitlines()[-1])
    error, seconds = outcome["silent"]
    assert error.startswith("timeout expired connecting to 127.0.0.1:"), error
    assert 1.5 < seconds < 5, seconds
    assert outcome["refusing_then_live"][0] == live
