"""The loads: wrk runs of bench/wrk/bench.lua, each bounded by its duration (-d) and a
subprocess timeout, and the scenarios they measure at a fixed concurrency and over a sweep."""

from __future__ import annotations

import json
import os
import re
from contextlib import nullcontext
from pathlib import Path

from stacklib import Stack, StackError, log, run

LUA = Path(__file__).resolve().parent / "wrk" / "bench.lua"


def wrk(url: str, connections: int, seconds: int, *args: str, token: str = "") -> dict:
    """A wrk run of bench.lua; an API client's token reaches the script in its environment
    (FF_BENCH_TOKEN), never on wrk's command line."""
    threads = min(2, connections)
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
        with self.around() if self.around else nullcontext():
            if self.before:
                self.before()
            if warmup:
                wrk(self.url, connections, warmup, *self.args, token=self.token)
                if self.before:
                    self.before()
            return wrk(self.url, connections, seconds, *self.args, token=self.token)


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


def run_scenarios(scenarios, args, stack: Stack) -> dict:
    results = {}
    for scenario in scenarios:
        log(f"{scenario.title}: {args.connections} connections, {args.seconds} s")
        before = cache_counts(stack) if scenario.kind == "stack" else None
        fixed = scenario.measure(args.connections, args.seconds, args.warmup)
        if before is not None:
            after = cache_counts(stack)
            hits = after.get("hit", 0) - before.get("hit", 0)
            misses = after.get("miss", 0) - before.get("miss", 0)
            if hits + misses:
                fixed["cache_hit_ratio"] = round(hits / (hits + misses), 4)
        log(
            f"  {fixed['rps']:.0f} req/s, p50 {fixed['p50_ms']:.1f} ms, "
            f"p99 {fixed['p99_ms']:.1f} ms, errors {fixed['errors']}"
        )
        entry = {"title": scenario.title, "kind": scenario.kind, "fixed": fixed, "sweep": []}
        if scenario.sweep:
            for connections in args.sweep:
                point = scenario.measure(connections, args.sweep_seconds, 1)
                log(f"  c={connections}: {point['rps']:.0f} req/s, p99 {point['p99_ms']:.1f} ms")
                entry["sweep"].append(point)
        results[scenario.key] = entry
    return results
