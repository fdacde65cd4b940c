"""make bench: bounded load against a local stack of its own, through 127.0.0.1.

One run, on one machine, measures
  - the ceilings: nginx's fixed 200 on the load balancer, a bare Gunicorn
    worker's constant response, and Flask's /healthz through the same
    nginx -> Gunicorn path as the API;
  - through the stack: a cached product GET, an uncached product GET (the
    replica, each request a product no one read since Redis was flushed) and
    an order POST (the primary), at a fixed concurrency (closed loop, wrk: its
    req/s is the scenario's max) and over a sweep of concurrencies;
  - latency at a fixed arrival rate: each scenario but the ceilings driven open
    loop (vegeta) at shares of its max (--open-rates, default 25,50,75%);
  - what TLS at the edge costs: the cached GET and the order POST again over
    HTTPS to the same load balancer (keepalive, as wrk keeps its connections);
  - the naive baseline: the Flask development server, no cache, no pool, one
    connection per request to the primary, same rows;
  - the worker tier: confirmations per second and the queue lag (order committed to
    order confirmed, p50/p99) at a steady order rate, and the rate at which the workers
    drained the order scenario's backlog;
  - deploy figures: a cold `make up`, a no-change `make up`, one deploy.yml;
and writes bench/results/<date>[-label].json, .md and .png. Every figure also
appears as a ratio to its ceiling, so runs on different machines compare, and
with the CPU steal of its measurement (time a shared host's hypervisor gave
other guests), so a figure taken on a starved machine says so.

All traffic goes to 127.0.0.1: the stack's published port and two ports the
run publishes from an app instance (LXD proxy devices) for the bare Gunicorn
and the naive server, removed afterwards. Every load is bounded by its
generator's duration (wrk's -d, vegeta's -duration) and a subprocess timeout.

The parts: the stack is driven by scripts/stacklib.py (shared with the stack
tests), what the loads need on it and the scenarios are in scenarios.py, the
wrk loads in load.py, the vegeta loads in openloop.py, py-spy profiling in
pyspy.py, the results files in report.py, the worker tier's figure in
worker.py; this file runs them in order.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import report
from load import cache_counts
from openloop import open_loop
from pyspy import profile
from scenarios import (
    SCENARIO_KEYS,
    AuxServers,
    EdgeTLS,
    answers_200,
    bench_scenarios,
    first_app,
    seed,
)
from stacklib import ROOT, STACK_SH, Stack, StackError, log, recap_changed
from worker import now, worker_figure

RESULTS = ROOT / "bench" / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--stack", default="ff-bench", help="stack name (default ff-bench)")
    parser.add_argument("--port", type=int, default=8093, help="its port on 127.0.0.1")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sweep", type=whole_numbers, default="1,8,32,64,128")
    parser.add_argument("--sweep-seconds", type=int, default=5)
    parser.add_argument(
        "--open-rates",
        type=whole_numbers,
        default="25,50,75",
        help="open-loop rates, %% of each scenario's max req/s ('' for none)",
    )
    parser.add_argument("--open-seconds", type=int, default=10, help="per open-loop figure")
    parser.add_argument("--order-rate", type=float, default=20, help="orders/s, worker figure")
    parser.add_argument("--order-seconds", type=int, default=30, help="its duration")
    parser.add_argument("--label", default="", help="suffix of the result files, e.g. before")
    parser.add_argument(
        "--reuse", action="store_true", help="use the running bench stack; skip the deploy figures"
    )
    parser.add_argument("--keep", action="store_true", help="leave the bench stack running")
    parser.add_argument(
        "--profile",
        default="uncached_get,order_post",
        help="comma-separated scenarios to profile with py-spy after measuring ('' for none)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios only, e.g. hello,order_post: a quick look (printed, no "
        "result files) unless --label names its result files",
    )
    parser.add_argument(
        "--render", metavar="JSON", help="only rewrite the .md and .png of an earlier results file"
    )
    args = parser.parse_args()
    if args.render:
        return args
    unknown = sorted(
        {key for key in f"{args.only},{args.profile}".split(",") if key} - set(SCENARIO_KEYS)
    )
    if unknown:
        parser.error(f"unknown scenarios {unknown}: choose from {', '.join(SCENARIO_KEYS)}")
    if not (
        1 <= args.seconds <= 120
        and all(1 <= c <= 1024 for c in [args.connections, *args.sweep])
        and all(1 <= pct <= 100 for pct in args.open_rates)
        and 1 <= args.open_seconds <= 120
        and 0 < args.order_rate <= 200
        and 1 <= args.order_seconds <= 300
    ):
        parser.error(
            "seconds must be 1-120, connections 1-1024, open-rates 1-100 (%), open-seconds "
            "1-120, order-rate 0-200 and order-seconds 1-300"
        )
    return args


def whole_numbers(text: str) -> list[int]:
    """A comma-separated list of whole numbers, e.g. 25,50,75 ('' for none)."""
    try:
        return [int(number) for number in text.split(",") if number.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of whole numbers, e.g. 25,50,75"
        ) from None


def cpu_times() -> tuple[int, int]:
    """(steal, total) ticks of this machine's CPUs so far (/proc/stat's first line: user nice
    system idle iowait irq softirq steal; guest time is inside user already)."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return ticks[7], sum(ticks)


def steal_since(before: tuple[int, int]) -> float:
    """The share of CPU time the hypervisor gave to other guests since `before`: on a shared
    cloud host it takes the cores the figures were measured on, so each figure carries it."""
    steal, total = (after - then for after, then in zip(cpu_times(), before, strict=True))
    return round(steal / total, 4) if total else 0.0


def run_scenarios(scenarios, args, stack: Stack) -> dict:
    """Each scenario's figures: at the fixed concurrency (closed loop), open loop at
    args.open_rates of that figure's req/s, then over the sweep."""
    results = {}
    for scenario in scenarios:
        log(f"{scenario.title}: {args.connections} connections, {args.seconds} s")
        before = cache_counts(stack) if scenario.kind == "stack" else None
        ticks = cpu_times()
        fixed = scenario.measure(args.connections, args.seconds, args.warmup)
        fixed["cpu_steal"] = steal_since(ticks)
        if before is not None:
            after = cache_counts(stack)
            hits = after.get("hit", 0) - before.get("hit", 0)
            misses = after.get("miss", 0) - before.get("miss", 0)
            if hits + misses:
                fixed["cache_hit_ratio"] = round(hits / (hits + misses), 4)
        log(
            f"  {fixed['rps']:.0f} req/s, p50 {fixed['p50_ms']:.1f} ms, "
            f"p99 {fixed['p99_ms']:.1f} ms, errors {fixed['errors']}, "
            f"CPU steal {fixed['cpu_steal']:.0%}"
        )
        entry = {
            "title": scenario.title,
            "kind": scenario.kind,
            "fixed": fixed,
            "open": [],
            "sweep": [],
        }
        # The ceilings are the references the ratios divide by: no target concerns their
        # latency, and at shares of nginx's max vegeta's own CPU would be what is measured.
        if scenario.kind != "ceiling":
            for pct in args.open_rates:
                rate = max(1, round(fixed["rps"] * pct / 100))
                ticks = cpu_times()
                point = {
                    "rate_pct": pct,
                    **open_loop(scenario, rate, args.open_seconds, args.warmup),
                    "cpu_steal": steal_since(ticks),
                }
                log(
                    f"  open loop {pct}% = {rate}/s: {point['achieved_rps']:.0f} req/s, "
                    f"p50 {point['p50_ms']:.1f} ms, p99 {point['p99_ms']:.1f} ms, "
                    f"p99.9 {point['p999_ms']:.1f} ms, errors {point['errors']} {point['status']}, "
                    f"CPU steal {point['cpu_steal']:.0%}"
                )
                entry["open"].append(point)
        if scenario.sweep:
            for connections in args.sweep:
                point = scenario.measure(connections, args.sweep_seconds, 1)
                log(f"  c={connections}: {point['rps']:.0f} req/s, p99 {point['p99_ms']:.1f} ms")
                entry["sweep"].append(point)
        results[scenario.key] = entry
    return results


def deploy_figures(stack: Stack) -> dict:
    """A cold `make up` (removing any earlier stack first), a no-change `make up` and one
    rolling deploy.yml of a new release, timed."""
    deploy: dict = {}
    log(f"cold make up of stack {stack.name} (removing any earlier one first)")
    stack.timed(*STACK_SH, "down")
    deploy["cold_make_up_s"] = round(stack.timed("make", "--no-print-directory", "up"), 1)
    log("no-change make up")
    deploy["nochange_make_up_s"] = round(stack.timed("make", "--no-print-directory", "up"), 1)
    deploy["nochange_changed"] = sum(recap_changed((stack.state / "site.log").read_text()).values())
    release = f"0.1.0+bench{int(time.time())}"
    log(f"deploy.yml of {release}")
    stack.run("bash", ROOT / "scripts" / "release.sh", release, timeout=600)
    deploy["deploy_s"] = round(
        stack.timed(*STACK_SH, "ansible-playbook", "deploy.yml", "-e", f"deploy_release={release}"),
        1,
    )
    apps = len(stack.groups()["app"])
    log(f"make scale: one app node more ({apps + 1}), then back to {apps}")
    deploy["scale_out_s"] = round(stack.timed(*STACK_SH, "scale", str(apps + 1)), 1)
    deploy["scale_in_s"] = round(stack.timed(*STACK_SH, "scale", str(apps)), 1)
    return deploy


def describe(args, stack: Stack, deploy: dict, results: dict) -> dict:
    """The report: this machine, the stack, the settings, the deploy figures and the results."""
    workers = stack.lxc_exec(
        first_app(stack), "systemctl", "show", "flaskfleet.service", "-p", "Environment", "--value"
    ).stdout
    described = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "label": args.label,
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": round(
                os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
            ),
            "wrk": stack.run("wrk", "--version", check=False).stdout.split("\n")[0].strip(),
        },
        "stack": {
            "name": stack.name,
            "app_nodes": len(stack.groups()["app"]),
            "gunicorn": " ".join(w for w in workers.split() if w.startswith("GUNICORN_")),
        },
        "settings": {
            "connections": args.connections,
            "seconds": args.seconds,
            "warmup_seconds": args.warmup,
            "sweep": args.sweep,
            "sweep_seconds": args.sweep_seconds,
            "open_rates_pct": args.open_rates,
            "open_seconds": args.open_seconds,
        },
        "deploy": deploy,
        "results": results,
    }
    if args.open_rates:
        # "Version: v12.13.0" (scripts/setup-vegeta.sh stamps it)
        version = stack.run("vegeta", "-version").stdout.split()[1]
        described["machine"]["vegeta"] = f"vegeta {version}"
    described["targets"] = report.verdicts(results, args.connections)
    return described


def main() -> None:
    args = parse_args()
    if args.render:
        report.render(Path(args.render))
        return
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (make bench installs it)")
    if args.open_rates and not shutil.which("vegeta"):
        raise SystemExit("vegeta is not on PATH (make bench builds it into .tools/)")

    stack = Stack(args.stack, args.port)
    if args.reuse and stack.exists():
        log(f"reusing stack {stack.name} on {stack.url}")
        deploy: dict = {}
    else:
        deploy = deploy_figures(stack)
    profiled = [key for key in args.profile.split(",") if key]
    try:
        secrets, tokens = stack.vault_view(), stack.tokens
        first, last = seed(stack)
        scenarios_started = now(stack)
        nonce = f"bench{int(time.time())}"
        with AuxServers(stack) as aux, EdgeTLS(stack) as edge:
            answers_200(aux.url("bench-gunicorn") + "/", 60)
            answers_200(f"{aux.url('bench-naive')}/api/v1/products/{first}", 60)
            chosen = bench_scenarios(stack, aux, edge, (first, last), secrets, tokens, nonce)
            if args.only:
                wanted = set(args.only.split(","))
                chosen = [scenario for scenario in chosen if scenario.key in wanted]
            if args.only and not args.label:
                run_scenarios(chosen, args, stack)
                for scenario in chosen:
                    if scenario.key in profiled:
                        print(profile(stack, scenario, args.connections))
                return
            ticks = cpu_times()
            results = run_scenarios(chosen, args, stack)
            scenarios_steal = steal_since(ticks)
            profiles = {
                scenario.key: profile(stack, scenario, args.connections)
                for scenario in chosen
                if scenario.key in profiled
            }
        # The worker tier's figure belongs to a whole run, not to chosen scenarios.
        workers = (
            None
            if args.only
            else worker_figure(stack, first, args.order_rate, args.order_seconds, scenarios_started)
        )
        report.ratios(results)
        described = describe(args, stack, deploy, results)
        described["worker"] = workers
        described["only"] = sorted(wanted) if args.only else []
        described["machine"]["cpu_steal_scenarios"] = scenarios_steal
    finally:
        if not args.keep:
            log(f"removing stack {stack.name}")
            stack.timed(*STACK_SH, "down")
    stem = described["date"][:10] + (f"-{args.label}" if args.label else "")
    report.write(described, profiles, RESULTS, stem)
    print(report.markdown(described))
    log(f"results: bench/results/{stem}.json, .md, .png")


if __name__ == "__main__":
    try:
        main()
    except StackError as failure:
        raise SystemExit(str(failure)) from None
