"""The whole stack, end to end through 127.0.0.1: a stack of its own (FF_STACK,
default fft, on FF_HTTP_PORT, default 8091) so a developer's `make up` stack is
never touched. `make up` brings it up; the session ends with `make down` unless
FF_KEEP_STACK=1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
STACK = os.environ.get("FF_STACK", "fft")
PORT = int(os.environ.get("FF_HTTP_PORT", "8091"))
ENV = {**os.environ, "FF_STACK": STACK, "FF_HTTP_PORT": str(PORT)}
LOG_DIR = ROOT / ".secrets" / STACK


def run(*cmd: str, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-6000:]}\n"
            f"{result.stderr[-3000:]}"
        )
    return result


def playbook(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return run("bash", "scripts/stack.sh", "ansible-playbook", *args, timeout=timeout)


def recap_changed(output: str) -> dict[str, int]:
    return {
        host: int(changed)
        for host, changed in re.findall(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", output, re.M)
    }


def lxc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run("lxc", *args, timeout=180, check=check)


def instance(tier: str) -> str:
    return f"{STACK}-{tier}"


def psql(tier: str, sql: str) -> str:
    out = lxc("exec", instance(tier), "--", "runuser", "-u", "postgres", "--",
              "psql", "-d", "flaskfleet", "-Atc", sql)  # fmt: skip
    return out.stdout.strip()


def vault_view(name: str) -> dict:
    """One of the stack's ansible-vault files (.secrets/<stack>/<name>), decrypted in memory."""
    out = run(".venv/bin/ansible-vault", "view", "--vault-password-file",
              str(LOG_DIR / "vault-password"), str(LOG_DIR / name))  # fmt: skip
    return yaml.safe_load(out.stdout)


def inventory_dir() -> Path:
    return ROOT / ("inventories/local" if STACK == "ff" else f".secrets/{STACK}/inventory")


def inventory_hosts() -> dict[str, dict]:
    """Host name -> its inventory variables, from the stack's hosts.json."""
    inventory = json.loads((inventory_dir() / "hosts.json").read_text())
    return {
        name: host
        for group in inventory["all"]["children"].values()
        for name, host in group.get("hosts", {}).items()
    }


@dataclass
class Stack:
    # The public URL (127.0.0.1, published) and the load balancer's private address as the
    # admin network reaches it: the only place /metrics, /readyz and X-Served-By are served.
    url: str
    ops_url: str
    tokens: dict[str, str]

    @property
    def token(self) -> str:
        """The catalogue manager's token: every scope."""
        return self.tokens["admin"]

    def session(self, client: str = "admin") -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.tokens[client]}"
        return session

    def wait_ready(self, expect: str = "ready", timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            try:
                response = requests.get(f"{self.ops_url}/readyz", timeout=3)
                body = response.json()
                if body.get("status") == expect:
                    return body
            except (requests.RequestException, ValueError):
                pass
            time.sleep(1)
        raise AssertionError(f"/readyz never said {expect!r}; last answer: {body}")


@pytest.fixture(scope="session")
def stack() -> Stack:
    up = run("bash", "scripts/stack.sh", "up", timeout=2400)
    url = up.stdout.strip().splitlines()[-1].removesuffix("/api/v1/products")
    lb_address = inventory_hosts()[instance("lb")]["private_ip"]
    yield Stack(url=url, ops_url=f"http://{lb_address}", tokens=vault_view("api-tokens.yml"))
    if os.environ.get("FF_KEEP_STACK") != "1":
        run("bash", "scripts/stack.sh", "down", timeout=600, check=False)


@dataclass
class Load:
    """A bounded load of GETs from a few threads: at most `limit` requests and
    `seconds` of wall time, whichever comes first."""

    url: str
    threads: int = 8
    limit: int = 4000
    seconds: float = 120
    statuses: Counter = field(default_factory=Counter)
    errors: list = field(default_factory=list)
    versions: Counter = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sent: int = 0

    def _worker(self) -> None:
        session = requests.Session()
        deadline = time.monotonic() + self.seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self._sent >= self.limit:
                    return
                self._sent += 1
            try:
                response = session.get(self.url, timeout=10)
                with self._lock:
                    self.statuses[response.status_code] += 1
                    self.versions[response.headers.get("X-App-Version")] += 1
            except requests.RequestException as exc:
                with self._lock:
                    self.errors.append(repr(exc))

    def __enter__(self) -> Load:
        self._pool = [threading.Thread(target=self._worker) for _ in range(self.threads)]
        for thread in self._pool:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._pool:
            thread.join()

    @property
    def failed(self) -> int:
        """Every request that did not get a 200: errors, 5xx, and 429s too."""
        return len(self.errors) + sum(n for status, n in self.statuses.items() if status != 200)

    def summary(self) -> str:
        return json.dumps(
            {"statuses": dict(self.statuses), "errors": self.errors[:5], "sent": self._sent}
        )
