"""A whole stack on this machine, from Python: brought up and down by scripts/stack.sh, read
through its inventory (hosts.json) and its vault, reached with `lxc exec` and through
127.0.0.1. The stack suite (tests/stack/conftest.py) and make bench (bench/run.py) both
drive their stack with it: each puts this directory on sys.path and imports stacklib, as
the Molecule scenarios do with molecule/_shared/testlib.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
STACK_SH = ("bash", "scripts/stack.sh")
Answer = TypeVar("Answer")


# The database VMs (Terraform's tiers), and how to ask Patroni on them.
DATABASE_TIERS = ("postgres-primary", "postgres-replica")
PATRONICTL = ("patronictl", "--config-file", "/etc/patroni/config.yml")


class StackError(AssertionError):
    """A command failed or the stack was not ready in time. An AssertionError: in a test it is
    the expectation that failed; make bench exits with its message."""


def log(message: str) -> None:
    """A progress line on stderr, as scripts/lib.sh's log() writes it."""
    print(f"\033[1;34m==>\033[0m {message}", file=sys.stderr, flush=True)


def recap_changed(output: str) -> dict[str, int]:
    """Host -> its changed= count, from the PLAY RECAP in ansible-playbook's output."""
    return {
        host: int(changed)
        for host, changed in re.findall(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", output, re.M)
    }


def run(
    *cmd,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    check: bool = True,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """CMD in the repository, its output captured; a failure raises StackError with the output's
    tail. A command whose arguments carry a secret passes check=False and says less."""
    args = [str(part) for part in cmd]
    result = subprocess.run(  # noqa: S603 (the callers' own commands: stack.sh, lxc, wrk)
        args,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        check=False,
    )
    if check and result.returncode != 0:
        raise StackError(
            f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-6000:]}\n"
            f"{result.stderr[-3000:]}"
        )
    return result


def wait_for(
    fetch: Callable[[], Answer],
    until: Callable[[Answer], bool],
    what: str,
    seconds: float,
    interval: float = 1.0,
) -> Answer:
    """fetch() until until(answer) holds, and return that answer. A fetch that raises OSError
    (no connection yet; requests' errors are OSErrors) or ValueError (no JSON yet) is no answer."""
    deadline = time.monotonic() + seconds
    answer = None
    while True:
        try:
            answer = fetch()
            if until(answer):
                return answer
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise StackError(f"{what}: not within {seconds:.0f} s; last answer: {answer!r}")
        time.sleep(interval)


class Stack:
    """The stack `name` (FF_STACK), published on 127.0.0.1:`port` (FF_HTTP_PORT). Its
    instances are <name>-<tier>[-N]; its secrets and logs are in .secrets/<name>/."""

    def __init__(self, name: str, port: int):
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "FF_STACK": name, "FF_HTTP_PORT": str(port)}
        self.state = ROOT / ".secrets" / name

    # Commands run in the repository with FF_STACK and FF_HTTP_PORT set, as make runs them.
    def run(
        self, *cmd, timeout: float = 900, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess:
        return run(*cmd, env=self.env, timeout=timeout, check=check, input=input)

    def timed(self, *cmd, timeout: float = 3600) -> float:
        """CMD with its output on this terminal; returns its wall time in seconds."""
        args = [str(part) for part in cmd]
        start = time.monotonic()
        result = subprocess.run(args, cwd=ROOT, env=self.env, timeout=timeout, check=False)  # noqa: S603
        if result.returncode != 0:
            raise StackError(f"{' '.join(args)} exited {result.returncode}")
        return time.monotonic() - start

    def playbook(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """`stack.sh ansible-playbook ARGS`: a playbook with the stack's inventory and vault."""
        return self.run(*STACK_SH, "ansible-playbook", *args, timeout=timeout)

    def lxc(self, *args, timeout: float = 180, check: bool = True, input: str | None = None):
        return self.run("lxc", *args, timeout=timeout, check=check, input=input)

    def lxc_exec(self, instance: str, *cmd, timeout: float = 300, check=True, input=None):
        return self.lxc("exec", instance, "--", *cmd, timeout=timeout, check=check, input=input)

    @contextmanager
    def blackhole(self, tier: str, port: int) -> Iterator[None]:
        """Drop (not refuse) every packet reaching `port` on the tier's instance from another
        host, as a broken cloud network does, until the block ends: an nftables table of its
        own, hooked before the role's firewall and deleted afterwards."""
        host = self.instance(tier)
        rules = (
            "add table inet ff_blackhole\n"
            "add chain inet ff_blackhole input { type filter hook input priority -10; }\n"
            f'add rule inet ff_blackhole input iifname != "lo" tcp dport {port} drop\n'
        )
        self.lxc_exec(host, "nft", "-f", "-", input=rules)
        try:
            yield
        finally:
            self.lxc_exec(host, "nft", "delete", "table", "inet", "ff_blackhole")

    def instance(self, tier: str) -> str:
        return f"{self.name}-{tier}"

    # Which database VM leads is Patroni's to say (it fails over by itself): never the names.
    def database_members(self) -> dict[str, dict]:
        """Tier -> Patroni's view of that member (`patronictl list`), asked on the first
        database VM that answers."""
        for tier in DATABASE_TIERS:
            result = self.lxc_exec(self.instance(tier), *PATRONICTL, "list", "--format", "json",
                                   timeout=30, check=False)  # fmt: skip
            if result.returncode == 0:
                members = json.loads(result.stdout)
                prefix = f"{self.name}-"
                return {member["Member"].removeprefix(prefix): member for member in members}
        raise StackError("no database VM answers `patronictl list`")

    def leader(self) -> str:
        """The tier of the database VM that leads now."""
        (tier,) = [t for t, member in self.database_members().items() if member["Role"] == "Leader"]
        return tier

    def replica(self) -> str:
        """The tier of the database VM that replicates now."""
        (tier,) = [t for t, member in self.database_members().items() if member["Role"] != "Leader"]
        return tier

    def psql(self, tier: str, sql: str) -> str:
        """SQL as the postgres superuser on the flaskfleet database of that tier's instance."""
        out = self.lxc_exec(self.instance(tier), "runuser", "-u", "postgres", "--",
                            "psql", "-d", "flaskfleet", "-Atc", sql)  # fmt: skip
        return out.stdout.strip()

    # What stack.sh wrote: the inventory and the vault.
    def inventory_dir(self) -> Path:
        # stack.sh keeps the ff stack's inventory where `ansible-playbook site.yml` finds it.
        return ROOT / "inventories" / "local" if self.name == "ff" else self.state / "inventory"

    def exists(self) -> bool:
        return (self.inventory_dir() / "hosts.json").exists()

    def _inventory_groups(self) -> dict[str, dict]:
        inventory = json.loads((self.inventory_dir() / "hosts.json").read_text())
        return inventory["all"]["children"]

    def inventory_hosts(self) -> dict[str, dict]:
        """Host name -> its inventory variables."""
        return {
            name: host
            for group in self._inventory_groups().values()
            for name, host in (group.get("hosts") or {}).items()
        }

    def groups(self) -> dict[str, dict[str, str]]:
        """Group -> {host name: private_ip}, for the groups that have hosts."""
        return {
            group: {name: host["private_ip"] for name, host in spec["hosts"].items()}
            for group, spec in self._inventory_groups().items()
            if spec.get("hosts")
        }

    def vault_view(self, name: str = "vault.yml") -> dict:
        """One of the stack's ansible-vault files (.secrets/<stack>/<name>), decrypted in memory."""
        out = self.run(ROOT / ".venv" / "bin" / "ansible-vault", "view", "--vault-password-file",
                       self.state / "vault-password", self.state / name)  # fmt: skip
        return yaml.safe_load(out.stdout)

    # Clients' view, once it is up.
    @cached_property
    def ops_url(self) -> str:
        """The load balancer's private address as the admin network reaches it: the only
        place /metrics, /readyz and X-Served-By are served."""
        return f"http://{self.inventory_hosts()[self.instance('lb')]['private_ip']}"

    def published(self, tier: str, device: str) -> str:
        """The host's 127.0.0.1 address of a port Terraform published (an LXD proxy device
        of the tier's instance, e.g. the monitor's prometheus), as a URL."""
        out = self.run("lxc", "query", f"/1.0/instances/{self.instance(tier)}", timeout=60)
        listen = json.loads(out.stdout)["devices"][device]["listen"]
        return "http://" + listen.removeprefix("tcp:")

    @cached_property
    def prometheus_url(self) -> str:
        return self.published("monitor", "prometheus")

    @cached_property
    def alertmanager_url(self) -> str:
        return self.published("monitor", "alertmanager")

    @cached_property
    def tokens(self) -> dict[str, str]:
        """API client -> its bearer token (the vault's api-tokens.yml)."""
        return self.vault_view("api-tokens.yml")

    @property
    def token(self) -> str:
        """The catalogue manager's token: every scope."""
        return self.tokens["admin"]

    def session(self, client: str = "admin") -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.tokens[client]}"
        return session

    def wait_ready(self, expect: str = "ready", timeout: float = 90) -> dict:
        """/readyz's answer once its status is `expect`. Each request may take the app's
        database connect timeout (FLASKFLEET_DB_CONNECT_TIMEOUT, 3 s) while a database is down:
        /readyz then answers in just over 3 s, so waiting only 3 s for it lost the race under
        load."""
        return wait_for(
            lambda: requests.get(f"{self.ops_url}/readyz", timeout=10).json(),
            lambda body: body.get("status") == expect,
            f"/readyz saying {expect!r}",
            timeout,
        )


@dataclass
class OrderLoad:
    """A steady, bounded order load: `rate` orders a second for at most `seconds` (and at most
    `limit` orders), each with an Idempotency-Key of its own that the client retries with the same
    key, as a careful client does, until it is acknowledged or `retry_for` seconds pass."""

    url: str
    session: requests.Session
    product_id: int
    rate: float = 5
    seconds: float = 120
    limit: int = 1000
    retry_for: float = 30
    acknowledged: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    attempts: Counter = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _place(self, key: str) -> None:
        deadline = time.monotonic() + self.retry_for
        last = ""
        while time.monotonic() < deadline:
            try:
                response = self.session.post(
                    f"{self.url}/api/v1/orders",
                    json={"items": [{"product_id": self.product_id, "quantity": 1}]},
                    headers={"Idempotency-Key": key},
                    timeout=10,
                )
                with self._lock:
                    self.attempts[response.status_code] += 1
                if response.status_code in (200, 201):
                    with self._lock:
                        self.acknowledged.append(response.json()["id"])
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except requests.RequestException as exc:
                last = repr(exc)
                with self._lock:
                    self.attempts["error"] += 1
            time.sleep(0.5)
        with self._lock:
            self.failed.append(last)

    def _run(self) -> None:
        started = time.monotonic()
        placed = 0
        while not self._stop.is_set() and placed < self.limit:
            if time.monotonic() - started > self.seconds:
                break
            thread = threading.Thread(target=self._place, args=(uuid.uuid4().hex,))
            thread.start()
            self._clients.append(thread)
            placed += 1
            time.sleep(1 / self.rate)

    def __enter__(self) -> OrderLoad:
        self._clients: list[threading.Thread] = []
        self._driver = threading.Thread(target=self._run)
        self._driver.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._driver.join()
        for thread in self._clients:
            thread.join()

    def summary(self) -> str:
        return json.dumps(
            {
                "acknowledged": len(self.acknowledged),
                "failed": self.failed[:5],
                "attempts": {str(k): v for k, v in self.attempts.items()},
            }
        )


def wait_until_confirmed(stack: Stack, client: str, order_ids: list, timeout: float = 180) -> list:
    """Poll each order until the worker tier has confirmed it; the ids still not confirmed."""
    session = stack.session(client)
    pending = list(order_ids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        still = []
        for order_id in pending:
            response = session.get(f"{stack.url}/api/v1/orders/{order_id}", timeout=10)
            if response.status_code != 200 or response.json().get("status") != "confirmed":
                still.append(order_id)
        pending = still
        if pending:
            time.sleep(2)
    return pending
