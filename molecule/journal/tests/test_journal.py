"""Behaviour of the journal role: a line logged on any host reaches the monitor's remote journal,
in a file of that host's; the upload resumes after the monitor's journal-remote was down; the
server speaks TLS with a certificate of the stack's CA, and its port admits only the uploaders;
sandboxed units; retention deletes old files; bad variables refused before any change."""

import json
import os
import subprocess
import uuid

import pytest
from conftest import (
    PROJECT_DIR,
    eventually,
    exposure,
    fails_in_validation,
    host,
    journal,
    private_ip,
)

MONITOR = host("journal-monitor")
APP = host("journal-app1")
OUTSIDER = host("journal-outsider")
PORT = 19532
REMOTE_DIR = "/var/log/journal/remote"
CA = "/etc/flaskfleet/tls/ca.crt"
MAX_EXPOSURE = 3.0
# `make logs` reaches <stack>-monitor with `lxc exec`; here the stack is
# "journal" and its monitor a container: this stand-in for lxc goes by docker.
LXC_SHIM = """#!/bin/sh
case "$1" in
  info) exec docker inspect "$2" >/dev/null ;;
  exec) name=$2; shift 3; exec docker exec "$name" "$@" ;;
esac
exit 1
"""
# Settings with which the role passes validation on the validation-only host.
VALID = {
    "journal_server_group": "ungrouped",
    "private_ip": "127.0.0.1",
    "pki_ca_dir": "/nonexistent/ca",
}


def state():
    return journal(MONITOR, "systemd-journal-remote") + journal(APP, "systemd-journal-upload")


def log_line(target, tag="fftest"):
    """Log a line with a fresh id on the host; return the id."""
    marker = f"ff-{uuid.uuid4().hex}"
    target.check_output(f"logger -t {tag} {marker}")
    return marker


def remote_entries(marker):
    """Entries of the monitor's remote journals whose message holds marker."""
    output = MONITOR.run(
        f"journalctl --directory={REMOTE_DIR} --merge -o json --no-pager --grep {marker}"
    ).stdout
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def arrives(marker, timeout=60):
    return eventually(lambda: remote_entries(marker), timeout=timeout, interval=2)


@pytest.mark.parametrize("target", [APP, MONITOR], ids=["app1", "monitor"])
def test_a_logged_line_reaches_the_monitor(target):
    marker = log_line(target)
    entries = arrives(marker)
    assert entries, f"{marker} not in {REMOTE_DIR}" + state()
    hostname = target.check_output("hostname")
    assert {entry["_HOSTNAME"] for entry in entries} == {hostname}
    assert {entry["SYSLOG_IDENTIFIER"] for entry in entries} == {"fftest"}


def test_each_host_has_a_journal_of_its_own():
    files = MONITOR.check_output(f"ls {REMOTE_DIR}").split()
    for target in (APP, MONITOR):
        assert f"remote-{private_ip(target)}.journal" in files, files


def test_upload_resumes_after_the_server_was_down():
    MONITOR.check_output("systemctl stop systemd-journal-remote.socket systemd-journal-remote")
    try:
        marker = log_line(APP)
        # The uploader fails meanwhile and keeps trying.
        assert eventually(
            lambda: (
                APP.run("systemctl show -P NRestarts systemd-journal-upload").stdout.strip()
                not in ("", "0")
            ),
            timeout=30,
        ), state()
    finally:
        MONITOR.check_output("systemctl start systemd-journal-remote.socket")
    assert arrives(marker, timeout=90), f"{marker} lost across the outage" + state()


def test_upload_continues_after_journal_remote_restarts():
    MONITOR.check_output("systemctl restart systemd-journal-remote")
    marker = log_line(APP)
    assert arrives(marker, timeout=90), state()


@pytest.fixture(scope="module")
def logs_command(tmp_path_factory):
    shim = tmp_path_factory.mktemp("lxc") / "lxc"
    shim.write_text(LXC_SHIM)
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}", "FF_STACK": "journal"}

    def logs(request_id):
        return subprocess.run(
            ["bash", str(PROJECT_DIR / "scripts" / "logs.sh"), request_id],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return logs


def test_make_logs_prints_one_requests_lines_from_every_host(logs_command):
    request_id = f"req.{uuid.uuid4().hex[:12]}-x"
    APP.check_output(f"logger -t fftest 'GET /api/v1/products request_id={request_id}'")
    MONITOR.check_output(f"logger -t fftest 'alert for request_id={request_id}'")
    # A longer id that starts with this one is another request.
    APP.check_output(f"logger -t fftest 'request_id={request_id}9'")
    assert arrives(request_id), state()

    def two_lines():
        result = logs_command(request_id)
        return result if len(result.stdout.splitlines()) >= 2 else None

    result = eventually(two_lines, timeout=60, interval=3)
    assert result and result.returncode == 0, logs_command(request_id)
    lines = result.stdout.splitlines()
    assert len(lines) == 2, lines
    assert sorted(line.split()[0] for line in lines) == ["journal-app1", "journal-monitor"], lines
    times = [line.split()[1] for line in lines]
    assert times == sorted(times), lines


@pytest.mark.parametrize("request_id", ["", "a b", "x" * 129, "id;rm", "ü"])
def test_make_logs_refuses_a_malformed_id(logs_command, request_id):
    result = logs_command(request_id)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "usage: make logs REQUEST_ID=<id>" in result.stderr


def test_make_logs_says_when_nothing_matches(logs_command):
    result = logs_command(f"absent-{uuid.uuid4().hex}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no lines about request" in result.stderr


def test_listens_on_the_private_address_only():
    address = private_ip(MONITOR)
    listeners = MONITOR.check_output(f"ss -Hltn 'sport = :{PORT}'")
    assert f"{address}:{PORT}" in listeners, listeners
    assert len(listeners.splitlines()) == 1, listeners


def test_the_server_speaks_tls_with_a_certificate_of_the_stack_ca():
    url = f"https://{private_ip(MONITOR)}:{PORT}/upload"
    verified = APP.run(f"curl -sS -o /dev/null -w '%{{http_code}}' --cacert {CA} {url}")
    # Verified handshake; journal-remote answers a GET with an HTTP error.
    assert verified.rc == 0 and verified.stdout.strip() not in ("", "000"), verified.stderr
    # Not trusted outside the stack: the system's CAs do not vouch for it.
    assert APP.run(f"curl -sS -o /dev/null {url}").rc == 60
    plain = APP.run(
        f"curl -sS -o /dev/null -w '%{{http_code}}' http://{private_ip(MONITOR)}:{PORT}/"
    )
    assert plain.stdout.strip() in ("", "000"), plain.stdout


def test_port_closed_to_hosts_outside_the_flow():
    address = private_ip(MONITOR)
    probe = f"timeout 3 bash -c 'exec 3<>/dev/tcp/{address}/{PORT}'"
    assert APP.run(probe).rc == 0, MONITOR.run("nft list ruleset").stdout
    assert OUTSIDER.run(probe).rc == 124, MONITOR.run("nft list ruleset").stdout


def test_retention_deletes_archived_files_beyond_max_use():
    """The scenario's journal_remote_max_use is 1M: an archived 8 MiB file goes, the hosts'
    active files stay."""
    active = MONITOR.check_output(f"ls {REMOTE_DIR}/remote-{private_ip(APP)}.journal")
    archived = active.removesuffix(".journal") + (
        "@0123456789abcdef0123456789abcdef-0000000000000001-0005d0a0b0c0d0e0.journal"
    )
    MONITOR.check_output(f"cp -p {active} {archived}")
    result = MONITOR.run("systemctl start journal-remote-vacuum.service")
    assert result.rc == 0, result.stderr + journal(MONITOR, "journal-remote-vacuum")
    assert not MONITOR.file(archived).exists, journal(MONITOR, "journal-remote-vacuum")
    assert MONITOR.file(active).exists
    assert MONITOR.check_output("systemctl is-enabled journal-remote-vacuum.timer") == "enabled"


@pytest.mark.parametrize(
    ("target", "unit"),
    [
        (MONITOR, "systemd-journal-remote.service"),
        (MONITOR, "journal-remote-vacuum.service"),
        (APP, "systemd-journal-upload.service"),
    ],
)
def test_units_are_sandboxed(target, unit):
    assert exposure(target, unit) <= MAX_EXPOSURE


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        ({**VALID, "journal_server_group": "monitor"}, "no host in journal_server_group 'monitor'"),
        ({**VALID, "journal_remote_port": 70000}, "journal_remote_port must be in 1..65535"),
        ({**VALID, "journal_remote_port": "web"}, "journal_remote_port"),
        (
            {**VALID, "journal_remote_listen_address": "monitor"},
            "journal_remote_listen_address must be an IP address",
        ),
        ({**VALID, "journal_remote_max_use": "lots"}, "journal_remote_max_use must be a number"),
        ({**VALID, "journal_remote_max_days": 0}, "journal_remote_max_days must be in 1..3650"),
        (
            {**VALID, "journal_upload_restart_seconds": 0},
            "journal_upload_restart_seconds must be in 1..300",
        ),
        ({**VALID, "pki_ca_dir": ""}, "pki_ca_dir must be an absolute directory"),
        (
            {**VALID, "journal_tls_key_file": "/etc/flaskfleet/tls/ca.crt"},
            "must be three different files",
        ),
    ],
)
def test_bad_variables_fail_in_validation(extra_vars, message):
    fails_in_validation("journal", extra_vars, message)
