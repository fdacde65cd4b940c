"""Behaviour of the postgresql role: streaming replication, read-only replica, pg_hba, slots."""

import json
import re
import uuid

import pytest
from conftest import diagnostics, eventually, psql, run_converge


def replica_address(replica):
    return replica.interface("eth0").addresses[0]


def test_primary_streams_to_the_replica(primary):
    states = eventually(
        lambda: psql(primary, "SELECT state FROM pg_stat_replication").stdout.split()
    )
    assert states == ["streaming"], f"pg_stat_replication: {states}" + diagnostics(primary)


def test_row_written_on_primary_is_read_on_replica(primary, replica):
    token = uuid.uuid4().hex  # interpolated into SQL below: a uuid, never outside input
    insert = f"INSERT INTO molecule_probe VALUES ('{token}')"  # noqa: S608
    select = f"SELECT token FROM molecule_probe WHERE token = '{token}'"  # noqa: S608
    write = psql(primary, f"CREATE TABLE IF NOT EXISTS molecule_probe (token text); {insert}")
    assert write.rc == 0, write.stderr + diagnostics(primary)
    found = eventually(lambda: psql(replica, select).stdout)
    assert found.strip() == token, "row not replicated within 30 s" + diagnostics(replica)


def test_replica_refuses_writes(replica):
    write = psql(replica, "CREATE TABLE molecule_write_on_replica (id int)")
    assert write.rc != 0
    assert "read-only transaction" in write.stderr, write.stderr + diagnostics(replica)


def test_replica_streams_from_its_slot(primary):
    slots = psql(
        primary,
        "SELECT json_agg(json_build_object('name', slot_name, 'type', slot_type, 'active', active))"
        " FROM pg_replication_slots",
    )
    assert json.loads(slots.stdout) == [
        {"name": "postgresql_replica", "type": "physical", "active": True}
    ], slots.stdout + diagnostics(primary)


@pytest.mark.parametrize("node", ["primary", "replica"])
def test_pg_hba_has_no_trust_and_admits_the_replica(node, request, replica):
    host = request.getfixturevalue(node)
    rules = json.loads(
        psql(
            host,
            "SELECT json_agg(json_build_object('database', database, 'user', user_name,"
            " 'address', address, 'netmask', netmask, 'method', auth_method, 'error', error))"
            " FROM pg_hba_file_rules",
        ).stdout
    )
    assert [rule for rule in rules if rule["error"]] == []
    assert [rule for rule in rules if rule["method"] == "trust"] == []
    replication = {
        "database": ["replication"],
        "user": ["replicator"],
        "address": replica_address(replica),
        "netmask": "255.255.255.255",
        "method": "scram-sha-256",
        "error": None,
    }
    assert replication in rules, rules


def test_passwords_are_scram_hashed(primary):
    hashes = psql(
        primary,
        "SELECT rolname, left(rolpassword, 14) FROM pg_authid WHERE rolpassword IS NOT NULL",
    ).stdout.split()
    assert sorted(hashes) == sorted(["flaskfleet|SCRAM-SHA-256$", "replicator|SCRAM-SHA-256$"])


def test_replication_password_file_is_private(replica):
    pgpass = replica.file("/var/lib/postgresql/.pgpass")
    assert (pgpass.user, pgpass.mode) == ("postgres", 0o600)


def test_app_database_is_owned_by_the_app_user(primary):
    owner = psql(
        primary,
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'flaskfleet'",
    ).stdout.strip()
    assert owner == "flaskfleet"


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        (
            "postgresql_replication_password=",
            "postgresql_replication_password must not be empty",
        ),
        (
            "postgresql_replication_slot=Replica-1",
            "Replication slot names may only contain [a-z0-9_]",
        ),
        (
            '{"postgresql_settings": ["shared_buffers=1GB"]}',
            "postgresql_settings",
        ),
    ],
    ids=["empty-password", "bad-slot-name", "settings-not-a-dict"],
)
def test_bad_variable_fails_before_any_change(extra_vars, message):
    returncode, output = run_converge(extra_vars)
    assert returncode != 0, output
    assert message in output, output
    assert set(re.findall(r"changed=(\d+)", output)) <= {"0"}, output
