"""make bench: bounded load against a local stack of its own, through 127.0.0.1.

One run, on one machine, measures
  - the ceilings: nginx's fixed 200 on the load balancer, a bare Gunicorn
    worker's constant response, and Flask's /healthz through the same
    nginx -> Gunicorn path as the API;
  - through the stack: a cached product GET, an uncached product GET (the
    replica, each request a product no one read since Redis was flushed) and
    an order POST (the primary), at a fixed concurrency and over a sweep;
  - the naive baseline: the Flask development server, no cache, no pool, one
    connection per request to the primary, same rows;
  - deploy figures: a cold `make up`, a no-change `make up`, one deploy.yml;
and writes bench/results/<date>[-label].json, .md and .png. Every figure also
appears as a ratio to its ceiling, so runs on different machines compare.

All traffic goes to 127.0.0.1: the stack's published port and two ports the
run publishes from an app instance (LXD proxy devices) for the bare Gunicorn
and the naive server, removed afterwards. Every load is bounded by wrk's
duration (-d) and a subprocess timeout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
LUA = BENCH / "wrk" / "bench.lua"
APP_DIR = "/opt/flaskfleet"  # app_base_dir
ENV_FILE = "/etc/flaskfleet/flaskfleet.env"  # app_env_file
AUX_DIR = "/opt/flaskfleet-bench"
SEED_PRODUCTS = 60_000

# What the issue asks of the stack, checked (and reported, never asserted) at the
# fixed concurrency: (scenario, share of hello's requests/s, p99 ceiling in ms).
TARGETS = [
    ("cached_get", 0.60, 30.0),
    ("uncached_get", 0.40, 60.0),
    ("order_post", 0.35, 60.0),
]
SPEEDUP_TARGET = 5.0


def log(message: str) -> None:
    print(f"\033[1;34m==>\033[0m {message}", file=sys.stderr, flush=True)


def run(*cmd, timeout=600, check=True, input=None, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(part) for part in cmd],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env=env,
    )
    if check and result.returncode != 0:
        raise SystemExit(
            f"{' '.join(map(str, cmd[:4]))} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


class Stack:
    """The bench's own stack (FF_STACK), driven through scripts/stack.sh."""

    def __init__(self, name: str, port: int):
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "FF_STACK": name, "FF_HTTP_PORT": str(port)}
        self.state = ROOT / ".secrets" / name
        # stack.sh keeps the ff stack's inventory where `ansible-playbook site.yml` finds it.
        local = ROOT / "inventories" / "local"
        self.inventory = local if name == "ff" else self.state / "inventory"

    def script(self, *args, timeout=3600) -> float:
        """Run stack.sh ARGS, stream its progress, return the wall time in seconds."""
        return self._timed(["bash", "scripts/stack.sh", *args], timeout)

    def make(self, target: str, timeout=3600) -> float:
        """`make TARGET` for this stack (FF_STACK, FF_HTTP_PORT), timed."""
        return self._timed(["make", "--no-print-directory", target], timeout)

    def _timed(self, cmd: list[str], timeout: float) -> float:
        start = time.monotonic()
        result = subprocess.run(cmd, cwd=ROOT, env=self.env, timeout=timeout)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode})")
        return time.monotonic() - start

    def exists(self) -> bool:
        return (self.inventory / "hosts.json").exists()

    def hosts(self) -> dict[str, dict[str, str]]:
        """group -> {instance name: private_ip}."""
        inventory = json.loads((self.inventory / "hosts.json").read_text())
        return {
            group: {name: host["private_ip"] for name, host in (spec.get("hosts") or {}).items()}
            for group, spec in inventory["all"]["children"].items()
            if spec.get("hosts")
        }

    def first_app(self) -> str:
        """The app instance that hosts the bench's own servers (and AUX_DIR) and is profiled."""
        return min(self.hosts()["app"])

    def secrets(self, name: str = "vault.yml") -> dict:
        """One of the stack's ansible-vault files, decrypted in memory."""
        plain = run(
            self.venv("ansible-vault"),
            *("view", "--vault-password-file", self.state / "vault-password"),
            self.state / name,
        ).stdout
        return yaml.safe_load(plain)

    @staticmethod
    def venv(tool: str) -> Path:
        return ROOT / ".venv" / "bin" / tool

    def site_changed(self) -> int:
        recap = (self.state / "site.log").read_text().split("PLAY RECAP", 1)[-1]
        return sum(int(n) for n in re.findall(r"changed=(\d+)", recap))


def lxc_exec(instance: str, *cmd, input=None, timeout=300, check=True):
    return run("lxc", "exec", instance, "--", *cmd, input=input, timeout=timeout, check=check)


def http_get(url: str, timeout=5.0) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (127.0.0.1)
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if http_get(url, timeout=3)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer 200 within {seconds:.0f} s")
        time.sleep(0.5)


def psql(stack: Stack, sql: str) -> str:
    primary = next(iter(stack.hosts()["postgres_primary"]))
    return lxc_exec(
        primary,
        *("runuser", "-u", "postgres", "--", "psql", "-d", "flaskfleet"),
        *("-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql),
    ).stdout.strip()


def seed(stack: Stack) -> tuple[int, int]:
    """SEED_PRODUCTS products with stock for any order load; ids FIRST..LAST."""
    log(f"seeding {SEED_PRODUCTS} products (once per stack)")
    insert = (
        "INSERT INTO products (sku, name, description, price_cents, stock) "
        "SELECT 'bench-' || g, 'Bench product ' || g, 'Seeded by make bench', "
        "100 + g % 900, 1000000000 FROM generate_series(1, {count}) g "
        "ON CONFLICT (sku) DO NOTHING"
    )
    psql(stack, insert.format(count=int(SEED_PRODUCTS)))
    first, last, count = (
        int(v)
        for v in psql(
            stack, "SELECT min(id), max(id), count(*) FROM products WHERE sku LIKE 'bench-%'"
        ).split("|")
    )
    if last - first + 1 != count:
        raise SystemExit(f"seeded product ids are not contiguous: {first}..{last}, {count} rows")
    # The replica serves the reads: wait until it has the last row.
    deadline = time.monotonic() + 60
    while http_get(f"{stack.url}/api/v1/products/{last}")[0] != 200:
        if time.monotonic() > deadline:
            raise SystemExit("the seeded products did not reach the API within 60 s")
        time.sleep(1)
    return first, last


class AuxServers:
    """The bare Gunicorn and the naive Flask server on the first app instance,
    each published on 127.0.0.1 by an LXD proxy device, removed on exit."""

    UNITS: ClassVar[dict[str, int]] = {"bench-gunicorn": 8101, "bench-naive": 8102}

    def __init__(self, stack: Stack):
        self.instance = stack.first_app()
        self.ports = {"bench-gunicorn": stack.port + 1, "bench-naive": stack.port + 2}

    def __enter__(self) -> AuxServers:
        log(f"starting the bare Gunicorn and the naive server on {self.instance}")
        self.__exit__()
        lxc_exec(self.instance, "mkdir", "-p", AUX_DIR)
        for name in ("constant_wsgi.py", "naive_app.py"):
            run("lxc", "file", "push", BENCH / "servers" / name, f"{self.instance}{AUX_DIR}/{name}")
        venv = f"{APP_DIR}/current/venv/bin"
        common = ["systemd-run", "-p", "DynamicUser=yes", "-p", f"WorkingDirectory={AUX_DIR}"]
        lxc_exec(
            self.instance,
            *common,
            "--unit=bench-gunicorn",
            *(f"{venv}/gunicorn", "--workers", "1", "--bind", "127.0.0.1:8101"),
            *("--access-logfile", "-", "--log-level", "warning", "constant_wsgi:app"),
        )
        lxc_exec(
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
            run(
                *("lxc", "config", "device", "add", self.instance, unit, "proxy"),
                f"listen=tcp:127.0.0.1:{self.ports[unit]}",
                f"connect=tcp:127.0.0.1:{port}",
                "bind=host",
            )
        return self

    def url(self, unit: str) -> str:
        return f"http://127.0.0.1:{self.ports[unit]}"

    def __exit__(self, *exc) -> None:
        for unit in self.UNITS:
            run("lxc", "config", "device", "remove", self.instance, unit, check=False)
            lxc_exec(self.instance, "systemctl", "stop", unit, check=False)
            lxc_exec(self.instance, "systemctl", "reset-failed", unit, check=False)


def cache_counts(stack: Stack) -> dict[str, float]:
    """flaskfleet_cache_requests_total by result, summed over the app instances."""
    totals: dict[str, float] = {}
    for instance, address in stack.hosts()["app"].items():
        text = lxc_exec(instance, "curl", "-fsS", f"http://{address}:8000/metrics").stdout
        for result, value in re.findall(
            r'^flaskfleet_cache_requests_total\{[^}]*result="(\w+)"[^}]*\} ([0-9.e+]+)$', text, re.M
        ):
            totals[result] = totals.get(result, 0.0) + float(value)
    return totals


def flush_cache(stack: Stack, password: str) -> None:
    """FLUSHDB as Redis' admin user (the app's user may not)."""
    redis = next(iter(stack.hosts()["redis"].items()))
    lxc_exec(
        redis[0],
        *("redis-cli", "--user", "admin", "--askpass", "-h", redis[1], "FLUSHDB"),
        input=password + "\n",
    )


def wrk(url: str, connections: int, seconds: int, *args: str) -> dict:
    threads = min(2, connections)
    result = run(
        "wrk",
        *("-t", threads, "-c", connections, "-d", f"{seconds}s", "--timeout", "5s"),
        *("-s", LUA, url, "--", *(args or ("get",))[:1], threads, *args[1:]),
        timeout=seconds + 60,
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
    def __init__(self, key, title, url, args=(), before=None, kind="stack", sweep=None):
        self.key, self.title, self.url, self.args = key, title, url, args
        self.before, self.kind = before, kind
        self.sweep = kind != "ceiling" if sweep is None else sweep

    def measure(self, connections: int, seconds: int, warmup: int) -> dict:
        if self.before:
            self.before()
        if warmup:
            wrk(self.url, connections, warmup, *self.args)
            if self.before:
                self.before()
        return wrk(self.url, connections, seconds, *self.args)


def profile(stack: Stack, scenario: Scenario, args, seconds: int = 15) -> str:
    """py-spy over every Gunicorn worker of the first app instance while the
    scenario's load runs; returns the hottest functions, by own and by total time."""
    instance = stack.first_app()
    run(
        "lxc",
        "file",
        "push",
        "--mode",
        "0755",
        ROOT / ".venv" / "bin" / "py-spy",
        f"{instance}/usr/local/bin/py-spy",
    )
    master = lxc_exec(instance, "systemctl", "show", "-P", "MainPID", "flaskfleet.service")
    log(f"profiling {scenario.title} on {instance} for {seconds} s (py-spy, all workers)")
    recorder = subprocess.Popen(
        [
            *("lxc", "exec", instance, "--", "/usr/local/bin/py-spy", "record"),
            *("--pid", master.stdout.strip(), "--subprocesses", "--nonblocking"),
            *("--duration", str(seconds), "--rate", "250", "--format", "raw"),
            *("--output", f"{AUX_DIR}/profile.txt"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    point = wrk(scenario.url, args.connections, seconds - 3, *scenario.args)
    _, err = recorder.communicate(timeout=seconds + 120)
    if recorder.returncode != 0:
        raise SystemExit(f"py-spy failed: {err[-2000:]}")
    raw = lxc_exec(instance, "cat", f"{AUX_DIR}/profile.txt").stdout
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [f for f in stack_text.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count

    def top(table: dict[str, int], n: int) -> list[str]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:n]
        return [f"{100 * c / samples:5.1f}%  {frame}" for frame, c in ranked]

    return "\n".join(
        [
            f"# py-spy: {scenario.title}, {args.connections} connections, {instance}, "
            f"{samples} samples of busy workers at 250 Hz",
            f"# load meanwhile: {point['rps']:.0f} req/s, p99 {point['p99_ms']:.1f} ms",
            "",
            "## own time (leaf frames; a worker blocked in recv() on Redis or PostgreSQL counts)",
            *top(own, 25),
            "",
            "## total time (frame anywhere on the stack)",
            *top(total, 40),
            "",
        ]
    )


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


def ratios(results: dict) -> None:
    nginx = results["nginx_ceiling"]["fixed"]["rps"]
    hello = results["hello"]["fixed"]["rps"]
    for entry in results.values():
        fixed = entry["fixed"]
        fixed["ratio_to_nginx"] = round(fixed["rps"] / nginx, 4)
        fixed["ratio_to_hello"] = round(fixed["rps"] / hello, 4)


def verdicts(results: dict, connections: int) -> list[dict]:
    hello = results["hello"]["fixed"]
    out = []
    for key, share, p99 in TARGETS:
        fixed = results[key]["fixed"]
        out.append(
            {
                "target": f"{results[key]['title']}: >= {share:.0%} of hello's req/s, "
                f"p99 < {p99:g} ms at {connections} connections, no errors",
                "measured": f"{fixed['ratio_to_hello']:.0%} of hello "
                f"({fixed['rps']:.0f} / {hello['rps']:.0f} req/s), p99 {fixed['p99_ms']:.1f} ms, "
                f"{fixed['errors']} errors",
                "met": fixed["ratio_to_hello"] >= share
                and fixed["p99_ms"] < p99
                and fixed["errors"] == 0,
            }
        )
    naive = results["naive_get"]["fixed"]["rps"]
    for key in ("cached_get", "uncached_get"):
        rps = results[key]["fixed"]["rps"]
        speedup = rps / naive
        results[key]["fixed"]["speedup_vs_naive"] = round(speedup, 2)
        out.append(
            {
                "target": f"{results[key]['title']}: >= {SPEEDUP_TARGET:g}x the naive baseline",
                "measured": f"{speedup:.1f}x ({rps:.0f} / {naive:.0f} req/s)",
                "met": speedup >= SPEEDUP_TARGET,
            }
        )
    return out


def markdown(report: dict) -> str:
    lines = [
        f"# make bench, {report['date']}" + (f" ({report['label']})" if report["label"] else ""),
        "",
        f"Machine: {report['machine']['cpus']} CPUs, {report['machine']['memory_gib']} GiB; "
        f"stack `{report['stack']['name']}` ({report['stack']['app_nodes']} app nodes, "
        f"Gunicorn {report['stack']['gunicorn']}); wrk, {report['settings']['connections']} "
        f"connections, {report['settings']['seconds']} s per figure.",
        "",
        "| scenario | req/s | vs nginx | vs hello | p50 ms | p99 ms | errors | app cache hits |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in report["results"].values():
        f = entry["fixed"]
        hits = f"{f['cache_hit_ratio']:.0%}" if "cache_hit_ratio" in f else ""
        lines.append(
            f"| {entry['title']} | {f['rps']:.0f} | {f['ratio_to_nginx']:.0%} | "
            f"{f['ratio_to_hello']:.0%} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | "
            f"{f['errors']} | {hits} |"
        )
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for verdict in report["targets"]:
        lines.append(
            f"| {verdict['target']} | {verdict['measured']} | {'yes' if verdict['met'] else 'NO'} |"
        )
    deploy = report.get("deploy") or {}
    if deploy:
        lines += ["", "| deploy | wall time s | vs cold make up |", "|---|---:|---:|"]
        cold = deploy.get("cold_make_up_s")
        for key, title in [
            ("cold_make_up_s", "cold `make up` (tools cached; VMs, site.yml, smoke)"),
            ("nochange_make_up_s", "no-change `make up`"),
            ("deploy_s", "one `deploy.yml` (2 nodes, rolling)"),
        ]:
            if key in deploy:
                share = f"{deploy[key] / cold:.0%}" if cold else ""
                lines.append(f"| {title} | {deploy[key]:.0f} | {share} |")
        if "nochange_changed" in deploy:
            lines.append("")
            lines.append(f"No-change `make up`: Ansible changed={deploy['nochange_changed']}.")
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, (bars, sweep, tail) = plt.subplots(1, 3, figsize=(16, 5.2))
    keys = list(results)
    colours = {"ceiling": "#9e9e9e", "stack": "#1f77b4", "baseline": "#d62728"}
    bars.barh(
        [results[k]["title"] for k in keys],
        [results[k]["fixed"]["rps"] for k in keys],
        color=[colours[results[k]["kind"]] for k in keys],
    )
    bars.invert_yaxis()
    bars.set_xscale("log")
    bars.set_xlabel(f"requests/s at {report['settings']['connections']} connections")
    bars.set_title("Throughput (grey: ceilings, red: naive)")
    for i, k in enumerate(keys):
        f = results[k]["fixed"]
        bars.text(
            f["rps"],
            i,
            f" {f['rps']:.0f} ({f['ratio_to_hello']:.0%} of hello)",
            va="center",
            fontsize=8,
        )
    bars.set_xlim(right=max(results[k]["fixed"]["rps"] for k in keys) * 40)
    for k in keys:
        points = results[k]["sweep"]
        if not points:
            continue
        conns = [p["connections"] for p in points]
        style = "--" if results[k]["kind"] == "baseline" else "-"
        sweep.plot(conns, [p["rps"] for p in points], style, marker="o", label=results[k]["title"])
        tail.plot(
            conns, [p["p99_ms"] for p in points], style, marker="o", label=results[k]["title"]
        )
    for axis, label in ((sweep, "requests/s"), (tail, "p99 latency, ms")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent connections")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    sweep.set_title("Concurrency sweep: throughput")
    tail.set_title("Concurrency sweep: p99 latency")
    tail.set_yscale("log")
    sweep.set_yscale("log")
    sweep.legend(fontsize=8)
    fig.suptitle(f"flaskfleet make bench {report['date']} {report['label'] or ''}".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--stack", default="ffb", help="stack name (default ffb)")
    parser.add_argument("--port", type=int, default=8093, help="its port on 127.0.0.1")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sweep", default="1,8,32,64,128")
    parser.add_argument("--sweep-seconds", type=int, default=5)
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
        help="comma-separated scenarios for a quick look (no result files), e.g. hello,order_post",
    )
    parser.add_argument(
        "--render", metavar="JSON", help="only rewrite the .md and .png of an earlier results file"
    )
    args = parser.parse_args()
    if args.render:
        source = Path(args.render)
        report = json.loads(source.read_text())
        source.with_suffix(".md").write_text(markdown(report))
        chart(report, source.with_suffix(".png"))
        return
    args.sweep = [int(c) for c in args.sweep.split(",")]
    if not (
        1 <= args.seconds <= 120 and all(1 <= c <= 1024 for c in [args.connections, *args.sweep])
    ):
        parser.error("seconds must be 1-120 and connections 1-1024")
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (make bench installs it)")

    stack = Stack(args.stack, args.port)
    deploy: dict = {}
    if args.reuse and stack.exists():
        log(f"reusing stack {stack.name} on {stack.url}")
    else:
        log(f"cold make up of stack {stack.name} (removing any earlier one first)")
        stack.script("down")
        deploy["cold_make_up_s"] = round(stack.make("up"), 1)
        log("no-change make up")
        deploy["nochange_make_up_s"] = round(stack.make("up"), 1)
        deploy["nochange_changed"] = stack.site_changed()
        release = f"0.1.0+bench{int(time.time())}"
        log(f"deploy.yml of {release}")
        run("bash", ROOT / "scripts" / "release.sh", release)
        deploy["deploy_s"] = round(
            stack.script("ansible-playbook", "deploy.yml", "-e", f"app_release={release}"), 1
        )
    try:
        secrets, tokens = stack.secrets(), stack.secrets("api-tokens.yml")
        first, last = seed(stack)
        product = f"{stack.url}/api/v1/products/{first}"
        nonce = f"bench{int(time.time())}"
        with AuxServers(stack) as aux:
            wait_for(aux.url("bench-gunicorn") + "/")
            wait_for(f"{aux.url('bench-naive')}/api/v1/products/{first}")
            scenarios = [
                Scenario(
                    "nginx_ceiling",
                    "nginx fixed 200 (LB)",
                    f"{stack.url}/nginx-health",
                    kind="ceiling",
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
                Scenario("cached_get", "cached product GET", product),
                Scenario(
                    "uncached_get",
                    "uncached product GET (replica)",
                    stack.url,
                    ("walk", first, last),
                    before=lambda: flush_cache(stack, secrets["vault_redis_admin_password"]),
                ),
                Scenario(
                    "order_post",
                    "order POST (primary)",
                    stack.url,
                    ("order", first, first + 999, tokens["shop"], nonce),
                ),
                Scenario(
                    "naive_get",
                    "naive product GET (dev server)",
                    aux.url("bench-naive"),
                    ("walk", first, last),
                    kind="baseline",
                ),
            ]
            if args.only:
                wanted = set(args.only.split(","))
                scenarios = [scenario for scenario in scenarios if scenario.key in wanted]
                run_scenarios(scenarios, args, stack)
                for key in filter(None, args.profile.split(",")):
                    chosen = next(scenario for scenario in scenarios if scenario.key == key)
                    print(profile(stack, chosen, args))
                return
            results = run_scenarios(scenarios, args, stack)
            profiles = {
                scenario.key: profile(stack, scenario, args)
                for scenario in scenarios
                if scenario.key in set(filter(None, args.profile.split(",")))
            }
        ratios(results)
        hosts = stack.hosts()
        workers = lxc_exec(
            stack.first_app(),
            "systemctl",
            "show",
            "flaskfleet.service",
            "-p",
            "Environment",
            "--value",
        ).stdout
        report = {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "label": args.label,
            "machine": {
                "cpus": os.cpu_count(),
                "memory_gib": round(
                    os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
                ),
                "wrk": run("wrk", "--version", check=False).stdout.split("\n")[0].strip(),
            },
            "stack": {
                "name": stack.name,
                "app_nodes": len(hosts["app"]),
                "gunicorn": " ".join(w for w in workers.split() if w.startswith("GUNICORN_")),
            },
            "settings": {
                "connections": args.connections,
                "seconds": args.seconds,
                "warmup_seconds": args.warmup,
                "sweep": args.sweep,
                "sweep_seconds": args.sweep_seconds,
            },
            "deploy": deploy,
            "results": results,
        }
        report["targets"] = verdicts(results, args.connections)
    finally:
        if not args.keep:
            log(f"removing stack {stack.name}")
            stack.script("down")
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    stem = report["date"][:10] + (f"-{args.label}" if args.label else "")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(report))
    chart(report, out / f"{stem}.png")
    for key, text in profiles.items():
        (out / f"{stem}-profile-{key}.txt").write_text(text)
    print(markdown(report))
    log(f"results: bench/results/{stem}.json, .md, .png")


if __name__ == "__main__":
    main()
