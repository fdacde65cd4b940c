"""Behaviour of the pgbackrest role: the primary's WAL reaches the repository on the monitor; the
repository is encrypted and only its host holds the passphrase; a scheduled backup runs through
its unit and lands in the metrics node_exporter reads; each TLS server admits only the hosts it
serves, by firewall and by certificate; sandboxed units; bad variables refused before any
change."""

import re
import shlex
import uuid

import pytest
from conftest import (
    DB,
    REPO,
    REPO_PATH,
    RESTORE,
    TLS_PORT,
    diagnostics,
    eventually,
    exposure,
    fails_in_validation_on,
    pgbackrest,
    private_ip,
    sql_value,
    stanza_info,
    switch_wal_and_wait_for_archive,
)

METRICS_FILE = "/var/lib/prometheus/node-exporter/pgbackrest.prom"
LABEL = 'stanza="flaskfleet"'
TIMERS = [
    "pgbackrest-backup-full.timer",
    "pgbackrest-backup-diff.timer",
    "pgbackrest-backup-incr.timer",
    "pgbackrest-metrics.timer",
]
MAX_EXPOSURE = 3.0
# With these, the role passes validation on any of the scenario's hosts.
VALID = {"private_ip": "127.0.0.1"}


def archive_failures() -> int:
    return int(sql_value(DB, "SELECT failed_count FROM pg_stat_archiver"))


def backup_unit(backup_type: str):
    """Start the scheduled backup's unit as its timer would, and wait for it (a oneshot)."""
    result = REPO.run(f"systemctl start pgbackrest-backup@{backup_type}.service")
    assert result.rc == 0, result.stderr + diagnostics()
    return result


def series(text: str, name: str) -> dict[str, float]:
    """{labels: value} of every sample of the metric `name` in an exposition text."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return {labels: float(value) for labels, value in pattern.findall(text)}


def test_wal_reaches_the_repository():
    failures = archive_failures()
    table = f"wal_probe_{uuid.uuid4().hex[:8]}"
    sql_value(
        DB,
        f"CREATE TABLE {table} (id int PRIMARY KEY, note text);"  # noqa: S608 - uuid-based names
        f" INSERT INTO {table} SELECT g, md5(g::text) FROM generate_series(1, 1000) g",
    )
    segment = switch_wal_and_wait_for_archive()

    check = pgbackrest(REPO, "check")
    assert check.rc == 0, check.stdout + check.stderr + diagnostics()
    archives = stanza_info()["archive"]
    assert max(archive["max"] for archive in archives) >= segment, archives
    assert archive_failures() == failures, sql_value(DB, "SELECT * FROM pg_stat_archiver")


def test_repository_is_encrypted():
    marker = f"ffmarker{uuid.uuid4().hex}{uuid.uuid4().hex}"
    table = f"secret_{uuid.uuid4().hex[:8]}"
    write = f"CREATE TABLE {table} (value text); INSERT INTO {table} VALUES ('{marker}')"  # noqa: S608
    sql_value(DB, write)
    # The marker in the WAL archive and in a backup.
    switch_wal_and_wait_for_archive()
    backup_unit("diff")

    assert stanza_info()["cipher"] == "aes-256-cbc"
    found = REPO.run(f"grep -rlF {marker} {REPO_PATH}")
    assert found.rc == 1, f"the marker is in plain text in {found.stdout}{found.stderr}"
    # Every file pgBackRest wrote carries OpenSSL's header of encrypted data.
    plain = REPO.check_output(
        f"find {REPO_PATH} -type f -exec sh -c"
        ' \'head -c 8 "$1" | grep -q Salted__ || echo "$1"\' _ {} \\;'
    )
    assert plain == "", f"not encrypted: {plain}"
    assert int(REPO.check_output(f"find {REPO_PATH}/backup -type f | wc -l")) > 0


@pytest.mark.parametrize("target", [DB, RESTORE], ids=["db", "restore"])
def test_only_the_repository_host_holds_the_cipher_passphrase(target):
    passphrase = REPO.ansible.get_variables()["pgbackrest_cipher_pass"]
    config = target.file("/etc/pgbackrest.conf").content_string
    assert "repo1-cipher-pass" not in config
    assert "repo1-host-type=tls" in config
    # A boolean, not `in` on the text: a failure must not print the passphrase.
    anywhere = (
        target.run(f"grep -rqsF -- {shlex.quote(passphrase)} /etc /var/lib/postgresql").rc == 0
    )
    assert not anywhere, "the cipher passphrase is on a host that sends to the repository"
    assert REPO.run(f"grep -qF -- {shlex.quote(passphrase)} /etc/pgbackrest.conf").rc == 0
    assert REPO.run("runuser -u nobody -- cat /etc/pgbackrest.conf").rc != 0


def test_a_scheduled_backup_runs_and_is_reported():
    started = int(REPO.check_output("date +%s"))
    backup_unit("incr")

    def reported():
        text = REPO.run(f"cat {METRICS_FILE}").stdout
        run = series(text, "pgbackrest_backup_last_run_success")
        completed = series(text, "pgbackrest_backup_last_completion_timestamp_seconds")
        fresh = completed.get(f'{{{LABEL},type="incr"}}', 0) >= started
        return text if run.get(f'{{{LABEL},type="incr"}}') == 1.0 and fresh else None

    text = eventually(reported, timeout=60, interval=2)
    assert text, REPO.run(f"cat {METRICS_FILE}").stdout + diagnostics()
    completed = series(text, "pgbackrest_backup_last_completion_timestamp_seconds")
    assert {f'{{{LABEL},type="full"}}', f'{{{LABEL},type="incr"}}'} <= completed.keys(), completed
    assert series(text, "pgbackrest_stanza_status_code") == {f"{{{LABEL}}}": 0.0}
    wal = series(text, "pgbackrest_wal_archive_last_timestamp_seconds")
    assert list(wal) == [f"{{{LABEL}}}"] and wal[f"{{{LABEL}}}"] > 0, wal
    sizes = series(text, "pgbackrest_backup_last_size_bytes")
    assert all(size > 0 for size in sizes.values()), sizes
    assert [backup["type"] for backup in stanza_info()["backup"]][-1] == "incr"


@pytest.mark.parametrize("timer", TIMERS)
def test_backups_and_metrics_are_scheduled(timer):
    assert REPO.check_output(f"systemctl is-enabled {timer}") == "enabled"
    assert REPO.check_output(f"systemctl is-active {timer}") == "active"


def test_metrics_file_is_replaced_whole_and_readable():
    REPO.check_output("systemctl start pgbackrest-metrics.service")
    metrics = REPO.file(METRICS_FILE)
    assert metrics.mode == 0o644
    assert "pgbackrest_metrics_collected_timestamp_seconds" in metrics.content_string
    leftovers = REPO.check_output(f"ls -A {METRICS_FILE.rsplit('/', 1)[0]}")
    assert leftovers.split() == ["pgbackrest.prom"], leftovers


def test_the_restore_host_reads_the_repository_through_its_tls_server():
    info = stanza_info(RESTORE)
    assert info["status"]["code"] == 0, info
    assert info["backup"], info


def tcp_probe(source, target) -> int:
    """0 if source connects to target's TLS port, 124 if the connection times out (dropped)."""
    address = private_ip(target)
    return source.run(f"timeout 3 bash -c 'exec 3<>/dev/tcp/{address}/{TLS_PORT}'").rc


def test_firewall_admits_only_each_servers_clients():
    rules = REPO.run("nft list ruleset").stdout + DB.run("nft list ruleset").stdout
    assert tcp_probe(DB, REPO) == 0, rules
    assert tcp_probe(RESTORE, REPO) == 0, rules
    assert tcp_probe(REPO, DB) == 0, rules
    assert tcp_probe(RESTORE, DB) == 124, rules


def test_tls_server_refuses_a_certificate_it_does_not_name():
    """The database host's server admits the repository host's certificate only. The database
    host's own certificate, from the same CA, reaches it past the firewall (on the loopback) and is
    refused; the same command through the repository host's server is answered."""
    admitted = stanza_info(DB)
    assert admitted["status"]["code"] == 0, admitted
    # `info` reports a remote's error in its output and exits 0.
    refused = pgbackrest(DB, f"--repo1-host={private_ip(DB)}", "info")
    output = refused.stdout + refused.stderr
    assert "[AccessError]" in output and "access denied" in output, output


@pytest.mark.parametrize(
    ("target", "unit"),
    [
        (REPO, "pgbackrest.service"),
        (REPO, "pgbackrest-backup@incr.service"),
        (REPO, "pgbackrest-metrics.service"),
        (DB, "pgbackrest.service"),
    ],
    ids=["repo-server", "repo-backup", "repo-metrics", "db-server"],
)
def test_units_are_sandboxed(target, unit):
    assert exposure(target, unit) <= MAX_EXPOSURE


@pytest.mark.parametrize(
    ("limit", "extra_vars", "message"),
    [
        (
            "pgbackrest-db",
            {"pgbackrest_restore_target": "2026-12-01 13:45:00+00"},
            "which is not in 'restore': restores run on a scratch host only",
        ),
        (
            "pgbackrest-restore",
            {"pgbackrest_restore_target": "yesterday at noon"},
            "pgbackrest_restore_target must be a UTC time",
        ),
        (
            "pgbackrest-restore",
            {"pgbackrest_restore_target": "2026-12-01 13:45:00"},
            "pgbackrest_restore_target must be a UTC time",
        ),
        (
            "pgbackrest-repo",
            {"pgbackrest_cipher_pass": "short-passphrase"},
            "pgbackrest_cipher_pass must be set from a vault, at least 20 characters",
        ),
        (
            "pgbackrest-repo",
            {"pgbackrest_cipher_pass": ""},
            "pgbackrest_cipher_pass must be set from a vault, at least 20 characters",
        ),
        (
            "pgbackrest-db",
            {"pgbackrest_repo_group": "all"},
            "(pgbackrest_repo_group) must hold exactly one host",
        ),
        (
            "pgbackrest-db",
            {"pgbackrest_repo_group": "backup_repository"},
            "(pgbackrest_repo_group) must hold exactly one host",
        ),
        (
            "pgbackrest-db",
            {"pgbackrest_restore_group": "postgres_primary"},
            "a restore never runs over the live cluster",
        ),
        ("pgbackrest-repo", {"pgbackrest_stanza": "Flask Fleet"}, "pgbackrest_stanza must match"),
        (
            "pgbackrest-repo",
            {"pgbackrest_compress_type": "xz"},
            "pgbackrest_compress_type must be one of",
        ),
        (
            "pgbackrest-repo",
            {"pgbackrest_tls_port": 70000},
            "pgbackrest_tls_port must be in 1..65535",
        ),
    ],
    ids=[
        "target-on-a-database-host",
        "target-unparsable",
        "target-without-zone",
        "short-cipher-pass",
        "no-cipher-pass",
        "several-repository-hosts",
        "no-repository-host",
        "restore-host-is-a-database-host",
        "bad-stanza-name",
        "unknown-compression",
        "port-out-of-range",
    ],
)
def test_bad_variables_fail_in_validation(limit, extra_vars, message):
    fails_in_validation_on(limit, "pgbackrest", {**VALID, **extra_vars}, message)
