"""Behaviour of the postgresql role: TLS only (verified against the stack's CA, rotated with a
reload), streaming replication over it, read-only replica, pg_hba, slots, the app's owner and
runtime roles, the service's sandbox."""

import json
import re
import shlex
import uuid

import pytest
from conftest import (
    APP_DATABASE,
    APP_ROLES,
    CA_FILE,
    CERTIFICATE_FILE,
    KEY_FILE,
    MEMBERS,
    REPLICATION_ROLE,
    SERVICE,
    VERIFY_FULL,
    diagnostics,
    eventually,
    fails_in_validation_on,
    host,
    postmaster_pid,
    psql,
    psql_as,
    run_converge,
    served_serial,
)
from testlib import changed_nothing

# systemd-analyze security rates a unit from 0 (locked down) to 10 (UNSAFE).
MAX_EXPOSURE = 3.0


def replica_address(replica):
    return replica.interface("eth0").addresses[0]


def test_leader_streams_to_the_replica(leader):
    states = eventually(
        lambda: psql(leader, "SELECT state FROM pg_stat_replication").stdout.split()
    )
    assert states == ["streaming"], f"pg_stat_replication: {states}" + diagnostics(leader)


def test_replication_streams_over_tls(leader, replica):
    encrypted = eventually(
        lambda: psql(
            leader,
            "SELECT s.ssl, s.version FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
        ).stdout.split()
    )
    assert encrypted == ["t|TLSv1.3"], f"replication connections: {encrypted}" + diagnostics(leader)
    conninfo = psql(replica, "SHOW primary_conninfo").stdout
    assert f"sslmode=verify-full sslrootcert={CA_FILE}" in conninfo, conninfo


def leader_address(leader):
    return leader.interface("eth0").addresses[0]


def app_client_and_server():
    """postgresql-replica is also in group app (molecule.yml), so the other member's pg_hba admits
    the app's roles from its address, whichever of the two leads: (client host, server address)."""
    server = host(MEMBERS[0])
    return host(MEMBERS[1]), server.interface("eth0").addresses[0]


def test_plaintext_connection_is_refused():
    client, server = app_client_and_server()
    refused = psql_as(client, "runtime", "SELECT 1", server=server,
                      tls="sslmode=disable")  # fmt: skip
    assert refused.rc != 0
    assert "no pg_hba.conf entry" in refused.stderr and "no encryption" in refused.stderr, (
        refused.stderr
    )


def test_verified_tls_connection_is_accepted():
    client, server = app_client_and_server()
    session = psql_as(
        client, "runtime", "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        server=server,
    )  # fmt: skip
    assert session.rc == 0, session.stderr
    assert session.stdout.strip() == "t|TLSv1.3"


def test_a_server_the_ca_does_not_vouch_for_is_refused():
    # Debian's public CAs do not vouch for the stack's server.
    client, server = app_client_and_server()
    refused = psql_as(
        client, "runtime", "SELECT 1", server=server,
        tls="sslmode=verify-full sslrootcert=/etc/ssl/certs/ca-certificates.crt",
    )  # fmt: skip
    assert refused.rc != 0
    assert "certificate verify failed" in refused.stderr, refused.stderr


@pytest.mark.parametrize("node", ["leader", "replica"])
def test_certificate_names_the_host_and_its_key_stays_on_it(node, request):
    host = request.getfixturevalue(node)
    text = host.check_output(f"openssl x509 -in {CERTIFICATE_FILE} -noout -text")
    address = host.interface("eth0").addresses[0]
    assert f"IP Address:{address}" in text and f"DNS:{host.backend.host}" in text, text
    assert host.run(f"openssl verify -CAfile {CA_FILE} {CERTIFICATE_FILE}").rc == 0
    key = host.file(KEY_FILE)
    assert (key.user, key.group, key.mode) == ("root", "postgres", 0o640)


def test_row_written_on_the_leader_is_read_on_replica(leader, replica):
    token = uuid.uuid4().hex  # interpolated into SQL below: a uuid, never outside input
    insert = f"INSERT INTO molecule_probe VALUES ('{token}')"  # noqa: S608
    select = f"SELECT token FROM molecule_probe WHERE token = '{token}'"  # noqa: S608
    write = psql(leader, f"CREATE TABLE IF NOT EXISTS molecule_probe (token text); {insert}")
    assert write.rc == 0, write.stderr + diagnostics(leader)
    found = eventually(lambda: psql(replica, select).stdout)
    assert found.strip() == token, "row not replicated within 30 s" + diagnostics(replica)


def test_replica_refuses_writes(replica):
    write = psql(replica, "CREATE TABLE molecule_write_on_replica (id int)")
    assert write.rc != 0
    assert "read-only transaction" in write.stderr, write.stderr + diagnostics(replica)


def test_replica_streams_from_its_slot(leader, replica):
    slots = psql(
        leader,
        "SELECT json_agg(json_build_object('name', slot_name, 'type', slot_type, 'active', active))"
        " FROM pg_replication_slots",
    )
    # Patroni names each member's slot after it.
    slot = replica.backend.host.replace("-", "_")
    assert json.loads(slots.stdout) == [{"name": slot, "type": "physical", "active": True}], (
        slots.stdout + diagnostics(leader)
    )


@pytest.mark.parametrize("node", ["leader", "replica"])
def test_pg_hba_has_no_trust_and_admits_the_replica(node, request, replica):
    host = request.getfixturevalue(node)
    rules = json.loads(
        psql(
            host,
            "SELECT json_agg(json_build_object('type', type, 'database', database,"
            " 'user', user_name,"
            " 'address', address, 'netmask', netmask, 'method', auth_method, 'error', error))"
            " FROM pg_hba_file_rules",
        ).stdout
    )
    assert [rule for rule in rules if rule["error"]] == []
    assert [rule for rule in rules if rule["method"] == "trust"] == []
    # Every TCP line demands TLS: no host (or hostnossl) line a plaintext client could match.
    assert {rule["type"] for rule in rules} == {"local", "hostssl"}, rules
    replication = {
        "type": "hostssl",
        "database": ["replication"],
        "user": ["replicator"],
        "address": replica_address(replica),
        "netmask": "255.255.255.255",
        "method": "scram-sha-256",
        "error": None,
    }
    assert replication in rules, rules


@pytest.mark.parametrize("node", ["leader", "replica"])
def test_a_member_reads_its_own_timeline_over_a_local_replication_connection(node, request):
    """Patroni decides whether a rejoining old leader must be rewound from the standby's own
    timeline, which it reads over a replication connection to localhost when the standby has no
    WAL receiver (its WAL diverged from the new leader's): refused, the standby never streams
    again. The connection is TLS verified against the stack's CA, as every TCP one."""
    host = request.getfixturevalue(node)
    conninfo = f"host=localhost user={REPLICATION_ROLE} replication=true {VERIFY_FULL}"
    identity = host.run(f"psql -XAt {shlex.quote(conninfo)} -c IDENTIFY_SYSTEM")
    assert identity.rc == 0, identity.stderr
    system = psql(host, "SELECT system_identifier FROM pg_control_system()").stdout.strip()
    assert identity.stdout.split("|")[0] == system, identity.stdout


def test_passwords_are_scram_hashed(leader):
    hashes = psql(
        leader,
        "SELECT rolname, left(rolpassword, 14) FROM pg_authid WHERE rolpassword IS NOT NULL",
    ).stdout.split()
    assert sorted(hashes) == sorted(
        [
            "flaskfleet|SCRAM-SHA-256$",
            "flaskfleet_monitor|SCRAM-SHA-256$",
            "flaskfleet_owner|SCRAM-SHA-256$",
            "replicator|SCRAM-SHA-256$",
            "rewinder|SCRAM-SHA-256$",
        ]
    )


def test_replication_password_file_is_private(replica):
    pgpass = replica.file("/run/postgresql/.pgpass.patroni")
    assert (pgpass.user, pgpass.mode) == ("postgres", 0o600)


def test_app_database_is_owned_by_the_owner_role(leader):
    owner = psql(
        leader,
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'flaskfleet'",
    ).stdout.strip()
    assert owner == APP_ROLES["owner"]


def test_app_roles_have_no_special_attributes(leader):
    attributes = psql(
        leader,
        "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls"
        " FROM pg_roles WHERE rolname IN ('flaskfleet', 'flaskfleet_owner') ORDER BY rolname",
    ).stdout.split()
    assert attributes == ["flaskfleet|f|f|f|f|f", "flaskfleet_owner|f|f|f|f|f"]


@pytest.fixture(scope="module")
def owner_table(leader):
    """A table with a serial column, created by the owner role as a migration would."""
    table = f"orders_{uuid.uuid4().hex[:12]}"
    create = psql_as(leader, "owner", f"CREATE TABLE {table} (id serial PRIMARY KEY, item text)")
    assert create.rc == 0, create.stderr + diagnostics(leader)
    return table


def test_runtime_role_reads_and_writes_the_owners_tables(leader, replica, owner_table):
    token = uuid.uuid4().hex
    dml = psql_as(
        leader,
        "runtime",
        f"INSERT INTO {owner_table} (item) VALUES ('draft');"  # noqa: S608 - uuid-based names
        f" UPDATE {owner_table} SET item = '{token}' WHERE item = 'draft';"
        f" INSERT INTO {owner_table} (item) VALUES ('to delete');"
        f" DELETE FROM {owner_table} WHERE item = 'to delete';"
        f" SELECT id, item FROM {owner_table} ORDER BY id",
    )
    assert dml.rc == 0, dml.stderr + diagnostics(leader)
    assert dml.stdout.split() == [f"1|{token}"]
    # The grants reach the replica with the WAL: the runtime role reads there too.
    read = eventually(
        lambda: psql_as(replica, "runtime", f"SELECT item FROM {owner_table}").stdout  # noqa: S608
    )
    assert read.strip() == token, "runtime role cannot read the row on the replica" + diagnostics(
        replica
    )


@pytest.mark.parametrize(
    ("statement", "refusal"),
    [
        ("DROP TABLE {table}", "must be owner of table"),
        ("ALTER TABLE {table} ADD COLUMN note text", "must be owner of table"),
        ("TRUNCATE {table}", "permission denied for table"),
        ("CREATE TABLE runtime_made (id int)", "permission denied for schema public"),
        ("CREATE TEMPORARY TABLE runtime_temp (id int)", "permission denied to create temporary"),
    ],
    ids=["drop", "alter", "truncate", "create", "create-temporary"],
)
def test_runtime_role_cannot_change_the_schema(leader, owner_table, statement, refusal):
    result = psql_as(leader, "runtime", statement.format(table=owner_table))
    assert result.rc != 0, f"{statement} was allowed"
    assert refusal in result.stderr, result.stderr


def test_runtime_role_has_exactly_its_grants(leader, owner_table):
    grants = f"""SELECT string_agg(privilege_type, ',' ORDER BY privilege_type)
        FROM information_schema.role_table_grants
        WHERE grantee = 'flaskfleet' AND table_name = '{owner_table}'"""  # noqa: S608
    table_privileges = psql(leader, grants, database=APP_DATABASE).stdout.strip()
    assert table_privileges == "DELETE,INSERT,SELECT,UPDATE"
    database_privileges = psql(
        leader,
        "SELECT string_agg(format('%s:%s:%s', role, privilege,"
        " has_database_privilege(role, 'flaskfleet', privilege)), ' ' ORDER BY role, privilege)"
        " FROM unnest(array['flaskfleet', 'replicator']) AS role,"
        " unnest(array['CONNECT', 'CREATE', 'TEMPORARY']) AS privilege",
    ).stdout.split()
    assert database_privileges == [
        "flaskfleet:CONNECT:t",
        "flaskfleet:CREATE:f",
        "flaskfleet:TEMPORARY:f",
        # PUBLIC's default CONNECT and TEMPORARY are gone.
        "replicator:CONNECT:f",
        "replicator:CREATE:f",
        "replicator:TEMPORARY:f",
    ]


def test_upgrade_hands_the_runtime_roles_objects_to_the_owner(leader):
    """side_effect.yml rebuilt the previous release's state: the runtime role owned everything."""
    owned = psql(
        leader,
        "SELECT count(*) FROM pg_shdepend WHERE deptype = 'o'"
        " AND refobjid = 'flaskfleet'::regrole AND dbid IN (0,"
        " (SELECT oid FROM pg_database WHERE datname = current_database()))",
        database=APP_DATABASE,
    ).stdout.strip()
    assert owned == "0"
    owners = psql(
        leader,
        "SELECT relname, pg_get_userbyid(relowner) FROM pg_class"
        " WHERE relname IN ('legacy_orders', 'legacy_orders_id_seq') ORDER BY relname",
        database=APP_DATABASE,
    ).stdout.split()
    assert owners == ["legacy_orders|flaskfleet_owner", "legacy_orders_id_seq|flaskfleet_owner"]
    write = psql_as(
        leader,
        "runtime",
        "INSERT INTO legacy_orders (item) VALUES ('placed after the upgrade');"
        " SELECT count(*) FROM legacy_orders",
    )
    assert write.rc == 0, write.stderr
    drop = psql_as(leader, "runtime", "DROP TABLE legacy_orders")
    assert "must be owner of table" in drop.stderr


@pytest.mark.parametrize("role", ["owner", "runtime"])
def test_app_roles_connect_from_the_app_group_only_to_the_app_database(role):
    client, server = app_client_and_server()
    allowed = psql_as(client, role, "SELECT current_user", server=server)
    assert allowed.rc == 0, allowed.stderr
    assert allowed.stdout.strip() == APP_ROLES[role]
    refused = psql_as(client, role, "SELECT 1", server=server, database="postgres")
    assert refused.rc != 0
    assert "no pg_hba.conf entry" in refused.stderr, refused.stderr


def test_a_second_converge_changes_nothing_after_the_upgrade_and_the_failover():
    """The role's first run since the side effect's crash, with the other member leading now:
    nothing to change on either member (the plays ask Patroni who leads, not the groups)."""
    returncode, output = run_converge()
    assert returncode == 0, output
    assert set(re.findall(r"changed=(\d+)", output)) == {"0"}, output


def test_rotation_reloads_the_new_certificate_without_restart(leader, replica):
    """-e pki_rotate=true: new keys and certificates on both servers, served after a reload (the
    postmasters keep running), and replication carries on over TLS."""
    server = leader_address(leader)
    pids = {name: postmaster_pid(host) for name, host in (("leader", leader), ("replica", replica))}
    serial_before = served_serial(replica, server)
    returncode, output = run_converge("pki_rotate=true")
    assert returncode == 0, output[-3000:]
    serial_after = served_serial(replica, server)
    assert serial_after != serial_before, diagnostics(leader)
    assert serial_after == leader.check_output(
        f"openssl x509 -in {CERTIFICATE_FILE} -noout -serial"
    )
    # The journals say what restarted a postmaster (Patroni's own log lines come first).
    assert pids == {"leader": postmaster_pid(leader), "replica": postmaster_pid(replica)}, (
        output[-3000:] + diagnostics(leader) + diagnostics(replica)
    )
    token = uuid.uuid4().hex  # interpolated into SQL below: a uuid, never outside input
    write = psql(leader, f"INSERT INTO molecule_probe VALUES ('{token}')")  # noqa: S608
    assert write.rc == 0, write.stderr
    select = f"SELECT token FROM molecule_probe WHERE token = '{token}'"  # noqa: S608
    assert eventually(lambda: psql(replica, select).stdout.strip() == token), diagnostics(replica)


@pytest.mark.parametrize("node", ["leader", "replica"])
def test_service_sandbox_rates_safe(node, request):
    host = request.getfixturevalue(node)
    report = host.run(f"systemd-analyze security {SERVICE}.service").stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report)
    assert match, report
    assert float(match.group(1)) <= MAX_EXPOSURE, report


@pytest.mark.parametrize("node", ["leader", "replica"])
def test_server_runs_as_postgres_without_capabilities(node, request):
    host = request.getfixturevalue(node)
    pid = host.run(f"systemctl show -P MainPID {SERVICE}").stdout.strip()
    assert pid not in ("", "0"), diagnostics(host)
    lines = host.file(f"/proc/{pid}/status").content_string.splitlines()
    status = dict(line.split(":\t", 1) for line in lines)
    assert status["Uid"].split()[0] == str(host.user("postgres").uid)
    assert (status["CapEff"], status["CapBnd"]) == ("0000000000000000", "0000000000000000")
    assert status["NoNewPrivs"] == "1"


def test_server_cannot_write_outside_its_directories(leader):
    # The postgres user owns its home, but the sandbox mounts it read-only.
    write = psql(leader, "COPY (SELECT 1) TO '/var/lib/postgresql/sandbox-probe'")
    assert write.rc != 0
    assert "Read-only file system" in write.stderr, write.stderr


def test_jit_is_off_under_memory_deny_write_execute(leader):
    assert psql(leader, "SHOW jit").stdout.strip() == "off"
    mdwe = leader.run(f"systemctl show -P MemoryDenyWriteExecute {SERVICE}").stdout.strip()
    assert mdwe == "yes"


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        (
            {"postgresql_replication_password": ""},
            "postgresql_replication_password must not be empty",
        ),
        ({"postgresql_rewind_password": ""}, "postgresql_rewind_password must not be empty"),
        ({"postgresql_patroni_ttl": 20}, "Patroni needs loop_wait + 2 x retry_timeout <= ttl"),
        (
            {"postgresql_watchdog_mode": "sometimes"},
            "value of postgresql_watchdog_mode must be one of",
        ),
        ({"postgresql_group": "databases"}, "must hold the database hosts; it holds none"),
        ({"postgresql_settings": ["shared_buffers=1GB"]}, "postgresql_settings"),
        ({"postgresql_app_owner": "flaskfleet"}, "must be four different roles"),
        ({"postgresql_settings": {"jit": True}}, "postgresql_settings may not set ['jit']"),
        ({"postgresql_settings": {"ssl": False}}, "postgresql_settings may not set ['ssl']"),
        (
            {
                "postgresql_hba_entries": [
                    {
                        "type": "host",
                        "database": "all",
                        "user": "all",
                        "address": "0.0.0.0/0",
                        "method": "scram-sha-256",
                    }
                ]
            },
            "value of type must be one of: local, hostssl",
        ),
        ({"pki_ca_dir": ""}, "pki_ca_dir must be an absolute directory on the controller"),
        (
            {"postgresql_tls_key_file": "key.pem"},
            "pki_certificate_file and pki_key_file must be absolute",
        ),
        (
            {"postgresql_data_device": "sdf"},
            "postgresql_data_device must be empty or a device path",
        ),
    ],
    ids=[
        "empty-password",
        "empty-rewind-password",
        "ttl-too-short",
        "unknown-watchdog-mode",
        "no-database-group",
        "settings-not-a-dict",
        "owner-is-runtime-role",
        "jit-in-settings",
        "ssl-in-settings",
        "plaintext-hba-entry",
        "no-ca",
        "relative-key-path",
        "data-device-not-a-path",
    ],
)
def test_bad_variable_fails_before_any_change(extra_vars, message):
    """Checked on the controller (the role runs against a host it cannot reach, so a check that
    let the value through would fail as unreachable instead). The scenario's addresses come
    from facts, which that run has none of: one stands in for every host's."""
    valid = {"private_ip": "192.0.2.10"}
    fails_in_validation_on(MEMBERS[0], "postgresql", {**valid, **extra_vars}, message)


def test_a_data_device_that_is_not_attached_fails_before_any_change():
    """The data volume's checks look at the host itself: a converge with a device that is not
    there stops before anything changes."""
    returncode, output = run_converge(
        "postgresql_data_device=/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0missing"
    )
    assert returncode != 0, output
    assert "is not a block device on" in output, output
    assert changed_nothing(output), output


def test_a_required_watchdog_a_container_cannot_have_fails_before_any_change():
    """A container has no watchdog device and cannot load softdog: required mode would leave
    Patroni never taking the lead, so the role refuses it before changing anything."""
    returncode, output = run_converge("postgresql_watchdog_mode=required")
    assert returncode != 0, output
    assert "can have no watchdog device (a container has none)" in output, output
    assert changed_nothing(output), output


@pytest.mark.parametrize(
    "path", ["/etc/udev/rules.d/60-patroni-watchdog.rules", "/etc/modules-load.d/softdog.conf"]
)
def test_a_container_gets_no_watchdog_rule_or_module(leader, replica, path):
    """The role told the container apart from a VM (systemd-detect-virt): it wrote no udev rule
    and loads no softdog there."""
    for member in (leader, replica):
        assert not member.file(path).exists, member.backend.host


def test_the_old_leader_rejoined_as_a_replica_after_its_crash(members, leader, replica):
    """The side effect killed the first leader's container under Patroni: the replica took the
    lead by itself, and the old leader, started again, rejoined as its replica with no operator
    action; both rows, before the crash and after the failover, are on both members."""
    assert (leader.backend.host, replica.backend.host) == MEMBERS[::-1], members
    assert members[MEMBERS[0]]["State"] in ("running", "streaming"), members
    assert members[MEMBERS[1]]["TL"] >= 2, members
    for member in (leader, replica):
        rows = eventually(
            lambda member=member: psql(member, "SELECT step FROM molecule_failover ORDER BY step")
        ).stdout
        assert rows.splitlines() == ["after the failover", "before the crash"], diagnostics(member)
