"""Monitoring as code: every rule file passes promtool, every alert has unit tests that show it
firing and staying quiet, and the console template renders in a real Prometheus."""

from __future__ import annotations

import http.client
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

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


# The console reads recorded series: written straight into a TSDB block (promtool tsdb
# create-blocks-from openmetrics) a minute ago, they are what a live Prometheus would show.
# One series a line, without a timestamp.
CONSOLE_SERIES = (MONITORING / "tests" / "console-series.txt").read_text()
CONSOLE_EXPECTED = [
    # html/template escapes the label: the route rule is shown, not interpreted as markup.
    "GET /api/v1/products/&lt;int:product_id&gt;",
    "12.5/s",
    "25%",
    "750ms",
    "87.5%",
    "replica 50%",
    "no (primary)",
    "postgres_replica_1 on postgres-primary:9187",
    "2GiB",
    "1MiB",
    "256MiB",
    "<td>celery</td><td>42</td>",
]


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
    stamp = int(time.time()) - 60
    samples = "".join(
        f"{line} {stamp - offset}\n" for offset in (60, 0) for line in CONSOLE_SERIES.splitlines()
    )
    (work / "series.om").write_text(samples + "# EOF\n")
    backfill = _promtool(
        "tsdb", "create-blocks-from", "openmetrics", str(work / "series.om"), str(work / "data")
    )
    assert backfill.returncode == 0, backfill.stdout + backfill.stderr
    config = {
        "global": {"evaluation_interval": "1m"},
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


@pytest.mark.parametrize("console", sorted(p.name for p in CONSOLES.glob("*.html")))
def test_console_renders(prometheus, console):
    port, _ = prometheus
    status, body = _get(port, f"/consoles/{console}")
    assert status == 200, body
    assert "error executing template" not in body, body
    missing = [text for text in CONSOLE_EXPECTED if text not in body]
    assert not missing, f"{missing} not in the page:\n{body}"
