"""Behaviour of the exporters role's Redis exporter beside Redis: it answers on the private
address only and reaches Redis over TLS as its ACL user, serving the series
monitoring/rules/redis.yml reads without Redis refusing it a command; that user reads no key and
changes nothing; its password stays out of process lists, journals and other users' reach."""

import re
import shlex

import pytest
import yaml
from conftest import PROJECT_DIR, exposure, host, journal, private_ip
from test_redis import ADMIN_PASSWORD, ADMIN_USER, SCENARIO_VARS, redis_cli

REDIS = host("redis-cache1")
UNIT = "prometheus-redis-exporter"
PORT = 9121
ENV_FILE = "/etc/default/prometheus-redis-exporter"
ACL = yaml.safe_load((PROJECT_DIR / "group_vars/all/redis_acl.yml").read_text())
EXPORTER_USER = ACL["flaskfleet_redis_exporter_user"]
EXPORTER_PASSWORD = SCENARIO_VARS["exporters_redis_password"]
MAX_EXPOSURE = 3.0


@pytest.fixture(scope="module")
def address():
    return private_ip(REDIS)


def metrics(address):
    """The exporter's /metrics as the monitor would scrape it: on the private address."""
    return REDIS.check_output(f"curl -sS --max-time 10 http://{address}:{PORT}/metrics")


def series(text, name):
    """{labels: value} of every sample of the metric `name` in an exposition text."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return {labels or "": float(value) for labels, value in pattern.findall(text)}


def as_exporter(address, *args):
    return redis_cli(address, *args, user=EXPORTER_USER, password=EXPORTER_PASSWORD)


def test_exporter_listens_only_on_the_private_address(address):
    listeners = {
        socket.rsplit(":", 1)[0]
        for socket in REDIS.check_output("ss -Htln").split()
        if socket.endswith(f":{PORT}")
    }
    assert listeners == {address}, listeners


def test_exporter_serves_what_the_rules_read(address):
    text = metrics(address)
    assert series(text, "redis_up") == {"": 1.0}, text[-2000:] + journal(REDIS, UNIT)
    maxmemory = int(
        redis_cli(
            address, "CONFIG", "GET", "maxmemory", user=ADMIN_USER, password=ADMIN_PASSWORD
        ).stdout.split()[1]
    )
    assert maxmemory > 0
    assert series(text, "redis_memory_max_bytes") == {"": float(maxmemory)}
    assert series(text, "redis_memory_used_bytes")[""] > 0
    for name in ("redis_evicted_keys_total", "redis_rejected_connections_total"):
        assert set(series(text, name)) == {""}, f"{name} missing"


def test_redis_refuses_the_exporter_nothing(address):
    as_admin = {"user": ADMIN_USER, "password": ADMIN_PASSWORD}
    assert redis_cli(address, "ACL", "LOG", "RESET", **as_admin).stdout.strip() == "OK"
    for _ in range(3):
        metrics(address)
    log = redis_cli(address, "ACL", "LOG", **as_admin).stdout
    assert EXPORTER_USER not in log, log + journal(REDIS, UNIT)
    assert 'err="NOPERM"' not in metrics(address)


@pytest.mark.parametrize(
    "command",
    [
        ["GET", "ff:product:1"],
        ["SET", "ff:product:1", "x"],
        ["KEYS", "*"],
        ["SCAN", "0"],
        ["DBSIZE"],
        ["CONFIG", "SET", "maxmemory", "1mb"],
        ["CLIENT", "KILL", "TYPE", "normal"],
        ["FLUSHALL"],
        ["SUBSCRIBE", "ff:events"],
    ],
    ids=" ".join,
)
def test_exporter_user_reads_no_key_and_changes_nothing(address, command):
    answer = as_exporter(address, *command)
    assert "NOPERM" in answer.stdout + answer.stderr, answer.stdout + answer.stderr


def test_exporter_user_reads_the_servers_state(address):
    assert as_exporter(address, "PING").stdout.strip() == "PONG"
    assert "used_memory:" in as_exporter(address, "INFO", "memory").stdout


def test_exporter_password_is_in_no_process_list_nor_journal():
    processes = REDIS.check_output("ps -eww -o args")
    logs = REDIS.run("journalctl --no-pager -o cat").stdout
    # Booleans, not `in` on the texts: a failure must not print the password.
    in_processes, in_logs = EXPORTER_PASSWORD in processes, EXPORTER_PASSWORD in logs
    assert not in_processes, "the exporter's password is on a command line"
    assert not in_logs, "the exporter's password is in the journal"


def test_environment_file_is_read_by_the_exporters_group_only():
    assert REDIS.run(f"runuser -u prometheus -- test -r {ENV_FILE}").rc == 0
    assert REDIS.run(f"runuser -u nobody -- test -r {ENV_FILE}").rc != 0
    assert REDIS.run(f"runuser -u prometheus -- test -w {ENV_FILE}").rc != 0


def test_exporter_sandbox_rates_safe():
    assert exposure(REDIS, f"{UNIT}.service") <= MAX_EXPOSURE, REDIS.check_output(
        f"systemd-analyze security {shlex.quote(UNIT)}"
    )
