"""Circuit breakers for the dependencies the app can serve without: Redis (the cache) and the
replica. A dependency that drops packets costs every call its full timeout; after
`failures` consecutive failures the breaker opens and callers skip the dependency at once.
When the cool-down has passed, one caller probes it (half-open): success closes the breaker,
failure opens it again for twice the cool-down, up to `max_reset_seconds`, with jitter so that
the processes of a fleet do not probe in step.

Built on fabfuel's `circuitbreaker`, whose call does not hold a lock (pybreaker 1.4 holds its
lock for the whole guarded call, danielfm/pybreaker#55, which would serialise every Redis call
of a Gunicorn worker's threads). Its counters are not thread-safe and it lets every caller
through once the cool-down is over, so this subclass takes a lock around state changes and
admits a single probe.

The rate limiter is not wrapped: flask-limiter already falls back to process memory on the
first storage error and retries Redis after 1, 2, 4 ... 32 s.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from contextlib import contextmanager
from time import monotonic
from typing import TypeVar

from circuitbreaker import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN, CircuitBreaker

from flaskfleet import metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

# The value of flaskfleet_breaker_state for each state (a gauge holds numbers).
STATE_VALUES = {STATE_CLOSED: 0, STATE_HALF_OPEN: 1, STATE_OPEN: 2}


class BreakerOpen(Exception):
    """The breaker is open (or another caller is probing): skip the dependency."""

    def __init__(self, name: str) -> None:
        super().__init__(f"circuit breaker {name} is open")
        self.name = name


class Breaker(CircuitBreaker):
    def __init__(
        self,
        name: str,
        *,
        failures: int,
        reset_seconds: float,
        max_reset_seconds: float,
        expected_exception: type[Exception] | tuple[type[Exception], ...],
    ) -> None:
        if failures < 1 or reset_seconds <= 0 or max_reset_seconds < reset_seconds:
            raise ValueError("need failures >= 1 and 0 < reset_seconds <= max_reset_seconds")
        super().__init__(
            failure_threshold=failures,
            recovery_timeout=reset_seconds,
            expected_exception=expected_exception,
            name=name,
        )
        self._base_reset = reset_seconds
        self._max_reset = max_reset_seconds
        # The cool-down before jitter: doubled per failed probe, back to the base on success.
        self._nominal_reset = reset_seconds
        self._lock = threading.Lock()
        self._probing = False
        self._publish()

    @property
    def reset_seconds(self) -> float:
        """The current cool-down with its jitter (grows while probes fail)."""
        return self._recovery_timeout

    @property
    def open_remaining(self) -> float:
        # The library rounds to whole seconds, which would hide sub-second cool-downs.
        return self._opened + self._recovery_timeout - monotonic()

    def _publish(self) -> None:
        metrics.BREAKER_STATE.labels(self.name).set(STATE_VALUES[self.state])

    def _admit(self) -> bool:
        """May this call go to the dependency? True for a probe while half-open."""
        with self._lock:
            state = self.state
            if state == STATE_CLOSED:
                return False
            if state == STATE_HALF_OPEN and not self._probing:
                self._probing = True
                self._publish()
                return True
        raise BreakerOpen(self.name)

    def _record(self, probe: bool, failed: bool) -> None:
        with self._lock:
            if probe:
                self._probing = False
            if not failed:
                if self._state != STATE_CLOSED:
                    log.info("circuit breaker closed", extra={"breaker": self.name})
                self.reset()
                self._nominal_reset = self._base_reset
            elif probe:
                self._nominal_reset = min(self._nominal_reset * 2, self._max_reset)
                self._open()
            else:
                self._failure_count += 1
                if self._state == STATE_CLOSED and self._failure_count >= self._failure_threshold:
                    self._open()
            self._publish()

    def _open(self) -> None:
        # Jitter downwards only, so max_reset_seconds stays the longest a dependency is skipped.
        self._recovery_timeout = self._nominal_reset * random.uniform(0.75, 1.0)  # noqa: S311 (jitter, not a secret)
        self._state = STATE_OPEN
        self._opened = monotonic()
        metrics.BREAKER_OPENED.labels(self.name).inc()
        log.warning(
            "circuit breaker open",
            extra={
                "breaker": self.name,
                "failures": self._failure_count,
                "cool_down_seconds": round(self._recovery_timeout, 2),
            },
        )

    @contextmanager
    def guard(self):
        """Run the block against the dependency, or raise BreakerOpen without running it."""
        probe = self._admit()
        try:
            yield
        except BaseException as exc:
            self._record(probe, failed=self.is_failure(type(exc), exc))
            raise
        self._record(probe, failed=False)

    def call(self, func: Callable[..., T], *args, **kwargs) -> T:
        with self.guard():
            return func(*args, **kwargs)

    def snapshot(self) -> dict:
        """For /readyz: the state and, when not closed, the seconds until the next probe."""
        with self._lock:
            state = self.state
            result: dict = {"state": state, "consecutive_failures": self._failure_count}
            if state == STATE_OPEN:
                result["probe_in_seconds"] = round(max(self.open_remaining, 0.0), 1)
            return result
