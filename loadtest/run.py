"""make loadtest: Locust's users (loadtest/locustfile.py) headless against a running local stack.

The stack is FF_STACK's (default ff, `make up`'s) on 127.0.0.1:FF_HTTP_PORT (default 8080, as
scripts/stack.sh publishes it); this never brings a stack up or changes its configuration. In
order:
  1. the arguments are checked (users 1-500, spawn rate above 0 and at most 50 a second, run
     time 1 s to 10 min, an unused results directory) before anything else runs;
  2. the stack must exist here, the toolchain is brought in line with requirements/main.txt
     (scripts/setup-python.sh), the API clients' tokens are read from the stack's vault with
     ansible-vault (scripts/stacklib.py: Stack.tokens), and the stack must answer /healthz;
  3. if the catalogue has fewer than --products products, the admin client creates
     loadtest-0001... up to that many (a SKU that exists already, 409, is fine);
  4. Locust runs headless, the tokens in its environment only (never on its command line), and
     writes report.html and locust_*.csv into loadtest/results/<UTC date>[-label]/, with
     run.json (what ran, against what);
  5. every file written there is searched for the tokens: one that holds a token is deleted
     and the run fails.
The exit status is Locust's (1 when any request failed) unless a step before failed.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "loadtest" / "results"
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
MAX_USERS = 500
MAX_SPAWN_RATE = 50.0
MAX_SECONDS = 600
SEED_PRODUCTS = 200
SEED_STOCK = 1_000_000
# Locust's stop timeout: a buyer following its order gets this long to finish it.
STOP_TIMEOUT = 15
TOKEN_VARIABLES = {"shop": "FF_LOADTEST_SHOP_TOKEN", "admin": "FF_LOADTEST_ADMIN_TOKEN"}


class UsageError(ValueError):
    """A bad argument; its message names the make variable."""


def whole_number(value: str, variable: str, low: int, high: int) -> int:
    if not re.fullmatch(r"[0-9]+", value or "") or not low <= int(value) <= high:
        raise UsageError(f"{variable}={value!r}: a whole number from {low} to {high}")
    return int(value)


def spawn_rate(value: str) -> float:
    variable = "LOADTEST_SPAWN_RATE"
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", value or ""):
        raise UsageError(
            f"{variable}={value!r}: users started per second, a number such as 5 or 0.5"
        )
    rate = float(value)
    if not 0 < rate <= MAX_SPAWN_RATE:
        raise UsageError(f"{variable}={value!r}: must be above 0 and at most {MAX_SPAWN_RATE:g}")
    return rate


def run_time(value: str) -> int:
    """Seconds of a Locust run time: 120, 90s, 2m, 1m30s (hours are over the limit anyway)."""
    variable = "LOADTEST_TIME"
    match = re.fullmatch(r"(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s?)?", value or "")
    if not value or match is None:
        raise UsageError(f"{variable}={value!r}: a duration such as 2m, 90s or 1m30s")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not 1 <= total <= MAX_SECONDS:
        raise UsageError(f"{variable}={value!r}: must be from 1 s to {MAX_SECONDS // 60} minutes")
    return total


def label(value: str) -> str:
    if value and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", value):
        raise UsageError(
            f"LOADTEST_LABEL={value!r}: up to 32 lowercase letters, digits and '-', e.g. after"
        )
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", default="40", help=f"peak users, 1-{MAX_USERS} (LOADTEST_USERS)")
    parser.add_argument(
        "--spawn-rate", default="5", help="users started a second (LOADTEST_SPAWN_RATE)"
    )
    parser.add_argument("--time", default="2m", help="run time, at most 10m (LOADTEST_TIME)")
    parser.add_argument(
        "--label", default="", help="suffix of the results directory (LOADTEST_LABEL)"
    )
    parser.add_argument(
        "--products", default=str(SEED_PRODUCTS), help="products the catalogue must hold first"
    )
    args = parser.parse_args(argv)
    args.users = whole_number(args.users, "LOADTEST_USERS", 1, MAX_USERS)
    args.spawn_rate = spawn_rate(args.spawn_rate)
    args.seconds = run_time(args.time)
    args.label = label(args.label)
    args.products = whole_number(args.products, "--products", 1, 1000)
    stack = os.environ.get("FF_STACK") or "ff"
    if not re.fullmatch(r"[a-z0-9-]{2,12}", stack):
        raise UsageError(f"FF_STACK={stack!r}: a stack's name, 2-12 of a-z, 0-9 and '-'")
    args.stack = stack
    args.port = whole_number(os.environ.get("FF_HTTP_PORT") or "8080", "FF_HTTP_PORT", 1, 65535)
    return args


def results_dir(run_label: str) -> Path:
    name = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d") + (f"-{run_label}" if run_label else "")
    directory = RESULTS / name
    if directory.exists():
        raise UsageError(
            f"{os.path.relpath(directory, ROOT)} exists already: give this run a LOADTEST_LABEL"
            " (e.g. LOADTEST_LABEL=second) or move the earlier results away"
        )
    return directory


def product_count(session, url: str, enough: int) -> int:
    """Products in the catalogue, counted over v2 pages up to `enough`."""
    count, cursor = 0, None
    while count < enough:
        params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        response = session.get(f"{url}/api/v2/products", params=params, timeout=10)
        response.raise_for_status()
        page = response.json()
        count += len(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    return count


def seed_products(session, url: str, wanted: int, log) -> int:
    """Create loadtest-0001... until the catalogue holds `wanted`; the number created."""
    have = product_count(session, url, wanted)
    if have >= wanted:
        log(f"catalogue: {have}+ products, none created")
        return 0
    log(f"catalogue: {have} products; creating loadtest-0001..{wanted:04d} as admin")
    created = 0
    for number in range(1, wanted + 1):
        response = session.post(
            f"{url}/api/v1/products",
            json={
                "sku": f"loadtest-{number:04d}",
                "name": f"Load test product {number}",
                "description": "made by make loadtest",
                "price_cents": 100 + number * 37 % 9900,
                "stock": SEED_STOCK,
            },
            timeout=10,
        )
        if response.status_code == 201:
            created += 1
        elif response.status_code != 409:
            raise RuntimeError(
                f"creating product loadtest-{number:04d}: {response.status_code}"
                f" {response.text[:200]}"
            )
    return created


def locust_command(url: str, users: int, rate: float, seconds: int, out: Path) -> list[str]:
    return [
        str(ROOT / ".venv" / "bin" / "locust"),
        "--locustfile", str(LOCUSTFILE),
        "--headless",
        "--host", url,
        "--users", str(users),
        "--spawn-rate", f"{rate:g}",
        "--run-time", f"{seconds}s",
        "--stop-timeout", str(STOP_TIMEOUT),
        "--only-summary",
        "--html", str(out / "report.html"),
        "--csv", str(out / "locust"),
    ]  # fmt: skip


def run_locust(command: list[str], tokens: dict[str, str], seconds: int) -> int:
    env = {**os.environ, **{TOKEN_VARIABLES[client]: tokens[client] for client in TOKEN_VARIABLES}}
    # Bounded even if Locust hangs: run time, stop timeout, start-up and the report.
    result = subprocess.run(  # noqa: S603 (our own locust with our own arguments)
        command, cwd=ROOT, env=env, timeout=seconds + STOP_TIMEOUT + 120, check=False
    )
    return result.returncode


def files_with_tokens(directory: Path, tokens: dict[str, str]) -> list[Path]:
    secrets = [token.encode() for token in tokens.values() if token]
    return sorted(
        path
        for path in directory.rglob("*")
        if path.is_file() and any(secret in path.read_bytes() for secret in secrets)
    )


def failures_summary(out: Path) -> tuple[int, int]:
    """(requests, failures) from Locust's aggregated row."""
    with (out / "locust_stats.csv").open() as stats:
        for row in csv.DictReader(stats):
            if row["Name"] == "Aggregated":
                return int(row["Request Count"]), int(row["Failure Count"])
    return 0, 0


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
        out = results_dir(args.label)
    except UsageError as error:
        print(f"make loadtest: {error}", file=sys.stderr)
        return 2

    sys.path.insert(0, str(ROOT / "scripts"))
    import requests
    from stacklib import Stack, StackError, log

    stack = Stack(args.stack, args.port)
    if not stack.exists() or not (stack.state / "api-tokens.yml").exists():
        log(f"no stack {stack.name!r} here (FF_STACK): bring it up with make up first")
        return 1
    # Locust and its dependencies as requirements/main.txt pins them (a no-op when in line).
    subprocess.run(["bash", "scripts/setup-python.sh"], cwd=ROOT, check=True)  # noqa: S607
    try:
        tokens = {client: stack.tokens[client] for client in TOKEN_VARIABLES}
    except StackError:
        log(f"cannot read {stack.name}'s api-tokens.yml with ansible-vault")
        return 1
    except KeyError as missing:
        log(f"{stack.name}'s api-tokens.yml has no client {missing}")
        return 1
    try:
        requests.get(f"{stack.url}/healthz", timeout=5).raise_for_status()
    except requests.RequestException as error:
        log(f"{stack.name} does not answer on {stack.url} (FF_HTTP_PORT): {type(error).__name__}")
        return 1

    try:
        created = seed_products(stack.session("admin"), stack.url, args.products, log)
    except (requests.RequestException, ValueError, KeyError, RuntimeError) as error:
        log(f"seeding the catalogue failed: {error}")
        return 1
    out.mkdir(parents=True)
    command = locust_command(stack.url, args.users, args.spawn_rate, args.seconds, out)
    log(
        f"locust: {args.users} users at {args.spawn_rate:g}/s for {args.seconds} s against"
        f" {stack.name} ({stack.url}) -> {os.path.relpath(out, ROOT)}/"
    )
    started = dt.datetime.now(dt.UTC)
    clock = time.monotonic()
    status = run_locust(command, tokens, args.seconds)
    (out / "run.json").write_text(
        json.dumps(
            {
                "stack": stack.name,
                "url": stack.url,
                "users": args.users,
                "spawn_rate": args.spawn_rate,
                "run_time_seconds": args.seconds,
                "started": started.isoformat(timespec="seconds"),
                "wall_seconds": round(time.monotonic() - clock, 1),
                "products_created": created,
                "locust_exit_status": status,
                "command": [part.replace(f"{ROOT}/", "") for part in command],
            },
            indent=2,
        )
        + "\n"
    )

    leaked = files_with_tokens(out, tokens)
    for path in leaked:
        path.unlink()
    if leaked:
        names = ", ".join(path.name for path in leaked)
        log(f"an API token was in {names}: deleted; find what wrote it before committing results")
        return 1
    if not (out / "report.html").exists():
        log(f"locust exited {status} without a report")
        return status or 1
    requests_made, failed = failures_summary(out)
    log(
        f"{requests_made} requests, {failed} failed; no token in the results;"
        f" report: {os.path.relpath(out / 'report.html', ROOT)}"
    )
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
