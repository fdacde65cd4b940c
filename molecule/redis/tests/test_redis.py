"""Behaviour of the redis role: TLS only, verified against the stack's CA, its
certificate rotated without a restart; ACL users only (default user off), the
app's user confined to its keys and commands, users and runtime settings
applied without a restart, a sandboxed unit, private address only, bad
variables refused before any change."""

import json
import os
import secrets
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import (
    PROJECT_DIR,
    exposure,
    fails_in_validation,
    host,
    journal,
    private_ip,
    run_playbook,
)

SCENARIO_DIR = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
# The scenario's group_vars hold the passwords the role was converged with;
# the app user's name comes from the file production takes it from.
SCENARIO_VARS = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())["provisioner"][
    "inventory"
]["group_vars"]["all"]
APP_ACL = yaml.safe_load((PROJECT_DIR / "group_vars/all/redis_acl.yml").read_text())
APP_USER = APP_ACL["flaskfleet_redis_app_user"]
APP_PASSWORD = SCENARIO_VARS["redis_users"][0]["password"]
ADMIN_USER = "admin"
ADMIN_PASSWORD = SCENARIO_VARS["redis_admin_password"]
ACL_FILE = "/etc/redis/users.acl"
CA_FILE = "/etc/flaskfleet/tls/ca.crt"
CERTIFICATE_FILE = "/etc/flaskfleet/tls/redis.crt"
KEY_FILE = "/etc/flaskfleet/tls/redis.key"
CA_DIR = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ca"
MAX_EXPOSURE = 3.0

REDIS = host("redis-cache1")


def redis_journal():
    return journal(REDIS, "redis-server")


def main_pid():
    return REDIS.check_output("systemctl show -P MainPID redis-server")


@pytest.fixture(scope="module")
def address():
    return private_ip(REDIS)


def redis_cli(address, *args, user=None, password=None, tls=f"--tls --cacert {CA_FILE}"):
    """redis-cli on the Redis host, over TLS verified against the stack's CA unless tls says
    otherwise; the answer (errors too) is in stdout."""
    auth = f"REDISCLI_AUTH={shlex.quote(password)} " if password else ""
    login = f"--user {user} " if user else ""
    command = " ".join(shlex.quote(arg) for arg in args)
    return REDIS.run(f"{auth}redis-cli {tls} {login}-h {address} {command}")


def served_serial(address):
    """The serial number of the certificate Redis serves to a new connection."""
    return REDIS.check_output(
        f"openssl s_client -connect {address}:6379 -CAfile {CA_FILE} -verify_return_error"
        " </dev/null 2>/dev/null | openssl x509 -noout -serial"
    )


def as_app(address, *args, password=APP_PASSWORD):
    return redis_cli(address, *args, user=APP_USER, password=password)


def as_admin(address, *args, password=ADMIN_PASSWORD):
    return redis_cli(address, *args, user=ADMIN_USER, password=password)


def test_plaintext_client_is_refused(address):
    result = redis_cli(address, "PING", user=APP_USER, password=APP_PASSWORD, tls="")
    assert "PONG" not in result.stdout, result.stdout + result.stderr + redis_journal()
    assert result.rc != 0 or "Error" in result.stdout + result.stderr, result.stdout


def test_tls_client_that_verifies_the_ca_is_accepted(address):
    assert as_app(address, "PING").stdout.strip() == "PONG", redis_journal()


def test_tls_client_that_trusts_another_ca_is_refused(address):
    # Debian's public CAs do not vouch for the stack's server.
    result = redis_cli(
        address, "PING", user=APP_USER, password=APP_PASSWORD,
        tls="--tls --cacert /etc/ssl/certs/ca-certificates.crt",
    )  # fmt: skip
    answer = result.stdout + result.stderr
    assert "PONG" not in result.stdout
    assert "certificate verify failed" in answer, answer


def test_certificate_names_the_host_and_its_key_stays_on_it(address):
    text = REDIS.check_output(f"openssl x509 -in {CERTIFICATE_FILE} -noout -text")
    assert f"IP Address:{address}" in text and "DNS:redis-cache1" in text, text
    assert REDIS.run(f"openssl verify -CAfile {CA_FILE} {CERTIFICATE_FILE}").rc == 0
    key = REDIS.file(KEY_FILE)
    assert (key.user, key.group, key.mode) == ("root", "redis", 0o640)
    # The controller holds the CA only: no server key was copied there.
    assert sorted(path.name for path in CA_DIR.iterdir()) == ["ca.crt", "ca.csr", "ca.key"]
    assert (CA_DIR / "ca.key").stat().st_mode & 0o777 == 0o600
    assert CA_DIR.stat().st_mode & 0o777 == 0o700


def test_unauthenticated_client_is_refused(address):
    result = redis_cli(address, "PING")
    assert result.stdout.startswith("NOAUTH"), result.stdout + result.stderr + redis_journal()


@pytest.mark.parametrize(
    "password", [APP_PASSWORD, ADMIN_PASSWORD, "any-password-at-all"], ids=["app", "admin", "other"]
)
def test_default_user_is_off(address, password):
    # Password-only AUTH is AUTH as `default`: refused whatever the password.
    result = redis_cli(address, "PING", password=password)
    assert "WRONGPASS" in result.stderr, result.stdout + result.stderr
    assert result.stdout.startswith("NOAUTH"), result.stdout
    result = redis_cli(address, "PING", user="default", password=password)
    assert "WRONGPASS" in result.stderr, result.stdout + result.stderr


def test_wrong_password_is_refused(address):
    result = as_app(address, "PING", password=secrets.token_hex(8))
    assert "WRONGPASS" in result.stderr, result.stdout + result.stderr + redis_journal()


def test_app_user_reads_and_writes_its_keys(address):
    key = f"ff:test:{secrets.token_hex(4)}"
    assert as_app(address, "SET", key, "cached").stdout.strip() == "OK", redis_journal()
    assert as_app(address, "GET", key).stdout.strip() == "cached"
    script = "return redis.call('APPEND', KEYS[1], ARGV[1])"
    assert as_app(address, "EVAL", script, "1", key, "-more").stdout.strip() == "11"
    assert as_app(address, "DEL", key).stdout.strip() == "1"


@pytest.mark.parametrize(
    "command",
    [
        ["FLUSHALL"],
        ["FLUSHDB"],
        ["CONFIG", "GET", "maxmemory"],
        ["ACL", "LIST"],
        ["KEYS", "*"],
        ["SET", "outside:ff", "value"],
        ["EVAL", "return redis.call('SET', KEYS[1], 'value')", "1", "outside:ff"],
    ],
    ids=" ".join,
)
def test_app_user_is_refused(address, command):
    result = as_app(address, *command)
    assert result.stdout.startswith("NOPERM"), result.stdout + result.stderr


def test_app_user_may_not_debug(address):
    # Redis refuses DEBUG to every remote client before it looks at the ACL,
    # so the app's rules are asked directly.
    result = as_admin(address, "ACL", "DRYRUN", APP_USER, "DEBUG", "SLEEP", "0")
    assert "no permissions to run the 'debug' command" in result.stdout, result.stdout
    assert as_app(address, "DEBUG", "SLEEP", "0").stdout.startswith(("NOPERM", "ERR"))


def test_admin_reads_the_configuration(address):
    result = as_admin(address, "CONFIG", "GET", "maxmemory-policy")
    assert result.stdout.split() == ["maxmemory-policy", "allkeys-lru"], result.stdout
    result = as_admin(address, "CONFIG", "GET", "maxmemory")
    assert result.stdout.split() == ["maxmemory", str(256 * 1024 * 1024)], result.stdout


def test_users_file_holds_hashes_only():
    acl = REDIS.file(ACL_FILE)
    assert (acl.user, acl.group, acl.mode) == ("root", "redis", 0o640)
    content = acl.content_string
    assert APP_PASSWORD not in content and ADMIN_PASSWORD not in content
    assert "user default reset ~* &* +@all" in content.splitlines()


@pytest.mark.parametrize("command", [["CONFIG", "REWRITE"], ["ACL", "SAVE"]], ids=" ".join)
def test_server_cannot_rewrite_its_configuration(address, command):
    before = REDIS.check_output("sha256sum /etc/redis/*")
    result = as_admin(address, *command)
    assert result.stdout.startswith("ERR"), result.stdout
    assert REDIS.check_output("sha256sum /etc/redis/*") == before


def test_sandbox_exposure_score():
    score = exposure(REDIS, "redis-server.service")
    assert score <= MAX_EXPOSURE, REDIS.check_output("systemd-analyze security redis-server")


def test_listens_only_on_the_private_address(address):
    listeners = REDIS.check_output("ss -Htln 'sport = :6379' | awk '{print $4}'").split()
    assert listeners == [f"{address}:6379"], "\n".join(listeners) + redis_journal()
    assert as_admin("127.0.0.1", "PING").rc != 0


def test_supervised_by_systemd():
    service = REDIS.service("redis-server")
    assert service.is_running, redis_journal()
    assert service.is_enabled
    assert REDIS.check_output("systemctl show -P Type redis-server") == "notify"


def converge(*extra_vars):
    """The scenario's converge playbook with -e arguments; its output."""
    code, output = run_playbook(SCENARIO_DIR / "converge.yml", *extra_vars)
    assert code == 0, output[-3000:]
    return output


def test_rotation_serves_a_new_certificate_without_restart(address):
    pid_before, serial_before = main_pid(), served_serial(address)
    key_before = REDIS.check_output(f"sha256sum {KEY_FILE}")
    output = converge("pki_rotate=true")
    assert "Load the Redis TLS certificate" in output, output[-3000:]
    serial_after = served_serial(address)
    assert serial_after and serial_after != serial_before, redis_journal()
    assert serial_after == REDIS.check_output(f"openssl x509 -in {CERTIFICATE_FILE} -noout -serial")
    assert REDIS.check_output(f"sha256sum {KEY_FILE}") != key_before, "the key was not renewed"
    assert main_pid() == pid_before, redis_journal()
    assert as_app(address, "PING").stdout.strip() == "PONG"


def test_runtime_setting_applied_without_restart(address):
    pid_before = main_pid()
    try:
        converge(json.dumps({"redis_maxmemory": "128mb"}))
        value = as_admin(address, "CONFIG", "GET", "maxmemory").stdout
        assert value.split() == ["maxmemory", str(128 * 1024 * 1024)], value
        assert main_pid() == pid_before
    finally:
        converge()


def test_app_password_rotation_reloads_without_restart(address):
    pid_before = main_pid()
    new_password = f"rotated-{secrets.token_hex(8)}"
    app_user = {
        "name": APP_USER,
        "password": new_password,
        "rules": "{{ flaskfleet_redis_app_acl_rules }}",
    }
    try:
        other_users = SCENARIO_VARS["redis_users"][1:]
        output = converge(json.dumps({"redis_users": [app_user, *other_users]}))
        assert new_password not in output, "the password leaked into the output"
        assert as_app(address, "PING", password=new_password).stdout.strip() == "PONG"
        assert "WRONGPASS" in as_app(address, "PING").stderr
        assert main_pid() == pid_before, redis_journal()
    finally:
        converge()
    assert as_app(address, "PING").stdout.strip() == "PONG"


def test_admin_password_rotation(address):
    # The running server only knows the old admin password: the role restarts it.
    new_password = f"rotated-{secrets.token_hex(8)}"
    try:
        output = converge(json.dumps({"redis_admin_password": new_password}))
        assert new_password not in output, "the password leaked into the output"
        assert as_admin(address, "PING", password=new_password).stdout.strip() == "PONG"
        assert "WRONGPASS" in as_admin(address, "PING").stderr
        assert as_app(address, "PING").stdout.strip() == "PONG"
    finally:
        converge()
    assert as_admin(address, "PING").stdout.strip() == "PONG"


ADMIN = {"redis_admin_password": "a-good-admin-password-1"}
WITH_CA = {**ADMIN, "pki_ca_dir": str(CA_DIR)}
USER = {"name": "app", "password": "a-good-user-password-1", "rules": "resetkeys ~ff:* +get"}


def user(**changes):
    return {**USER, **changes}


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        ({}, "missing required arguments: redis_admin_password"),
        ({"redis_admin_password": "tooShort9x"}, "Offending: ['redis_admin_password']"),
        (
            {**ADMIN, "redis_users": [{**USER, "password": "tooShort9x"}]},
            "Offending: ['redis_users app']",
        ),
        (
            {**ADMIN, "redis_users": [{**USER, "password": "has a space in it"}]},
            "no whitespace, quotes or backslashes",
        ),
        ({**ADMIN, "redis_users": [user(), user()]}, "be unique"),
        ({**ADMIN, "redis_users": [user(name="default")]}, "neither 'default' nor the admin's"),
        ({**ADMIN, "redis_users": [user(name="admin")]}, "neither 'default' nor the admin's"),
        ({**ADMIN, "redis_users": [user(name="App")]}, "a lowercase letter then"),
        ({**ADMIN, "redis_users": [user(rules="~ff:* nopass +@all")]}, "Offending users: ['app']"),
        ({**ADMIN, "redis_users": [user(rules="~ff:* >plaintext +get")]}, "without nopass"),
        ({**ADMIN, "redis_users": [user(rules="reset ~* +@all")]}, "without nopass"),
        ({**ADMIN, "redis_users": [user(rules="+get\nuser evil on nopass")]}, "on one line"),
        ({**ADMIN, "redis_users": [user(rules=" ")]}, "non-empty ACL rule string"),
        (
            {**ADMIN, "redis_users": [{"name": "app", "password": USER["password"]}]},
            "missing required arguments: rules",
        ),
        ({**ADMIN, "redis_port": 0}, "redis_port in 1..65535"),
        ({**ADMIN, "redis_maxmemory": "lots"}, "redis_maxmemory like 256mb"),
        ({**ADMIN, "redis_persistence": "sometimes"}, "redis_persistence"),
        ({**ADMIN, "redis_bind_addresses": []}, "at least one address"),
        ({**ADMIN}, "pki_ca_dir must be an absolute directory on the controller"),
        ({**ADMIN, "pki_ca_dir": "relative/ca"}, "pki_ca_dir must be an absolute directory"),
        (
            {**WITH_CA, "redis_tls_key_file": "/etc/../key"},
            "pki_certificate_file and pki_key_file must be absolute paths",
        ),
        (
            {**WITH_CA, "redis_tls_key_file": "/etc/flaskfleet/tls/ca.crt"},
            "must be three different files",
        ),
        (
            {**WITH_CA, "pki_renew_days": 400},
            "need 1 <= pki_renew_days < pki_certificate_days",
        ),
        (
            {**WITH_CA, "pki_certificate_sans": ["redis.internal"]},
            "pki_certificate_sans must be a non-empty list",
        ),
    ],
)
def test_bad_variables_fail_with_a_clear_message(extra_vars, message):
    output = fails_in_validation("redis", extra_vars, message)
    passwords = [extra_vars.get("redis_admin_password", "")] + [
        entry["password"] for entry in extra_vars.get("redis_users", [])
    ]
    for password in filter(None, passwords):
        assert password not in output, "a password leaked into the output"
