"""The report of a run: ratios to the ceilings, the targets met or missed, and the files
bench/results/<stem>.json, .md (tables) and .png (throughput, the open loop's p99 by rate,
and the sweep's throughput and p99), plus <stem>-profile-<scenario>.txt for each profile."""

from __future__ import annotations

import json
from pathlib import Path

# What round two of the performance work asks of the stack (reported, never asserted):
# a scenario's req/s at the fixed concurrency as a share of a ceiling measured in the same
# run, (scenario, ceiling, share). Its latency targets are open loop (below): a p99 at 64
# closed-loop connections measures the load generator's queue.
SHARE_TARGETS = [
    ("cached_get", "nginx_ceiling", 0.70),
    ("uncached_get", "hello", 0.60),
    ("order_post", "hello", 0.45),
]
SPEEDUP_TARGET = 5.0
# And open loop: at OPEN_TARGET_PCT % of each stack scenario's max req/s, p99 under
# OPEN_P99_MS (the cached GETs: OPEN_CACHED_P99_MS) and no errors. The naive baseline is
# measured there too, as the contrast, not judged.
OPEN_TARGET_PCT = 50
OPEN_P99_MS = 50.0
OPEN_CACHED_P99_MS = {"cached_get": 10.0, "cached_get_https": 10.0}
# A p99 is the p99 at a rate only if vegeta held it: its achieved rate at least this share.
OPEN_RATE_HELD = 0.95


# The ceilings the ratios divide by: ratio name -> scenario.
CEILINGS = {"ratio_to_nginx": "nginx_ceiling", "ratio_to_hello": "hello"}


def ratios(results: dict) -> None:
    """Each figure's share of the ceilings measured in the same run (a run of chosen scenarios,
    make bench --only, may have left them out)."""
    for ratio, ceiling in CEILINGS.items():
        if ceiling in results:
            top = results[ceiling]["fixed"]["rps"]
            for entry in results.values():
                entry["fixed"][ratio] = round(entry["fixed"]["rps"] / top, 4)


def ratio_text(fixed: dict, ratio: str) -> str:
    return f"{fixed[ratio]:.0%}" if ratio in fixed else ""


def verdicts(results: dict, connections: int) -> list[dict]:
    """The targets whose scenarios the run measured (all of them unless make bench --only)."""
    out = []
    for key, ceiling, target_share in SHARE_TARGETS:
        if key not in results or ceiling not in results:
            continue
        fixed, top = results[key]["fixed"], results[ceiling]
        measured = fixed["rps"] / top["fixed"]["rps"]
        out.append(
            {
                "target": f"{results[key]['title']}: >= {target_share:.0%} of {top['title']}'s "
                f"req/s at {connections} connections, no errors",
                "measured": f"{measured:.0%} ({fixed['rps']:.0f} / {top['fixed']['rps']:.0f} "
                f"req/s), {fixed['errors']} errors",
                "met": measured >= target_share and fixed["errors"] == 0,
            }
        )
    naive = results["naive_get"]["fixed"]["rps"] if "naive_get" in results else None
    for key in ("cached_get", "uncached_get") if naive else ():
        if key not in results:
            continue
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
    for key, entry in results.items():
        if entry["kind"] != "stack":
            continue
        p99 = OPEN_CACHED_P99_MS.get(key, OPEN_P99_MS)
        target = (
            f"{entry['title']}: at {OPEN_TARGET_PCT}% of its max req/s (open loop), "
            f"p99 < {p99:g} ms, no errors"
        )
        point = next((p for p in entry["open"] if p["rate_pct"] == OPEN_TARGET_PCT), None)
        if point is None:
            out.append(
                {
                    "target": target,
                    "measured": f"not measured (no {OPEN_TARGET_PCT}% rate)",
                    "met": False,
                }
            )
            continue
        held = point["achieved_rps"] >= OPEN_RATE_HELD * point["target_rps"]
        out.append(
            {
                "target": target,
                "measured": f"p99 {point['p99_ms']:.1f} ms at {point['achieved_rps']:.0f} of "
                f"{point['target_rps']} req/s, {point['errors']} errors"
                + ("" if held else f" (rate not held: under {OPEN_RATE_HELD:.0%} of it)"),
                "met": held and point["p99_ms"] < p99 and point["errors"] == 0,
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
    ]
    if report.get("only"):
        lines.append(
            f"\nOnly these scenarios (make bench --only): {', '.join(report['only'])}; the ratios "
            "and targets need the ceilings and scenarios they name."
        )
    steal = report["machine"].get("cpu_steal_scenarios")
    if steal is not None:
        # A shared cloud host's hypervisor takes CPU time from the guest: the figures were
        # measured on what was left, and a scenario measured while more was taken reads low.
        lines.append(
            f"\nCPU steal while the scenarios ran: {steal:.0%} of this machine's CPU time went to "
            "other guests (per figure: the steal column)."
        )
    lines += [
        "",
        "| scenario | req/s | vs nginx | vs hello | p50 ms | p99 ms | errors | app cache hits "
        "| CPU steal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in report["results"].values():
        f = entry["fixed"]
        hits = f"{f['cache_hit_ratio']:.0%}" if "cache_hit_ratio" in f else ""
        stolen = f"{f['cpu_steal']:.0%}" if "cpu_steal" in f else ""
        lines.append(
            f"| {entry['title']} | {f['rps']:.0f} | {ratio_text(f, 'ratio_to_nginx')} | "
            f"{ratio_text(f, 'ratio_to_hello')} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | "
            f"{f['errors']} | {hits} | {stolen} |"
        )
    results = report["results"]
    for plain, tls in (("cached_get", "cached_get_https"), ("order_post", "order_post_https")):
        if plain in results and tls in results:
            a, b = results[plain]["fixed"], results[tls]["fixed"]
            lines.append(
                f"\nEdge TLS, {results[plain]['title']}: {b['rps'] / a['rps']:.0%} of the HTTP "
                f"req/s over HTTPS, p99 {a['p99_ms']:.1f} -> {b['p99_ms']:.1f} ms."
            )
    if "uncached_get" in results and "uncached_get_redis_blackholed" in results:
        a, b = results["uncached_get"]["fixed"], results["uncached_get_redis_blackholed"]["fixed"]
        lines.append(
            f"\nRedis blackholed (circuit breakers): uncached GET p99 {a['p99_ms']:.1f} ms healthy,"
            f" {b['p99_ms']:.1f} ms with Redis dropping packets ({b['errors']} errors)."
        )
    if "order_post" in results and "order_post_synchronous" in results:
        a, b = results["order_post"]["fixed"], results["order_post_synchronous"]["fixed"]
        lines.append(
            f"\nSynchronous replication, order POST: {b['rps'] / a['rps']:.0%} of the asynchronous "
            f"req/s, p50 {a['p50_ms']:.1f} -> {b['p50_ms']:.1f} ms, p99 {a['p99_ms']:.1f} -> "
            f"{b['p99_ms']:.1f} ms."
        )
    lines += open_loop_table(report)
    if report["targets"]:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
    for verdict in report["targets"]:
        lines.append(
            f"| {verdict['target']} | {verdict['measured']} | {'yes' if verdict['met'] else 'NO'} |"
        )
    worker = report.get("worker")
    if worker:
        lines += [
            "",
            f"Worker tier: {worker['offered_rate']:g} orders/s for {worker['seconds']} s "
            f"({worker['confirmed']} of {worker['orders']} orders confirmed).",
            "",
            "| confirmations/s | queue lag p50 ms | p99 ms | max ms | backlog drained at /s |",
            "|---:|---:|---:|---:|---:|",
            f"| {worker['confirmations_per_s']:.1f} | {worker['lag_p50_ms']:.0f} | "
            f"{worker['lag_p99_ms']:.0f} | {worker['lag_max_ms']:.0f} | "
            f"{worker['backlog_drain_per_s']:.0f} ({worker['backlog_orders']} orders) |",
        ]
    deploy = report.get("deploy") or {}
    if deploy:
        lines += ["", "| deploy | wall time s | vs cold make up |", "|---|---:|---:|"]
        cold = deploy.get("cold_make_up_s")
        for key, title in [
            ("cold_make_up_s", "cold `make up` (tools cached; VMs, site.yml, smoke)"),
            ("nochange_make_up_s", "no-change `make up`"),
            ("deploy_s", "one `deploy.yml` (2 nodes, rolling)"),
            ("scale_out_s", "`make scale`: one app node added (configured, proven ready, routed)"),
            ("scale_in_s", "`make scale`: that node drained and removed"),
        ]:
            if key in deploy:
                share = f"{deploy[key] / cold:.0%}" if cold else ""
                lines.append(f"| {title} | {deploy[key]:.0f} | {share} |")
        if "nochange_changed" in deploy:
            lines.append("")
            lines.append(f"No-change `make up`: Ansible changed={deploy['nochange_changed']}.")
    return "\n".join(lines) + "\n"


def open_loop_table(report: dict) -> list[str]:
    """Lines of the open-loop section; none for a run from before it."""
    measured = {key: e for key, e in report["results"].items() if e.get("open")}
    if not measured:
        return []
    settings = report["settings"]
    lines = [
        "",
        "## Latency at a fixed arrival rate (open loop, vegeta)",
        "",
        f"Each scenario at shares of its max (its req/s at {settings['connections']} connections "
        f"above), {settings['open_seconds']} s per rate, requests sent on vegeta's schedule "
        "whether or not the replies are in. The ceilings are not driven open loop: they are "
        "the references, and no target concerns their latency.",
        "",
        "| scenario | % of max | target req/s | achieved req/s | p50 ms | p99 ms | p99.9 ms "
        "| max ms | errors | status codes | CPU steal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for entry in measured.values():
        for p in entry["open"]:
            codes = ", ".join(f"{code}: {count}" for code, count in p["status"].items())
            stolen = f"{p['cpu_steal']:.0%}" if "cpu_steal" in p else ""
            lines.append(
                f"| {entry['title']} | {p['rate_pct']}% | {p['target_rps']} | "
                f"{p['achieved_rps']:.0f} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} | "
                f"{p['p999_ms']:.1f} | {p['max_ms']:.1f} | {p['errors']} | {codes} | {stolen} |"
            )
    return lines


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, ((bars, opened), (sweep, tail)) = plt.subplots(2, 2, figsize=(16, 10.4))
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
        of_hello = f" ({ratio_text(f, 'ratio_to_hello')} of hello)" if "ratio_to_hello" in f else ""
        bars.text(f["rps"], i, f" {f['rps']:.0f}{of_hello}", va="center", fontsize=8)
    # From 1 req/s: a log axis left to itself starts at the smallest bar, which then shows none.
    bars.set_xlim(left=1, right=max(results[k]["fixed"]["rps"] for k in keys) * 40)
    for k in keys:
        points = results[k].get("open")
        if not points:
            continue
        style = "--" if results[k]["kind"] == "baseline" else "-"
        opened.plot(
            [p["rate_pct"] for p in points],
            [p["p99_ms"] for p in points],
            style,
            marker="o",
            label=results[k]["title"],
        )
    if opened.lines:
        opened.axhline(OPEN_P99_MS, color="#555555", linestyle=":", linewidth=1)
        opened.axhline(
            min(OPEN_CACHED_P99_MS.values()), color="#555555", linestyle=":", linewidth=1
        )
        opened.axvline(OPEN_TARGET_PCT, color="#555555", linestyle=":", linewidth=1)
        opened.set_yscale("log")
        opened.set_xlabel("arrival rate, % of the scenario's max req/s")
        opened.set_ylabel("p99 latency, ms")
        opened.grid(True, alpha=0.3)
        opened.legend(fontsize=8)
    else:
        opened.set_axis_off()
        opened.text(0.5, 0.5, "no open-loop figures in this run", ha="center")
    opened.set_title(
        f"Open loop (vegeta): p99 at a fixed rate (dotted: targets at {OPEN_TARGET_PCT}%)"
    )
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
    sweep.set_title("Closed loop (wrk), concurrency sweep: throughput")
    tail.set_title("Closed loop (wrk), concurrency sweep: p99 latency")
    tail.set_yscale("log")
    sweep.set_yscale("log")
    sweep.legend(fontsize=8)
    fig.suptitle(f"flaskfleet make bench {report['date']} {report['label'] or ''}".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(report: dict, profiles: dict[str, str], out: Path, stem: str) -> None:
    out.mkdir(exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(report))
    chart(report, out / f"{stem}.png")
    for key, text in profiles.items():
        (out / f"{stem}-profile-{key}.txt").write_text(text)


def render(source: Path) -> None:
    """Rewrite the .md and .png next to an earlier results file."""
    report = json.loads(source.read_text())
    source.with_suffix(".md").write_text(markdown(report))
    chart(report, source.with_suffix(".png"))
