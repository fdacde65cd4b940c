"""Gunicorn settings for flaskfleet: `gunicorn -c gunicorn.conf.py` (the app is named below).

Environment overrides: GUNICORN_BIND (default 127.0.0.1:8000, ignored under systemd socket
activation), GUNICORN_WORKERS (default 2 x CPUs + 1), GUNICORN_THREADS, GUNICORN_TIMEOUT,
GUNICORN_KEEPALIVE, GUNICORN_MAX_REQUESTS, GUNICORN_FORWARDED_ALLOW_IPS, and
PROMETHEUS_MULTIPROC_DIR for metrics summed over workers.

systemd: with a .socket unit Gunicorn adopts the passed sockets (LISTEN_FDS) itself, and with
Type=notify it reports READY=1 on NOTIFY_SOCKET itself; HUP (ExecReload) re-reads this file
and replaces the workers, which import the application afresh because preload_app is off.
"""

import multiprocessing
import os
from pathlib import Path


def _env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < minimum:
        raise SystemExit(f"{name} must be an integer >= {minimum}, got {raw!r}")
    return int(raw)


wsgi_app = "flaskfleet.wsgi:app"

# Under socket activation the sockets come from systemd. This file is read again on HUP, after
# Gunicorn has removed LISTEN_FDS from the environment, so remember the fact for the reload:
# a bind appearing then would make Gunicorn drop the systemd sockets.
if os.environ.get("LISTEN_FDS"):
    os.environ["GUNICORN_SOCKET_ACTIVATED"] = "1"
if not os.environ.get("GUNICORN_SOCKET_ACTIVATED"):
    bind = [os.environ.get("GUNICORN_BIND", "").strip() or "127.0.0.1:8000"]

workers = _env_int("GUNICORN_WORKERS", 2 * multiprocessing.cpu_count() + 1, minimum=1)
# More than one thread switches Gunicorn to the gthread worker.
threads = _env_int("GUNICORN_THREADS", 1, minimum=1)
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
logger_class = "flaskfleet.gunicorn_logger.JsonGunicornLogger"
proc_name = "flaskfleet"


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


def child_exit(server, worker):
    """Drop a dead worker's live gauges (pool usage) from the multiprocess metrics."""
    if _multiproc_dir() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
