"""The open loop: a scenario's requests sent at a fixed arrival rate by vegeta, which schedules
each request by the clock whether or not earlier replies are in (wrk, the closed loop, sends a
connection's next request only after its reply, so a slow server slows the load down and its
queueing stays out of the latencies). Each run is bounded by vegeta's -duration and a
subprocess timeout.

The requests are bench/wrk/bench.lua's, made here as vegeta's JSON targets and written to its
stdin; an API client's token is only ever in those lines."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import subprocess
import uuid
from urllib.parse import urlsplit

from load import Scenario
from stacklib import ROOT, StackError

TIMEOUT_S = 5  # per request, as wrk's --timeout
# Vegeta adds a worker (one request in flight each) whenever all are busy at a request's due
# time, up to -max-workers; at the cap it waits for a reply, and the loop is closed again. Up to
# rate x TIMEOUT_S workers the schedule never waits until replies time out; the cap bounds the
# connections a stalled stack would otherwise collect (nginx refuses beyond its 2 x 1024
# worker_connections anyway). A capped run shows as an achieved rate below the target.
MAX_WORKERS = 2048
# Beyond -duration: vegeta's start, the replies still in flight, and encoding the results.
MARGIN_S = 60


def _targets(scenario: Scenario, count: int) -> bytes:
    """`count` JSON target lines, the requests bench.lua makes in the scenario's mode: "get"
    the URL; "walk" FIRST LAST a product GET per id in turn; "order" FIRST LAST NONCE a POST of
    one item of a product in turn, as the client of scenario.token, with an Idempotency-Key used
    by no other run."""
    mode, *params = scenario.args or ("get",)
    # As wrk sends no Accept-Encoding, so that nginx does the same work (Go's HTTP client would
    # ask for gzip otherwise).
    header = {"Accept-Encoding": ["identity"]}
    if mode == "get":
        return (
            json.dumps({"method": "GET", "url": scenario.url, "header": header}) + "\n"
        ).encode() * count
    parts = urlsplit(scenario.url)
    origin = f"{parts.scheme}://{parts.netloc}"
    first, last = int(params[0]), int(params[1])
    span = last - first + 1
    if mode == "walk":
        lines = (
            {
                "method": "GET",
                "url": f"{origin}/api/v1/products/{first + i % span}",
                "header": header,
            }
            for i in range(count)
        )
    elif mode == "order":
        # wrk's keys are NONCE-<thread>-<n>; this run's own id keeps these apart from them and
        # from any other open-loop run's (a reused key would be answered from the stored reply).
        keys = f"{params[2]}-open-{uuid.uuid4().hex[:12]}"
        lines = (
            {
                "method": "POST",
                "url": f"{origin}/api/v1/orders",
                "header": {
                    **header,
                    "Content-Type": ["application/json"],
                    "Authorization": [f"Bearer {scenario.token}"],
                    "Idempotency-Key": [f"{keys}-{i + 1}"],
                },
                "body": base64.b64encode(
                    f'{{"items":[{{"product_id":{first + i % span},"quantity":1}}]}}'.encode()
                ).decode(),
            }
            for i in range(count)
        )
    else:
        raise ValueError(f"scenario {scenario.key}: unknown request mode {mode!r}")
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _vegeta(*args: str, stdin: bytes, timeout: float) -> bytes:
    """vegeta ARGS with `stdin`, its stdout; a failure or overrun raises StackError (stdin,
    which may hold a token, is never shown)."""
    try:
        result = subprocess.run(
            ["vegeta", *args],
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StackError(f"vegeta {args[0]} did not end within {timeout:.0f} s") from None
    if result.returncode != 0:
        raise StackError(
            f"vegeta {args[0]} exited {result.returncode}: "
            f"{result.stderr.decode(errors='replace')[-3000:]}"
        )
    return result.stdout


def _percentile(ordered: list[float], share: float) -> float:
    """Nearest rank: the smallest value that `share` of the values are at or under."""
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def attack(scenario: Scenario, rate: int, seconds: int) -> dict:
    """vegeta at `rate` requests/s for `seconds`: latency quantiles, the achieved rate, errors
    (as bench.lua counts them: every answer but a 2xx, and every request without one) and the
    count of each status code (0: no answer, e.g. a timeout or a refused connection)."""
    # A second's worth more than the schedule reaches in `seconds`: running out of targets
    # would end the attack early, with a "no targets to attack" error result.
    stdin = _targets(scenario, rate * (seconds + 1))
    gob = _vegeta(
        "attack",
        *(f"-rate={rate}/s", f"-duration={seconds}s", f"-timeout={TIMEOUT_S}s"),
        *("-format=json", "-lazy", f"-max-workers={min(MAX_WORKERS, rate * TIMEOUT_S)}"),
        # As wrk: HTTP/1.1 over TLS too (nginx offers h2), no certificate check (the bench's
        # edge certificate is self-signed), redirects answered, not followed, and no body kept.
        *("-http2=false", "-insecure", "-redirects=-1", "-max-body=0"),
        stdin=stdin,
        timeout=seconds + MARGIN_S,
    )
    encoded = _vegeta("encode", "-to=json", stdin=gob, timeout=MARGIN_S)
    results = [json.loads(line) for line in encoded.splitlines() if line.strip()]
    if not results:
        raise StackError(f"vegeta sent no request to {scenario.url}")
    latencies = sorted(result["latency"] / 1e6 for result in results)
    status: dict[str, int] = {}
    for result in results:
        status[str(result["code"])] = status.get(str(result["code"]), 0) + 1
    stamps = [dt.datetime.fromisoformat(result["timestamp"]) for result in results]
    span = (max(stamps) - min(stamps)).total_seconds()
    return {
        "target_rps": rate,
        "seconds": round(span, 2),
        "requests": len(results),
        "achieved_rps": round(len(results) / span, 1) if span else 0.0,
        "p50_ms": round(_percentile(latencies, 0.50), 3),
        "p99_ms": round(_percentile(latencies, 0.99), 3),
        "p999_ms": round(_percentile(latencies, 0.999), 3),
        "max_ms": round(latencies[-1], 3),
        "errors": sum(
            1 for result in results if result["error"] or not 200 <= result["code"] <= 299
        ),
        "status": dict(sorted(status.items())),
    }


def open_loop(scenario: Scenario, rate: int, seconds: int, warmup: int) -> dict:
    """The figure at `rate`, after a warm-up at the same rate, in the scenario's conditions."""
    return scenario.under(lambda duration: attack(scenario, rate, duration), seconds, warmup)
