"""The whole stack, end to end through 127.0.0.1: a stack of its own (FF_STACK,
default ff-test, on FF_HTTP_PORT, default 8091) so a developer's `make up` stack is
never touched. `make up` brings it up; the session ends with `make down` unless
FF_KEEP_STACK=1. The stack is driven by scripts/stacklib.py, which make bench shares."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from stacklib import STACK_SH, Stack, recap_changed

STACK = os.environ.get("FF_STACK", "ff-test")
PORT = int(os.environ.get("FF_HTTP_PORT", "8091"))
driver = Stack(STACK, PORT)
LOG_DIR = driver.state

# The tests' helpers, each on this session's stack.
run = driver.run
playbook = driver.playbook
lxc = driver.lxc
instance = driver.instance
psql = driver.psql
vault_view = driver.vault_view
inventory_dir = driver.inventory_dir
inventory_hosts = driver.inventory_hosts

__all__ = [
    "LOG_DIR",
    "Load",
    "OrderLoad",
    "instance",
    "inventory_dir",
    "inventory_hosts",
    "lxc",
    "playbook",
    "psql",
    "recap_changed",
    "run",
    "vault_view",
    "wait_until_confirmed",
]


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The stack, up: its url, ops_url, tokens, session(client) and wait_ready()."""
    driver.run(*STACK_SH, "up", timeout=2400)
    # Read now, so that a stack without its inventory or tokens fails the session's setup
    # once rather than every test.
    assert driver.ops_url and driver.tokens
    yield driver
    if os.environ.get("FF_KEEP_STACK") != "1":
        driver.run(*STACK_SH, "down", timeout=600, check=False)


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
