"""What the loads need on the stack, and the scenarios that use it: seeded products, the bare
Gunicorn and the naive Flask server on the first app instance (each published on 127.0.0.1 by
an LXD proxy device, removed afterwards), HTTPS at the load balancer beside its plain HTTP,
Redis flushed before an uncached load, and Patroni's synchronous mode on for an order load."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import requests
from load import Scenario
from stacklib import PATRONICTL, Stack, log, wait_for

SERVERS = Path(__file__).resolve().parent / "servers"
APP_DIR = "/opt/flaskfleet"  # app_base_dir
ENV_FILE = "/etc/flaskfleet/flaskfleet.env"  # app_env_file
AUX_DIR = "/opt/flaskfleet-bench"
SEED_PRODUCTS = 60_000
REDIS_PORT = 6379  # group_vars/all/ports.yml


def first_app(stack: Stack) -> str:
    """The app instance that hosts the bench's own servers (and AUX_DIR) and is profiled."""
    return min(stack.groups()["app"])


def answers_200(url: str, seconds: float, interval: float = 0.5) -> None:
    wait_for(
        lambda: requests.get(url, timeout=3).status_code,
        lambda status: status == 200,
        f"{url} answering 200",
        seconds,
        interval,
    )


def seed(stack: Stack) -> tuple[int, int]:
    """SEED_PRODUCTS products with stock for any order load; ids FIRST..LAST."""
    log(f"seeding {SEED_PRODUCTS} products (once per stack)")
    insert = (
        "INSERT INTO products (sku, name, description, price_cents, stock) "
        "SELECT 'bench-' || g, 'Bench product ' || g, 'Seeded by make bench', "
        "100 + g % 900, 1000000000 FROM generate_series(1, {count}) g "
        "ON CONFLICT (sku) DO NOTHING"
    )
    stack.psql(stack.leader(), insert.format(count=int(SEED_PRODUCTS)))
    first, last, count = (
        int(v)
        for v in stack.psql(
            stack.leader(),
            "SELECT min(id), max(id), count(*) FROM products WHERE sku LIKE 'bench-%'",
        ).split("|")
    )
    if last - first + 1 != count:
        raise SystemExit(f"seeded product ids are not contiguous: {first}..{last}, {count} rows")
    # The replica serves the reads: wait until it has the last row.
    answers_200(f"{stack.url}/api/v1/products/{last}", 60, interval=1)
    return first, last


class AuxServers:
    """The bare Gunicorn and the naive Flask server on the first app instance,
    each published on 127.0.0.1 by an LXD proxy device, removed on exit."""

    UNITS: ClassVar[dict[str, int]] = {"bench-gunicorn": 8101, "bench-naive": 8102}

    def __init__(self, stack: Stack):
        self.stack = stack
        self.instance = first_app(stack)
        self.ports = {"bench-gunicorn": stack.port + 1, "bench-naive": stack.port + 2}

    def __enter__(self) -> AuxServers:
        log(f"starting the bare Gunicorn and the naive server on {self.instance}")
        self.__exit__()
        self.stack.lxc_exec(self.instance, "mkdir", "-p", AUX_DIR)
        for name in ("constant_wsgi.py", "naive_app.py"):
            self.stack.lxc("file", "push", SERVERS / name, f"{self.instance}{AUX_DIR}/{name}")
        venv = f"{APP_DIR}/current/venv/bin"
        common = ["systemd-run", "-p", "DynamicUser=yes", "-p", f"WorkingDirectory={AUX_DIR}"]
        self.stack.lxc_exec(
            self.instance,
            *common,
            "--unit=bench-gunicorn",
            *(f"{venv}/gunicorn", "--workers", "1", "--bind", "127.0.0.1:8101"),
            *("--access-logfile", "-", "--log-level", "warning", "constant_wsgi:app"),
        )
        self.stack.lxc_exec(
            self.instance,
            *common,
            *("-p", f"EnvironmentFile={ENV_FILE}", "--unit=bench-naive"),
            *(
                f"{venv}/flask",
                "--app",
                "naive_app",
                "run",
                "--host",
                "127.0.0.1",
                "--port",
                "8102",
            ),
        )
        for unit, port in self.UNITS.items():
            self.stack.lxc(
                *("config", "device", "add", self.instance, unit, "proxy"),
                f"listen=tcp:127.0.0.1:{self.ports[unit]}",
                f"connect=tcp:127.0.0.1:{port}",
                "bind=host",
            )
        return self

    def url(self, unit: str) -> str:
        return f"http://127.0.0.1:{self.ports[unit]}"

    def __exit__(self, *exc) -> None:
        for unit in self.UNITS:
            self.stack.lxc("config", "device", "remove", self.instance, unit, check=False)
            self.stack.lxc_exec(self.instance, "systemctl", "stop", unit, check=False)
            self.stack.lxc_exec(self.instance, "systemctl", "reset-failed", unit, check=False)


class EdgeTLS:
    """HTTPS on the load balancer beside its plain HTTP, so that the same run measures what TLS
    at the edge costs: the nginx role with nginx_tls_enabled (a self-signed certificate, as a
    local stack that opts in gets; no redirect, so the other scenarios stay on HTTP), its port
    443 published on 127.0.0.1 by an LXD proxy device, removed on exit. The bench stack keeps
    the HTTPS listener until it is removed."""

    DEVICE = "bench-https"

    def __init__(self, stack: Stack):
        self.stack = stack
        self.instance = stack.instance("lb")
        self.url = f"https://127.0.0.1:{stack.port + 3}"

    def __enter__(self) -> EdgeTLS:
        log("HTTPS on the load balancer (nginx role, self-signed) beside plain HTTP")
        # JSON, so that the booleans are booleans (key=value would pass the string "false").
        settings = {"nginx_tls_enabled": True, "nginx_tls_redirect_http": False}
        self.stack.playbook("site.yml", "--limit", "lb", "-e", json.dumps(settings))
        self.__exit__()
        self.stack.lxc(
            *("config", "device", "add", self.instance, self.DEVICE, "proxy"),
            f"listen=tcp:127.0.0.1:{self.stack.port + 3}",
            "connect=tcp:127.0.0.1:443",
            "bind=host",
        )
        return self

    def __exit__(self, *exc) -> None:
        self.stack.lxc("config", "device", "remove", self.instance, self.DEVICE, check=False)


def flush_cache(stack: Stack, password: str) -> None:
    """FLUSHDB as Redis' admin user (the app's user may not)."""
    redis = next(iter(stack.groups()["redis"].items()))
    stack.lxc_exec(
        redis[0],
        # TLS only, verified against the stack's CA (group_vars/all/tls.yml).
        *("redis-cli", "--tls", "--cacert", "/etc/flaskfleet/tls/ca.crt"),
        *("--user", "admin", "--askpass", "-h", redis[1], "FLUSHDB"),
        input=password + "\n",
    )


@contextmanager
def synchronous_mode(stack: Stack) -> Iterator[None]:
    """Patroni's synchronous mode on for the block (a commit is acknowledged once the replica
    has it), back off after it. Set in Patroni's dynamic configuration with patronictl, the
    setting the role's postgresql_synchronous_mode writes: a converge per load (the open-loop
    rates each take one) would cost minutes where this costs seconds."""
    leader = stack.instance(stack.leader())

    def switch(on: bool) -> None:
        stack.lxc_exec(
            leader,
            *(*PATRONICTL, "edit-config", "--force", "--quiet"),
            *("--set", f"synchronous_mode={'true' if on else 'false'}"),
        )
        wait_for(
            stack.database_members,
            lambda members: on == any(m["Role"] == "Sync Standby" for m in members.values()),
            "a synchronous standby" if on else "no synchronous standby",
            60,
            1,
        )

    switch(True)
    try:
        yield
    finally:
        switch(False)


# The scenarios bench_scenarios builds, in the report's order: make bench --only names them
# before any stack exists, so that a misspelt one fails before the run starts.
SCENARIO_KEYS = (
    "nginx_ceiling",
    "gunicorn_ceiling",
    "hello",
    "cached_get",
    "cached_get_https",
    "uncached_get",
    "uncached_get_redis_blackholed",
    "order_post",
    "order_post_synchronous",
    "order_post_https",
    "naive_get",
)


def bench_scenarios(
    stack: Stack,
    aux: AuxServers,
    edge: EdgeTLS,
    seeded: tuple[int, int],
    secrets: dict,
    tokens: dict,
    nonce: str,
) -> list[Scenario]:
    """The ceilings, the stack's scenarios and the naive baseline, in the report's order."""
    first, last = seeded
    product = f"/api/v1/products/{first}"
    scenarios = [
        Scenario(
            "nginx_ceiling", "nginx fixed 200 (LB)", f"{stack.url}/nginx-health", kind="ceiling"
        ),
        Scenario(
            "gunicorn_ceiling",
            "bare Gunicorn worker",
            aux.url("bench-gunicorn") + "/",
            kind="ceiling",
        ),
        Scenario(
            "hello",
            "Flask /healthz via nginx",
            f"{stack.url}/healthz",
            kind="ceiling",
            sweep=True,
        ),
        Scenario("cached_get", "cached product GET", stack.url + product),
        Scenario(
            "cached_get_https",
            "cached product GET over HTTPS (edge TLS)",
            edge.url + product,
            sweep=False,
        ),
        Scenario(
            "uncached_get",
            "uncached product GET (replica)",
            stack.url,
            ("walk", first, last),
            before=lambda: flush_cache(stack, secrets["vault_redis_admin_password"]),
        ),
        # The same walk with the cache Redis dropping packets: after each process's breaker
        # opens the cache is skipped, so this p99 beside uncached_get's is what an outage costs.
        Scenario(
            "uncached_get_redis_blackholed",
            "uncached product GET, Redis blackholed",
            stack.url,
            ("walk", first, last),
            around=lambda: stack.blackhole("redis", REDIS_PORT),
            sweep=False,
        ),
        Scenario(
            "order_post",
            "order POST (primary)",
            stack.url,
            ("order", first, first + 999, nonce),
            token=tokens["shop"],
        ),
        # The same orders with each commit waiting for the replica: beside order_post, what
        # losing no acknowledged order in a failover costs in throughput and latency.
        Scenario(
            "order_post_synchronous",
            "order POST, synchronous replication",
            stack.url,
            ("order", first, first + 999, nonce + "y"),
            token=tokens["shop"],
            around=lambda: synchronous_mode(stack),
            sweep=False,
        ),
        Scenario(
            "order_post_https",
            "order POST over HTTPS (edge TLS)",
            edge.url,
            ("order", first, first + 999, nonce + "s"),
            token=tokens["shop"],
            sweep=False,
        ),
        Scenario(
            "naive_get",
            "naive product GET (dev server)",
            aux.url("bench-naive"),
            ("walk", first, last),
            kind="baseline",
        ),
    ]
    if tuple(scenario.key for scenario in scenarios) != SCENARIO_KEYS:
        raise RuntimeError("SCENARIO_KEYS does not list bench_scenarios' scenarios in order")
    return scenarios
