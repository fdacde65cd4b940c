"""Behaviour of the monitor tier's roles: Prometheus scrapes every target the inventory gives
it (jobs without hosts absent, instances named by inventory hostname), loads the repository's
rules and serves its console; an alert travels through Alertmanager to the webhook receiver's
journal; a changed rule list is applied with a reload and a broken rule file is refused; every
listener is on the private address or the loopback; sandboxed units; bad variables refused
before any change."""

import json
import os
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import (
    PROJECT_DIR,
    eventually,
    exposure,
    fails_in_validation,
    host,
    journal,
    private_ip,
    run_playbook,
)

SCENARIO_DIR = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
REPO_RULES = sorted((PROJECT_DIR / "monitoring" / "rules").glob("*.yml"))
SCENARIO_RULE = SCENARIO_DIR / "files" / "molecule.yml"
RULES_DIR = "/etc/prometheus/rules"
MAX_EXPOSURE = 3.0

MONITOR = host("monitoring-monitor")
APP = host("monitoring-app1")
HOSTS = {"monitoring-monitor": MONITOR, "monitoring-app1": APP}
UNITS = [
    "prometheus",
    "prometheus-alertmanager",
    "prometheus-blackbox-exporter",
    "prometheus-webhook-receiver",
]


def alert_names(paths):
    names = set()
    for path in paths:
        for group in yaml.safe_load(Path(path).read_text())["groups"]:
            names |= {rule["alert"] for rule in group["rules"] if "alert" in rule}
    return names


def monitor_journal():
    return journal(MONITOR, *UNITS)


@pytest.fixture(scope="module")
def addresses():
    return {name: private_ip(target) for name, target in HOSTS.items()}


@pytest.fixture(scope="module")
def monitor(addresses):
    return addresses["monitoring-monitor"]


def http_get(address, path, port=9090):
    """curl on the monitor: (HTTP status, body)."""
    url = shlex.quote(f"http://{address}:{port}{path}")
    result = MONITOR.run(f"curl -sS -o /dev/stdout -w '\\n%{{http_code}}' {url}")
    body, _, status = result.stdout.rpartition("\n")
    return int(status or 0), body


def api(address, path):
    status, body = http_get(address, f"/api/v1/{path}")
    assert status == 200, body + monitor_journal()
    return json.loads(body)["data"]


def targets(address):
    return {
        (target["labels"]["job"], target["labels"]["instance"]): target
        for target in api(address, "targets")["activeTargets"]
    }


def loaded_alerts(address):
    groups = api(address, "rules?type=alert")["groups"]
    return {rule["name"] for group in groups for rule in group["rules"]}


def main_pid(unit="prometheus"):
    return MONITOR.check_output(f"systemctl show -P MainPID {unit}")


def test_every_configured_target_is_up(addresses, monitor):
    app = addresses["monitoring-app1"]
    expected = {
        ("flaskfleet", "monitoring-app1"),
        ("node", "monitoring-app1"),
        ("node", "monitoring-monitor"),
        ("blackbox", f"http://{app}:8000/metrics"),
    }

    def all_up():
        found = targets(monitor)
        return set(found) == expected and all(t["health"] == "up" for t in found.values())

    if not eventually(all_up, timeout=90, interval=3):
        found = {key: (t["health"], t["lastError"]) for key, t in targets(monitor).items()}
        pytest.fail(f"expected {sorted(expected)} up, got {found}" + monitor_journal())


def test_targets_are_the_hosts_private_addresses(addresses, monitor):
    found = targets(monitor)
    assert found[("node", "monitoring-app1")]["labels"]["instance"] == "monitoring-app1"
    assert found[("node", "monitoring-app1")]["scrapeUrl"] == (
        f"http://{addresses['monitoring-app1']}:9100/metrics"
    )
    assert found[("flaskfleet", "monitoring-app1")]["scrapeUrl"] == (
        f"http://{addresses['monitoring-app1']}:8000/metrics"
    )


def test_jobs_without_hosts_are_absent(monitor):
    jobs = {job for job, _ in targets(monitor)}
    assert jobs == {"flaskfleet", "node", "blackbox"}, jobs


def test_app_metrics_and_blackbox_probe_are_scraped(monitor):
    def value(query):
        result = api(monitor, f"query?query={query}")["result"]
        return result[0]["value"][1] if result else None

    assert eventually(lambda: value("probe_success") == "1", timeout=60), monitor_journal()
    requests = value("sum(flaskfleet_http_requests_total)")
    assert requests == "42", requests


def test_repository_rules_are_loaded(monitor):
    expected = alert_names([*REPO_RULES, SCENARIO_RULE])
    assert expected <= loaded_alerts(monitor), sorted(expected - loaded_alerts(monitor))
    files = {group["file"] for group in api(monitor, "rules")["groups"]}
    assert files == {f"{RULES_DIR}/{path.name}" for path in [*REPO_RULES, SCENARIO_RULE]}


def test_console_renders(monitor):
    status, body = http_get(monitor, "/consoles/flaskfleet.html")
    assert status == 200, body[-2000:] + monitor_journal()
    # The targets table comes from a live query: the jobs scraped here.
    assert "<td>node</td>" in body and "<td>flaskfleet</td>" in body, body[-2000:]


def notifications():
    output = MONITOR.check_output("journalctl -u prometheus-webhook-receiver -o cat --no-pager")
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_alert_reaches_the_webhook_receiver():
    def delivered():
        return [
            notice
            for notice in notifications()
            if notice["commonLabels"].get("alertname") == "MoleculeAlwaysFiring"
        ]

    # Prometheus sends a firing alert at once and again every minute.
    found = eventually(delivered, timeout=150, interval=5)
    assert found, monitor_journal()
    assert found[0]["status"] == "firing" and found[0]["receiver"] == "webhook", found[0]
    assert found[0]["alerts"][0]["labels"]["severity"] == "ticket"


def listeners(target, port):
    return target.check_output(f"ss -Htln 'sport = :{port}' | awk '{{print $4}}'").split()


@pytest.mark.parametrize(
    ("port", "where"),
    [
        (9090, "private"),
        (9093, "private"),
        (9100, "private"),
        (9115, "loopback"),
        (9095, "loopback"),
    ],
)
def test_monitor_listens_only_where_it_should(monitor, port, where):
    address = monitor if where == "private" else "127.0.0.1"
    assert listeners(MONITOR, port) == [f"{address}:{port}"], monitor_journal()


def test_alertmanager_cluster_port_is_off():
    assert listeners(MONITOR, 9094) == []


def test_node_exporter_listens_only_on_the_private_address(addresses):
    address = addresses["monitoring-app1"]
    assert listeners(APP, 9100) == [f"{address}:9100"], journal(APP, "prometheus-node-exporter")
    assert APP.run("curl -sf -o /dev/null http://127.0.0.1:9100/metrics").rc != 0
    assert APP.run("curl -sf -o /dev/null http://" + address + ":9100/metrics").rc == 0


def test_node_exporter_leaves_the_systemd_collector_off(monitor):
    series = api(monitor, "query?query=node_systemd_unit_state")["result"]
    assert series == []


@pytest.mark.parametrize(
    ("target", "unit"),
    [(MONITOR, unit) for unit in UNITS] + [(APP, "prometheus-node-exporter")],
    ids=[*UNITS, "prometheus-node-exporter"],
)
def test_sandbox_exposure_score(target, unit):
    score = exposure(target, f"{unit}.service")
    assert score <= MAX_EXPOSURE, target.check_output(f"systemd-analyze security {unit}")


def converge(*extra_vars):
    """The scenario's converge playbook with -e arguments: (exit code, output)."""
    return run_playbook(SCENARIO_DIR / "converge.yml", *extra_vars)


def with_rules(paths):
    return json.dumps({"prometheus_rule_files": [str(path) for path in paths]})


def test_rule_change_is_applied_with_a_reload(monitor):
    pid = main_pid()
    try:
        code, output = converge(with_rules(REPO_RULES))
        assert code == 0, output[-3000:]
        assert "Reload Prometheus" in output and "Restart Prometheus" not in output
        gone = eventually(lambda: "MoleculeAlwaysFiring" not in loaded_alerts(monitor))
        assert gone, monitor_journal()
        assert not MONITOR.file(f"{RULES_DIR}/{SCENARIO_RULE.name}").exists
        assert main_pid() == pid, monitor_journal()
    finally:
        code, output = converge()
        assert code == 0, output[-3000:]
    assert eventually(lambda: "MoleculeAlwaysFiring" in loaded_alerts(monitor))


def test_broken_rule_file_is_refused(monitor, tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "groups:\n  - name: broken\n    rules:\n      - alert: Broken\n        expr: rate(up[5m]\n"
    )
    before = MONITOR.check_output(f"sha256sum {RULES_DIR}/*")
    code, output = converge(with_rules([*REPO_RULES, SCENARIO_RULE, broken]))
    assert code != 0, output[-3000:]
    assert "failed to validate" in output, output[-3000:]
    assert MONITOR.check_output(f"sha256sum {RULES_DIR}/*") == before
    assert "Broken" not in loaded_alerts(monitor)
    assert MONITOR.service("prometheus").is_running


# The stack's exporter ports (group_vars/all/ports.yml), which the default scrape jobs read:
# every run of the role has them, as site.yml's does.
EXPORTER_PORTS = {
    name: port
    for name, port in yaml.safe_load((PROJECT_DIR / "group_vars/all/ports.yml").read_text()).items()
    if name.startswith("exporters_")
}
RULES = {"prometheus_rule_files": [str(REPO_RULES[0])]}


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        ({}, "prometheus_rule_files must not be empty"),
        (
            {"prometheus_rule_files": ["/nonexistent/rules.yml"]},
            "missing: ['/nonexistent/rules.yml']",
        ),
        (
            {"prometheus_rule_files": [str(REPO_RULES[0]), str(REPO_RULES[0])]},
            "unique base names",
        ),
        (
            {**RULES, "prometheus_scrape_jobs": {"flaskfleet": {"groups": "app", "port": 8000}}},
            "scrape job 'flaskfleet' must be named",
        ),
        (
            {**RULES, "prometheus_scrape_jobs": {"node": {"groups": ["all"], "port": 70000}}},
            "scrape job 'node' must be named",
        ),
        (
            {**RULES, "prometheus_scrape_jobs": {"node": {"groups": ["all"]}}},
            "scrape job 'node' must be named",
        ),
        (
            {**RULES, "prometheus_scrape_jobs": {"flask-fleet": {"groups": ["app"], "port": 8000}}},
            "scrape job 'flask-fleet' must be named",
        ),
        (
            {**RULES, "prometheus_scrape_jobs": {"blackbox": {"groups": ["lb"], "port": 443}}},
            "scrape job 'blackbox' must be named",
        ),
        (
            {
                **RULES,
                "prometheus_scrape_jobs": {"node": {"groups": ["all"], "port": 9100, "tls": True}},
            },
            "scrape job 'node' must be named",
        ),
        ({**RULES, "prometheus_scrape_jobs": ["node"]}, "prometheus_scrape_jobs"),
        (
            {**RULES, "prometheus_alertmanager_webhook_url": "hooks.example.com/alert"},
            "must be an http:// or https:// URL",
        ),
        (
            {**RULES, "prometheus_blackbox_urls": ["https://shop example.com/"]},
            "must be an http:// or https:// URL",
        ),
        (
            {**RULES, "prometheus_scrape_interval": "15 seconds"},
            "offending: {'prometheus_scrape_interval': '15 seconds'}",
        ),
        ({**RULES, "prometheus_port": 9093}, "four different ports"),
        ({**RULES, "prometheus_listen_address": "monitor.internal"}, "an IP address"),
        ({**RULES, "prometheus_admin_cidrs": ["10.0.0.1"]}, "must be address/prefix networks"),
        (
            {**RULES, "prometheus_webhook_receiver_enabled": "sometimes"},
            "prometheus_webhook_receiver_enabled",
        ),
    ],
)
def test_prometheus_bad_variables_fail_with_a_clear_message(extra_vars, message):
    fails_in_validation("prometheus", {**EXPORTER_PORTS, **extra_vars}, message)


# Each service exporter switched on with otherwise good values.
POSTGRES = {"exporters_postgres_enabled": True, "exporters_postgres_password": "secret"}
REDIS = {"exporters_redis_enabled": True, "exporters_redis_password": "secret"}
NGINX = {"exporters_nginx_enabled": True}


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        ({"exporters_node_port": 0}, "exporters_node_port in 1..65535"),
        ({"exporters_node_listen_address": "node1.internal"}, "an IP address"),
        ({"exporters_node_collectors_disabled": ["systemd;rm"]}, "collector names of lowercase"),
        (
            {"exporters_node_collectors_enabled": ["systemd"]},
            "no collector both enabled and disabled",
        ),
        ({"exporters_node_port": "ninety"}, "exporters_node_port"),
        (
            {"exporters_postgres_enabled": "false"},
            "exporters_postgres_enabled must be a boolean",
        ),
        ({**POSTGRES, "exporters_postgres_password": ""}, "exporters_postgres_password must not"),
        ({**POSTGRES, "exporters_postgres_port": 70000}, "exporters_postgres_port must be in"),
        (
            {**POSTGRES, "exporters_postgres_user": "monitor password=x"},
            "exporters_postgres_user must be a lower-case PostgreSQL role name",
        ),
        (
            {**POSTGRES, "exporters_postgres_listen_address": "db1.internal"},
            "exporters_postgres_listen_address must be an IP address",
        ),
        ({**REDIS, "exporters_redis_password": ""}, "exporters_redis_password must not be empty"),
        (
            {**REDIS, "exporters_redis_server_address": "redis.internal"},
            "exporters_redis_server_address must be an IP address",
        ),
        ({**REDIS, "exporters_redis_user": "Exporter"}, "exporters_redis_user must be an ACL"),
        ({**REDIS, "exporters_redis_port": "ninety"}, "exporters_redis_port"),
        (
            {**NGINX, "exporters_nginx_scrape_uri": "127.0.0.1:8081/stub_status"},
            "exporters_nginx_scrape_uri must be an http(s) URL",
        ),
        ({**NGINX, "exporters_nginx_port": 0}, "exporters_nginx_port must be in 1..65535"),
    ],
)
def test_exporters_bad_variables_fail_with_a_clear_message(extra_vars, message):
    fails_in_validation("exporters", extra_vars, message)
