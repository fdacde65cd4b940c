"""Monitoring as code: every rule file passes promtool, every alert has unit tests that show it
firing and staying quiet, and the console template renders in a real Prometheus."""

from __future__ import annotations

import http.client
import json
import math
import re
import shutil
import socket
import subprocess
import time
import zlib
from pathlib import Path

import pytest
import yaml
from PIL import Image

MONITORING = Path(__file__).resolve().parent.parent
RULE_FILES = sorted((MONITORING / "rules").glob("*.yml"))
TEST_FILES = sorted((MONITORING / "tests").glob("*.test.yml"))
CONSOLES = MONITORING / "consoles"
# Debian's prometheus package ships the console library (prom.lib, menu.lib) as an example.
CONSOLE_LIBRARIES = Path("/usr/share/doc/prometheus/examples/console_libraries")
SEVERITIES = {"page", "ticket"}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _rules() -> list[tuple[Path, dict]]:
    return [
        (path, rule)
        for path in RULE_FILES
        for group in _load(path)["groups"]
        for rule in group["rules"]
    ]


ALERTS = {rule["alert"]: (path, rule) for path, rule in _rules() if "alert" in rule}
RECORDS = {rule["record"]: (path, rule) for path, rule in _rules() if "record" in rule}
TESTS = {path: _load(path) for path in TEST_FILES}


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["promtool", *args], cwd=MONITORING, capture_output=True, text=True, timeout=120
    )


def test_files_found():
    assert RULE_FILES and TEST_FILES and ALERTS and RECORDS


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(path):
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_promtool_test_rules(path):
    result = _promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _rule_files_of(test: dict, test_path: Path) -> set[Path]:
    return {(test_path.parent / name).resolve() for name in test["rule_files"]}


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_every_rule_file_is_tested(path):
    assert any(path in _rule_files_of(test, tp) for tp, test in TESTS.items())


def _alert_cases(alert: str) -> list[list]:
    """Every exp_alerts list given for `alert` by a test whose rule_files define it."""
    path = ALERTS[alert][0]
    return [
        case.get("exp_alerts") or []
        for test_path, test in TESTS.items()
        if path in _rule_files_of(test, test_path)
        for group in test["tests"]
        for case in group.get("alert_rule_test", [])
        if case["alertname"] == alert
    ]


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_every_alert_fires_and_stays_quiet_in_a_test(alert):
    cases = _alert_cases(alert)
    assert any(cases), f"{alert}: no test shows it firing"
    assert not all(cases), f"{alert}: no test shows it quiet"
    for expected in filter(None, cases):
        for firing in expected:
            labels = firing.get("exp_labels") or {}
            annotations = firing.get("exp_annotations") or {}
            assert labels.get("severity") in SEVERITIES, f"{alert}: severity not checked"
            assert {"summary", "description"} <= annotations.keys(), (
                f"{alert}: annotations not checked"
            )


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_every_alert_has_severity_and_annotations(alert):
    rule = ALERTS[alert][1]
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    assert rule.get("annotations", {}).get("summary", "").strip()
    assert rule.get("annotations", {}).get("description", "").strip()


@pytest.mark.parametrize("record", sorted(RECORDS))
def test_every_recording_rule_is_tested_or_alerted_on(record):
    """A recorded series is checked by a promql_expr_test or feeds an alert that is tested."""
    exprs = [
        case["expr"]
        for test in TESTS.values()
        for group in test["tests"]
        for case in group.get("promql_expr_test", [])
    ] + [rule["expr"] for _, rule in ALERTS.values()]
    assert any(record in expr for expr in exprs)


def _uses(expr: str, name: str) -> bool:
    return re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", expr) is not None


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_recorded_series_are_read_in_their_own_group_after_the_record(path):
    """Rules of a group run in order; groups run apart. A rule reading a series recorded in
    another group (or later in its own) sees the previous evaluation's value, which made the
    burn-rate tests flaky before the app's rules became one group."""
    for group in _load(path)["groups"]:
        recorded_before: set[str] = set()
        for rule in group["rules"]:
            used = {name for name in RECORDS if _uses(rule["expr"], name)}
            late = used - recorded_before
            assert not late, f"{rule.get('alert') or rule.get('record')} reads {late}"
            if "record" in rule:
                recorded_before.add(rule["record"])


# The consoles read recorded series: written straight into a TSDB block (promtool tsdb
# create-blocks-from openmetrics), an hour of them, they are what a live Prometheus would
# show. The format is described at the top of console-series.txt.
CONSOLE_SERIES = (MONITORING / "tests" / "console-series.txt").read_text()
CONSOLE_STEP = 60
# The samples run on past the fixture's start: a rate() over counters sees a sample near each
# end of its window whenever the test queries, rather than extrapolating less and reading low
# once the last sample is more than a step old. Prometheus answers for now, ignoring the rest.
CONSOLE_AGES = range(3600, -600, -CONSOLE_STEP)
# What each page must show of that data, in its HTML with runs of white space made one space;
# every page in consoles/ has an entry.
CONSOLE_EXPECTED = {
    "flaskfleet.html": [
        # Targets: the molecule scenario checks this table on a live stack too.
        "<td>node</td> <td>4 / 5</td>",
        "Alerts firing</a>: 1</th>",
        "<tr><td>PostgresReplicationSlotInactive</td><td>ticket</td></tr>",
        # html/template escapes the label: the route rule is shown, not interpreted as markup.
        "<td>GET /api/v1/products/&lt;int:product_id&gt;</td> <td>12.5/s</td> <td>25%</td>"
        " <td>20ms</td> <td>750ms</td>",
        "<td>POST /api/v1/orders</td> <td>1.5/s</td> <td>0%</td> <td>60ms</td> <td>310ms</td>",
        "<td>app-1:8000</td> <td>12.5/s</td> <td>25%</td> <td>750ms</td>"
        " <td>primary 30% replica 50% </td>",
        # node_exporter: app-1 idles 0.8 of its 2 cores, uses 70% of its memory and 30% of /.
        "<td>app-1:9100</td> <td>yes</td> <td>60%</td> <td>70%</td> <td>30%</td>",
        "<td>redis-1:9100</td> <td><b>no</b></td> <td>-</td>",
        ">87.5%</a>",
        'href="flaskfleet-data.html"',
    ],
    "flaskfleet-data.html": [
        "<td>postgres-primary:9187</td> <td>yes</td> <td>no (primary)</td> <td>23 / 100</td>"
        " <td>-</td>",
        "<td>postgres-replica:9187</td> <td>yes</td> <td>replica</td> <td>9 / 100</td>"
        " <td>4.5s</td>",
        "<td>postgres_replica_1 on postgres-primary:9187</td> <td><b>no</b></td> <td>2GiB</td>",
        "<tr><td>replica_behind</td><td>0.8/s</td></tr>",
        "<tr><td>hit</td><td>7/s</td></tr> <tr><td>miss</td><td>1/s</td></tr>",
        ">87.5%</a>",
        "<td>redis-1:9121 (redis_cache)</td> <td>yes</td> <td>1MiB of 256MiB</td> <td>17</td>",
        "<tr><td>flaskfleet</td><td>42</td></tr>",
        ">1m 35s</a>",
        "<td>flaskfleet.confirm_order</td> <td>success</td> <td>1.4/s</td> <td>3</td>",
        # Backups. An age from time() grows by the seconds the test has run: checked to the
        # minute. The WAL segment's age is taken at the script's run, as the alert takes it.
        ">4h 10m ",
        ">30s</a>",
        "<td>incr of flaskfleet</td> <td>4h 10m ",
        " ago</td> <td>1m 40s</td> <td>20MiB</td> <td><b>failed</b></td>",
        "<td>diff of flaskfleet</td> <td>14h 0m ",
        " ago</td> <td>7m 0s</td> <td>150MiB</td> <td>succeeded</td>",
        "<td>full of flaskfleet</td> <td>3d 0h 0m ",
        " ago</td> <td>30m 0s</td> <td>1GiB</td> <td>succeeded</td>",
        "<td>flaskfleet on monitor:9100</td> <td>ok</td> <td>1m ",
        " ago</td> <td>30s before that</td>",
        'href="flaskfleet.html"',
    ],
}
CONSOLE_NAMES = sorted(path.name for path in CONSOLES.glob("*.html"))
# Screenshots of the consoles, kept with the test logs (git-ignored); the README's is
# committed in monitoring/screenshots/.
SCREENSHOTS = MONITORING.parent / ".test-logs" / "screenshots"
SCREEN = (1400, 1800)


def console_samples(text: str, now: int) -> str:
    """OpenMetrics for console-series.txt: a sample a minute, from an hour before `now`.

    `series value` stays at value; `series value ~` wanders (a few per cent, its own period)
    until `now`, then stays at value; `series value +R` is a counter rising R a second, at
    value at `now`; `series now-N` stays at the Unix time `now` - N.
    """
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        labels, _, rest = line.rpartition("}")
        value, *shape = rest.split()
        end = now - float(value.removeprefix("now-")) if value.startswith("now-") else float(value)
        period = 600 + zlib.crc32(labels.encode()) % 1800
        for age in CONSOLE_AGES:
            if shape == ["~"]:
                sample = end * (1 + 0.08 * math.sin(2 * math.pi * max(age, 0) / period))
            elif shape:
                sample = end - float(shape[0].lstrip("+")) * age
            else:
                sample = end
            out.append(f"{labels}}} {sample!r} {now - age}\n")
    return "".join(out) + "# EOF\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """A Prometheus serving the consoles and loading the rule files, on a TSDB of test data."""
    assert shutil.which("prometheus"), "the prometheus package is not installed"
    assert (CONSOLE_LIBRARIES / "prom.lib").is_file(), f"no console library in {CONSOLE_LIBRARIES}"
    work = tmp_path_factory.mktemp("prometheus")
    (work / "series.om").write_text(console_samples(CONSOLE_SERIES, int(time.time())))
    backfill = _promtool(
        "tsdb", "create-blocks-from", "openmetrics", str(work / "series.om"), str(work / "data")
    )
    assert backfill.returncode == 0, backfill.stdout + backfill.stderr
    config = {
        # The rules load but are not evaluated during the test (a group's first evaluation
        # waits for its slot in the interval): an evaluation would overwrite the backfilled
        # recorded series with what the rules compute from raw series the data lacks.
        "global": {"evaluation_interval": "1y"},
        "rule_files": [str(path) for path in RULE_FILES],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = (work / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.console.templates={CONSOLES}",
            f"--web.console.libraries={CONSOLE_LIBRARIES}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (work / "prometheus.log").read_text()
            try:
                if _get(port, "/-/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (work / "prometheus.log").read_text()
            time.sleep(0.5)
        yield port, work
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_prometheus_loads_every_rule_file(prometheus):
    port, _ = prometheus
    status, body = _get(port, "/api/v1/rules")
    assert status == 200
    groups = yaml.safe_load(body)["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert loaded == set(ALERTS) | set(RECORDS)


def test_every_console_has_expectations():
    assert CONSOLE_NAMES and set(CONSOLE_NAMES) == set(CONSOLE_EXPECTED)


@pytest.mark.parametrize("console", CONSOLE_NAMES)
def test_console_renders(prometheus, console):
    port, _ = prometheus
    status, body = _get(port, f"/consoles/{console}")
    assert status == 200, body
    assert "error executing template" not in body, body
    page = " ".join(body.split())
    missing = [text for text in CONSOLE_EXPECTED.get(console, []) if text not in page]
    assert not missing, f"{missing} not in the page:\n{body}"


def _chromium(url: str, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on `url`, given 10 s of virtual time for the graphs' queries."""
    assert shutil.which("chromium"), "the chromium package is not installed"
    return subprocess.run(
        [
            "chromium",
            "--headless=new",
            "--no-sandbox",  # root in a container has no user namespace for the sandbox
            "--disable-gpu",
            f"--window-size={SCREEN[0]},{SCREEN[1]}",
            "--virtual-time-budget=10000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("console", CONSOLE_NAMES)
def test_console_graphs_draw(prometheus, console):
    """Every PromConsole.Graph of the page draws a line for each of its expressions: the graph
    libraries Prometheus serves (Debian's rickshaw and d3) load, and every expression returns
    data."""
    port, _ = prometheus
    url = f"http://127.0.0.1:{port}/consoles/{console}"
    html = _get(port, f"/consoles/{console}")[1]
    graphs = {
        node: len(exprs) if isinstance(exprs, list) else 1
        for node, exprs in (
            (node, json.loads(exprs))
            for node, exprs in re.findall(
                r'<div id="(\w+)"></div>\s*<script>\s*new PromConsole.Graph\(\{[^}]*?'
                r"expr: (\[.*?\]|\".*?\"),\n",
                html,
            )
        )
    }
    assert graphs and len(graphs) == html.count("new PromConsole.Graph("), graphs
    result = _chromium(url, "--dump-dom")
    assert result.returncode == 0, result.stderr
    dom = result.stdout
    for graph, exprs in graphs.items():
        start = dom.index(f'<div id="{graph}">')
        drawn = dom[start : dom.index('class="prom_graph_xtitle"', start)]
        assert "prom_graph_error" not in drawn, f"{graph}: {drawn}"
        lines = len(re.findall(r'<path class="path" d="M[\d.]+,', drawn))
        assert lines >= exprs, f"{graph}: {lines} lines for {exprs} expressions"


@pytest.mark.parametrize("console", CONSOLE_NAMES)
def test_console_screenshot(prometheus, console):
    """A screenshot of the page, of the requested size and not blank."""
    port, _ = prometheus
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    png = SCREENSHOTS / console.replace(".html", ".png")
    png.unlink(missing_ok=True)
    result = _chromium(f"http://127.0.0.1:{port}/consoles/{console}", f"--screenshot={png}")
    assert result.returncode == 0, result.stderr
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == SCREEN
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    # Anti-aliased text alone gives a few hundred colours (Prometheus' error page: about 250);
    # these pages, with their tables and graphs, have over 1500.
    assert colours is None or len(colours) > 1000, f"{png}: {len(colours)} colours"
