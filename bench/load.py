"""The closed-loop loads: wrk runs of bench/wrk/bench.lua, each bounded by its duration (-d)
and a subprocess timeout; the scenarios, and the conditions each load of one runs in (any
generator's: openloop.py's too); the app's cache counters."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from stacklib import Stack, StackError, run

LUA = Path(__file__).resolve().parent / "wrk" / "bench.lua"


def wrk(url: str, connections: int, seconds: int, *args: str, token: str = "") -> dict:
    """A wrk run of bench.lua; an API client's token reaches the script in its environment
    (FF_BENCH_TOKEN), never on wrk's command line."""
    threads = min(2, connections)
    if args[:1] == ("order",):
        # bench.lua numbers its Idempotency-Keys from 1 in every run: without a suffix of its
        # own, a run would replay the warm-up's keys (stored replies, no new orders) and a run
        # with other threads would reuse keys with other bodies (422s).
        args = (*args[:3], f"{args[3]}-{uuid.uuid4().hex[:12]}")
    result = run(
        "wrk",
        *("-t", threads, "-c", connections, "-d", f"{seconds}s", "--timeout", "5s"),
        *("-s", LUA, url, "--", *(args or ("get",))[:1], threads, *args[1:]),
        env={**os.environ, "FF_BENCH_TOKEN": token},
        timeout=seconds + 60,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(
            f"wrk exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    line = next(x for x in result.stdout.splitlines() if x.startswith("WRKJSON "))
    raw = json.loads(line.removeprefix("WRKJSON "))
    errors = sum(raw["errors"].values())
    seconds_measured = raw["duration_us"] / 1e6
    return {
        "connections": connections,
        "seconds": round(seconds_measured, 2),
        "requests": raw["requests"],
        "rps": round(raw["requests"] / seconds_measured, 1),
        "errors": errors,
        "error_detail": raw["errors"],
        "p50_ms": raw["latency_us"]["p50"] / 1000,
        "p90_ms": raw["latency_us"]["p90"] / 1000,
        "p99_ms": raw["latency_us"]["p99"] / 1000,
        "max_ms": raw["latency_us"]["max"] / 1000,
    }


class Scenario:
    """`before` runs before each load (and again after the warm-up); `around`, a context
    manager factory, holds a condition (a dependency blackholed) for the whole measurement."""

    def __init__(
        self, key, title, url, args=(), before=None, kind="stack", sweep=None, token="", around=None
    ):
        self.key, self.title, self.url, self.args, self.token = key, title, url, args, token
        self.before, self.kind, self.around = before, kind, around
        self.sweep = kind != "ceiling" if sweep is None else sweep

    def measure(self, connections: int, seconds: int, warmup: int) -> dict:
        """A closed-loop figure: wrk at `connections`."""
        return self.under(
            lambda duration: wrk(self.url, connections, duration, *self.args, token=self.token),
            seconds,
            warmup,
        )

    def under(self, load: Callable[[int], dict], seconds: int, warmup: int) -> dict:
        """load(seconds)'s figure in this scenario's conditions, whatever the load generator:
        `around` held throughout, `before` ahead of the warm-up load(warmup) (if any) and again
        ahead of the figure."""
        with self.around() if self.around else nullcontext():
            if self.before:
                self.before()
            if warmup:
                load(warmup)
                if self.before:
                    self.before()
            return load(seconds)


def cache_counts(stack: Stack) -> dict[str, float]:
    """flaskfleet_cache_requests_total by result, summed over the app instances."""
    totals: dict[str, float] = {}
    for instance, address in stack.groups()["app"].items():
        text = stack.lxc_exec(instance, "curl", "-fsS", f"http://{address}:8000/metrics").stdout
        for result, value in re.findall(
            r'^flaskfleet_cache_requests_total\{[^}]*result="(\w+)"[^}]*\} ([0-9.e+]+)$', text, re.M
        ):
            totals[result] = totals.get(result, 0.0) + float(value)
    return totals
