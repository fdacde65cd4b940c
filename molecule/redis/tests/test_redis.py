"""Behaviour of the redis role: password required, private address only, LRU
cache, runtime settings applied without a restart, bad variables refused."""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import testinfra
import yaml

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO_DIR = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
PROJECT_DIR = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
# The scenario's own group_vars hold the password the role was converged with.
PASSWORD = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())["provisioner"]["inventory"][
    "group_vars"
]["all"]["redis_password"]

REDIS = testinfra.get_host(f"ansible://redis-cache1?ansible_inventory={INVENTORY}")


def journal():
    return REDIS.run("journalctl -u redis-server --no-pager -n 40").stdout


@pytest.fixture(scope="module")
def private_ip():
    return REDIS.check_output("ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1")


def redis_cli(private_ip, *args, password=None):
    auth = f"REDISCLI_AUTH={password} " if password else ""
    return REDIS.run(f"{auth}redis-cli -h {private_ip} " + " ".join(args))


def test_ping_without_password_is_refused(private_ip):
    result = redis_cli(private_ip, "PING")
    assert "NOAUTH" in result.stdout, result.stdout + result.stderr + journal()


def test_ping_with_password_answers(private_ip):
    result = redis_cli(private_ip, "PING", password=PASSWORD)
    assert result.stdout.strip() == "PONG", result.stdout + result.stderr + journal()


def test_wrong_password_is_refused(private_ip):
    result = redis_cli(private_ip, "PING", password=secrets.token_hex(8))
    assert "WRONGPASS" in result.stdout + result.stderr, result.stdout + journal()


def test_listens_only_on_the_private_address(private_ip):
    listeners = REDIS.check_output("ss -Htln 'sport = :6379' | awk '{print $4}'").split()
    assert listeners == [f"{private_ip}:6379"], "\n".join(listeners) + journal()
    assert redis_cli("127.0.0.1", "PING", password=PASSWORD).rc != 0


def test_cache_eviction_policy(private_ip):
    result = redis_cli(private_ip, "CONFIG GET maxmemory-policy", password=PASSWORD)
    assert result.stdout.split() == ["maxmemory-policy", "allkeys-lru"], result.stdout
    result = redis_cli(private_ip, "CONFIG GET maxmemory", password=PASSWORD)
    assert result.stdout.split() == ["maxmemory", str(256 * 1024 * 1024)], result.stdout


def test_supervised_by_systemd():
    service = REDIS.service("redis-server")
    assert service.is_running, journal()
    assert service.is_enabled
    assert REDIS.check_output("systemctl show -P Type redis-server") == "notify"


def converge(*extra):
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            INVENTORY,
            str(SCENARIO_DIR / "converge.yml"),
            *extra,
        ],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_runtime_setting_applied_without_restart(private_ip):
    pid_before = REDIS.check_output("systemctl show -P MainPID redis-server")
    try:
        result = converge("-e", json.dumps({"redis_maxmemory": "128mb"}))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        value = redis_cli(private_ip, "CONFIG GET maxmemory", password=PASSWORD).stdout
        assert value.split() == ["maxmemory", str(128 * 1024 * 1024)], value
        assert REDIS.check_output("systemctl show -P MainPID redis-server") == pid_before
    finally:
        restored = converge()
        assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr


def run_role_with(extra_vars):
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "validation-only,",
            str(SCENARIO_DIR / "bad_vars.yml"),
            "-e",
            json.dumps(extra_vars),
        ],
        cwd=PROJECT_DIR,
        env={**os.environ, "ANSIBLE_INVENTORY_ENABLED": "host_list"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


GOOD_PASSWORD = {"redis_password": "a-good-password-1234"}


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        ({}, "missing required arguments: redis_password"),
        ({"redis_password": ""}, "redis_password must be at least 12 characters"),
        ({"redis_password": "has a space in it"}, "no whitespace, quotes or backslashes"),
        ({**GOOD_PASSWORD, "redis_port": 0}, "redis_port in 1..65535"),
        ({**GOOD_PASSWORD, "redis_maxmemory": "lots"}, "redis_maxmemory like 256mb"),
        ({**GOOD_PASSWORD, "redis_persistence": "sometimes"}, "redis_persistence"),
        ({**GOOD_PASSWORD, "redis_bind_addresses": []}, "at least one address"),
    ],
)
def test_bad_variables_fail_with_a_clear_message(extra_vars, message):
    result = run_role_with(extra_vars)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in output, output
    if extra_vars.get("redis_password"):
        assert extra_vars["redis_password"] not in output, "the password leaked into the output"
