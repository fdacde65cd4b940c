"""The whole stack, end to end through 127.0.0.1: a stack of its own (FF_STACK,
default ff-test, on FF_HTTP_PORT, default 8091) so a developer's `make up` stack is
never touched. `make up` brings it up; the session ends with `make down` unless
FF_KEEP_STACK=1. The stack is driven by scripts/stacklib.py, which make bench shares, with
its steady order load and its wait for confirmations."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from stacklib import (
    ROOT,
    STACK_SH,
    OrderLoad,
    Stack,
    recap_changed,
    wait_for,
    wait_until_confirmed,
)

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
database_members = driver.database_members
leader = driver.leader
replica = driver.replica
vault_view = driver.vault_view
inventory_dir = driver.inventory_dir
inventory_hosts = driver.inventory_hosts
inventory_groups = driver.groups

__all__ = [
    "LOG_DIR",
    "ROOT",
    "STACK_SH",
    "Load",
    "OrderLoad",
    "database_members",
    "instance",
    "inventory_dir",
    "inventory_groups",
    "inventory_hosts",
    "leader",
    "lxc",
    "playbook",
    "psql",
    "recap_changed",
    "replica",
    "run",
    "vault_view",
    "wait_for",
    "wait_until_confirmed",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "scale: make scale under load (make test-scale; not in make test yet)"
    )


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The stack, up: its url, ops_url, tokens, session(client) and wait_ready()."""
    if not driver.exists():
        # Not a stack kept from an earlier session (FF_KEEP_STACK=1): clear whatever
        # LXD still holds under this test stack's names from a run that lost its
        # state (a deleted clone), which would stop `up`.
        driver.run(*STACK_SH, "down", timeout=600)
    driver.run(*STACK_SH, "up", timeout=2400)
    # Read now, so that a stack without its inventory or tokens fails the session's setup
    # once rather than every test.
    assert driver.ops_url and driver.tokens
    # scripts/run-tests.sh starts the Molecule scenarios once the stack is up.
    if up_file := os.environ.get("FF_STACK_UP_FILE"):
        Path(up_file).touch()
    yield driver
    if os.environ.get("FF_KEEP_STACK") != "1":
        # A stack the session cannot remove is an error of the session, not left silently.
        driver.run(*STACK_SH, "down", timeout=600)


@dataclass
class Load:
    """A bounded load of GETs from a few threads: at most `limit` requests and
    `seconds` of wall time, whichever comes first. `url` is one URL, or a function
    returning the next one (reads that must miss every cache). With `rate`, the
    threads send that many requests a second between them, each at its time,
    instead of each sending its next as soon as the last is answered: a long
    test's reads keep coming without taking the CPU the stack needs."""

    url: str | Callable[[], str]
    threads: int = 8
    limit: int = 4000
    seconds: float = 120
    timeout: float = 10
    rate: float | None = None
    statuses: Counter = field(default_factory=Counter)
    errors: list = field(default_factory=list)
    versions: Counter = field(default_factory=Counter)
    reconnects: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sent: int = 0
    _started: float = 0.0

    def _worker(self) -> None:
        session = requests.Session()
        deadline = time.monotonic() + self.seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self._sent >= self.limit:
                    return
                due = self._started + self._sent / self.rate if self.rate else 0
                self._sent += 1
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            url = self.url() if callable(self.url) else self.url
            try:
                try:
                    response = session.get(url, timeout=self.timeout)
                except requests.ConnectionError as exc:
                    # A keep-alive connection nginx closed while idle (each reload does) may fail
                    # the next request sent on it before any answer: closed ("RemoteDisconnected")
                    # or, when the request reached the closed socket, reset. Like browsers and
                    # HTTP libraries, retry such a GET once on a new connection (RFC 9110,
                    # 9.2.2); any other error, or a second one, is a failed request.
                    if not any(
                        sign in repr(exc)
                        for sign in ("RemoteDisconnected", "ConnectionResetError(104")
                    ):
                        raise
                    with self._lock:
                        self.reconnects += 1
                    response = session.get(url, timeout=self.timeout)
                with self._lock:
                    self.statuses[response.status_code] += 1
                    self.versions[response.headers.get("X-App-Version")] += 1
            except requests.RequestException as exc:
                with self._lock:
                    self.errors.append(repr(exc))

    def __enter__(self) -> Load:
        self._started = time.monotonic()
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
            {
                "statuses": dict(self.statuses),
                "errors": self.errors[:5],
                "sent": self._sent,
                "retried_on_a_closed_keepalive_connection": self.reconnects,
            }
        )
