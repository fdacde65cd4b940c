"""Profiling: py-spy over every Gunicorn worker of the first app instance while a scenario's
load runs, summed into the hottest functions by own and by total time."""

from __future__ import annotations

import subprocess
import time

from load import Scenario, wrk
from scenarios import AUX_DIR, first_app
from stacklib import ROOT, Stack, log


def profile(stack: Stack, scenario: Scenario, connections: int, seconds: int = 15) -> str:
    """py-spy over every Gunicorn worker of the first app instance while the
    scenario's load runs; returns the hottest functions, by own and by total time."""
    instance = first_app(stack)
    stack.lxc(
        "file",
        "push",
        "--mode",
        "0755",
        ROOT / ".venv" / "bin" / "py-spy",
        f"{instance}/usr/local/bin/py-spy",
    )
    master = stack.lxc_exec(instance, "systemctl", "show", "-P", "MainPID", "flaskfleet.service")
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
    point = wrk(scenario.url, connections, seconds - 3, *scenario.args, token=scenario.token)
    _, err = recorder.communicate(timeout=seconds + 120)
    if recorder.returncode != 0:
        raise SystemExit(f"py-spy failed: {err[-2000:]}")
    raw = stack.lxc_exec(instance, "cat", f"{AUX_DIR}/profile.txt").stdout
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
            f"# py-spy: {scenario.title}, {connections} connections, {instance}, "
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
