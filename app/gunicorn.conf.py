"""Gunicorn settings for flaskfleet: `gunicorn -c gunicorn.conf.py` (the app is named below).

Environment overrides: GUNICORN_BIND (default 127.0.0.1:8000, ignored under systemd socket
activation), GUNICORN_WORKERS (default 2 x CPUs + 1), GUNICORN_WORKER_CLASS (sync, gthread or
gevent; default sync), GUNICORN_THREADS (gthread only), GUNICORN_WORKER_CONNECTIONS,
GUNICORN_TIMEOUT, GUNICORN_KEEPALIVE, GUNICORN_MAX_REQUESTS, GUNICORN_FORWARDED_ALLOW_IPS, and
PROMETHEUS_MULTIPROC_DIR for metrics summed over workers.

systemd: with a .socket unit Gunicorn adopts the passed sockets (LISTEN_FDS) itself, and with
Type=notify it reports READY=1 on NOTIFY_SOCKET itself; HUP (ExecReload) re-reads this file
and replaces the workers, which import the application afresh because preload_app is off.

The master forks every worker, and a worker finds in sys.modules whatever the master imported:
so this file, run by the master, imports nothing but the standard library and Gunicorn, never
the flaskfleet package or its dependencies. Otherwise a HUP after a new release would start
workers running the previous release's code. That is also why the JSON logger is defined here.
One exception: Gunicorn imports the gevent worker's module, and gevent with it, in the master
(it builds each worker object there before forking), so with that class a new release needs a
restart rather than a HUP (the app role does so).
"""

import datetime
import json
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path

from gunicorn import glogging


def _env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < minimum:
        raise SystemExit(f"{name} must be an integer >= {minimum}, got {raw!r}")
    return int(raw)


def _env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if raw not in choices:
        raise SystemExit(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


wsgi_app = "flaskfleet.wsgi:app"

# Under socket activation the sockets come from systemd. This file is read again on HUP, after
# Gunicorn has removed LISTEN_FDS from the environment, so remember the fact for the reload:
# a bind appearing then would make Gunicorn drop the systemd sockets.
if os.environ.get("LISTEN_FDS"):
    os.environ["GUNICORN_SOCKET_ACTIVATED"] = "1"
if not os.environ.get("GUNICORN_SOCKET_ACTIVATED"):
    bind = [os.environ.get("GUNICORN_BIND", "").strip() or "127.0.0.1:8000"]

workers = _env_int("GUNICORN_WORKERS", 2 * multiprocessing.cpu_count() + 1, minimum=1)
# How a worker serves requests at once (the app role's app_worker_class): sync, one at a time;
# gthread, GUNICORN_THREADS at once in threads; gevent, up to GUNICORN_WORKER_CONNECTIONS at once
# in greenlets, which suits requests that mostly wait on PostgreSQL and Redis.
WORKER_CLASSES = ("sync", "gthread", "gevent")
worker_class = _env_choice("GUNICORN_WORKER_CLASS", WORKER_CLASSES, "sync")
threads = _env_int("GUNICORN_THREADS", 1, minimum=1)
# Named, never implied: Gunicorn would quietly run sync with threads as gthread, and gevent
# ignores threads.
if threads > 1 and worker_class != "gthread":
    raise SystemExit(
        f"GUNICORN_THREADS={threads} needs GUNICORN_WORKER_CLASS=gthread (got {worker_class}):"
        " only the gthread worker runs threads"
    )
# Connections a gthread or gevent worker holds open, idle keep-alive ones included; for gevent
# also the requests it serves at once. The sync worker holds one at a time.
worker_connections = _env_int("GUNICORN_WORKER_CONNECTIONS", 1000, minimum=1)
timeout = _env_int("GUNICORN_TIMEOUT", 30, minimum=1)
graceful_timeout = timeout
# Longer than nginx's upstream keepalive_timeout would be pointless; nginx reuses connections.
keepalive = _env_int("GUNICORN_KEEPALIVE", 5)
# Recycle workers now and then (bounding slow leaks), staggered so they do not all restart at once.
max_requests = _env_int("GUNICORN_MAX_REQUESTS", 2000)
max_requests_jitter = max_requests // 10
# Off, so that HUP loads new code in the new workers.
preload_app = False
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1")
# Heartbeat files in memory, as Gunicorn's docs advise: works on a read-only root filesystem.
SHARED_MEMORY = Path("/dev/shm")  # noqa: S108 -- Gunicorn creates its files there with mkstemp
if SHARED_MEMORY.is_dir():
    worker_tmp_dir = str(SHARED_MEMORY)
# The runtime control socket would default to $HOME; nothing here uses it.
control_socket_disable = True

accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
proc_name = "flaskfleet"

# Attributes every LogRecord has; anything else was passed with extra= and is logged as a field.
_STANDARD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, as flaskfleet.logs writes them: time, level, logger, message
    and the extra fields (the access log's request_id, client and trace ids among them)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class JsonGunicornLogger(glogging.Logger):
    """The error log and the access log as JSON lines; access_log_format is not used."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(JsonFormatter())

    def access(self, resp, req, environ, request_time) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        pairs = resp.headers.items() if hasattr(resp.headers, "items") else resp.headers
        headers = {name.lower(): value for name, value in pairs}
        self.access_log.log(
            logging.INFO,
            "request",
            extra={
                "remote_addr": environ.get("REMOTE_ADDR"),
                "method": environ.get("REQUEST_METHOD"),
                "path": environ.get("PATH_INFO"),
                "query": environ.get("QUERY_STRING") or None,
                "status": int(status),
                "bytes": getattr(resp, "sent", None),
                "duration_ms": round(request_time.total_seconds() * 1000, 3),
                "user_agent": environ.get("HTTP_USER_AGENT"),
                "request_id": headers.get("x-request-id"),
                # The API client the app authenticated (flaskfleet.web.CLIENT_ENVIRON_KEY,
                # not imported: see the top); None for anonymous requests.
                "client": environ.get("flaskfleet.client"),
                # The request's span (flaskfleet.web.TRACE_ENVIRON_KEY): trace_id, span_id
                # and the parent's (nginx's) span id; absent if the app never saw it.
                **environ.get("flaskfleet.trace", {}),
            },
        )


# The class itself rather than its dotted name: a name would have the master import its module.
logger_class = JsonGunicornLogger


def _multiproc_dir() -> Path | None:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(directory) if directory else None


def on_starting(server):
    """Start with empty metric files: values from a previous run would be summed in."""
    directory = _multiproc_dir()
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()


def post_fork(server, worker):
    """In a gevent worker, before it imports the application: psycopg2 waits for PostgreSQL
    through gevent. The worker's monkey patching reaches Python's sockets only; libpq does its
    own I/O in C, and each query would block the worker's every greenlet until it returned."""
    if worker_class == "gevent":
        _make_psycopg2_cooperative()


# libpq's CONNECTION_OK (ConnStatusType), for which psycopg2 has no name: any other status
# means the connection is still being made.
_LIBPQ_CONNECTION_OK = 0


def _make_psycopg2_cooperative() -> None:
    """psycopg2's wait callback for gevent: poll libpq and, until its socket is ready, let
    other greenlets run. psycogreen's gevent callback, plus a connect timeout; psycogreen
    itself is on PyPI as an sdist only, and make release installs wheels only.

    libpq ignores connect_timeout when the application polls (its docs leave the timeout to the
    application), so while connecting each server of the URL gets connect_timeout here, as a
    blocking connect gives it. Past that the attempt fails as a connection error (which the
    app's pools handle) where libpq would go on to the URL's next server: while one server
    accepts connections and never answers, new connections fail instead of reaching the next.
    Servers that refuse, or fail sooner, are passed over as libpq does.
    """
    import psycopg2
    from gevent.socket import wait_read, wait_write
    from psycopg2.extensions import POLL_OK, POLL_READ, parse_dsn, set_wait_callback

    def wait(conn) -> None:
        server = deadline = None
        while True:
            state = conn.poll()
            if state == POLL_OK:
                return
            timeout = timed_out = None
            if conn.info.status != _LIBPQ_CONNECTION_OK:
                if (conn.info.host, conn.info.port) != server:
                    server = (conn.info.host, conn.info.port)
                    seconds = int(parse_dsn(conn.dsn).get("connect_timeout", 0))
                    deadline = time.monotonic() + seconds if seconds > 0 else None
                if deadline is not None:
                    timeout = max(deadline - time.monotonic(), 0)
                    timed_out = psycopg2.OperationalError(
                        f"timeout expired connecting to {server[0]}:{server[1]}"
                    )
            (wait_read if state == POLL_READ else wait_write)(
                conn.fileno(), timeout=timeout, timeout_exc=timed_out
            )

    set_wait_callback(wait)


def post_worker_init(worker):
    """Log which files the worker loaded the application from (after a release switch: the new
    release's, or the reload did not take)."""
    module = sys.modules.get(wsgi_app.partition(":")[0])
    worker.log.info(
        "application loaded",
        extra={"worker_pid": worker.pid, "app_file": getattr(module, "__file__", None)},
    )


# prometheus_client's multiprocess.mark_process_dead, without importing prometheus_client into
# the master (see the top): the files of the "live" gauge modes are the dead worker's alone.
_LIVE_GAUGE_MODES = ("liveall", "livemin", "livemax", "livesum", "livemostrecent")


def child_exit(server, worker):
    """Drop a dead worker's live gauges (pool usage) from the multiprocess metrics."""
    directory = _multiproc_dir()
    if directory is not None:
        for mode in _LIVE_GAUGE_MODES:
            (directory / f"gauge_{mode}_{worker.pid}.db").unlink(missing_ok=True)
