"""Behaviour of the exporters role's PostgreSQL exporter beside the primary and the replica: it
answers on the private address only, reaches its server as the monitoring role, and serves every
series monitoring/rules/postgres.yml reads; the monitoring role's password stays out of process
lists, journals and other users' reach; the monitoring role reads statistics, not the app's data."""

import re
import shlex

import pytest
from conftest import APP_DATABASE, CA_FILE, MONITOR_ROLE, eventually, psql
from testlib import exposure, journal, private_ip

UNIT = "prometheus-postgres-exporter"
PORT = 9187
ENV_FILE = "/etc/default/prometheus-postgres-exporter"
MAX_EXPOSURE = 3.0


def metrics(host):
    """The exporter's /metrics as the monitor would scrape it: on the host's private address."""
    url = shlex.quote(f"http://{private_ip(host)}:{PORT}/metrics")
    return host.run(f"curl -sS --max-time 10 {url}").stdout


def series(text, name):
    """{labels: value} of every sample of the metric `name` in an exposition text."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return {labels or "": float(value) for labels, value in pattern.findall(text)}


def value_once_up(host, name):
    """The unlabelled series `name` once the exporter reports pg_up 1 (it reconnects on its own
    after the scenario's side effect rebuilt the replica)."""

    def scraped_up():
        text = metrics(host)
        return text if series(text, "pg_up") == {"": 1.0} else ""

    text = eventually(scraped_up)
    assert text, "pg_up is not 1" + journal(host, UNIT)
    return series(text, name)


def monitor_password(host):
    return host.ansible.get_variables()["postgresql_monitor_password"]


@pytest.mark.parametrize("node", ["leader", "replica"])
def test_exporter_listens_only_on_the_private_address(node, request):
    host = request.getfixturevalue(node)
    listeners = {
        socket.rsplit(":", 1)[0]
        for socket in host.check_output("ss -Htln").split()
        if socket.endswith(f":{PORT}")
    }
    assert listeners == {private_ip(host)}, listeners


@pytest.mark.parametrize(("node", "is_replica"), [("leader", 0.0), ("replica", 1.0)])
def test_exporter_reaches_its_server_and_knows_its_role(node, is_replica, request):
    host = request.getfixturevalue(node)
    # One sample each, labelled with the server (the queries file's series carry it).
    assert list(value_once_up(host, "pg_replication_is_replica").values()) == [is_replica]
    lag = list(value_once_up(host, "pg_replication_lag_seconds").values())
    assert len(lag) == 1, lag
    assert lag[0] >= 0


def test_primary_reports_the_standby_and_its_slot(leader, replica):
    slot = psql(leader, "SELECT slot_name FROM pg_replication_slots").stdout.strip()
    assert slot, "the primary has no replication slot"
    address = private_ip(replica)

    def scraped():
        text = metrics(leader)
        lag = series(text, "pg_stat_replication_pg_wal_lsn_diff")
        streaming = [
            labels
            for labels in lag
            if f'slot_name="{slot}"' in labels
            and f'client_addr="{address}"' in labels
            and 'state="streaming"' in labels
            and "application_name=" in labels
        ]
        active = series(text, "pg_replication_slots_active")
        retained = series(text, "pg_replication_slots_pg_wal_lsn_diff")
        slot_active = [value for labels, value in active.items() if f'slot_name="{slot}"' in labels]
        slot_retained = [labels for labels in retained if f'slot_name="{slot}"' in labels]
        return streaming and slot_active == [1.0] and slot_retained and text

    text = eventually(scraped)
    assert text, (
        "no streaming standby on its slot in the primary's metrics:\n"
        + "\n".join(
            line
            for line in metrics(leader).splitlines()
            if line.startswith(("pg_stat_replication", "pg_replication_slots"))
        )
        + journal(leader, UNIT)
    )


def test_replica_lists_no_standby_of_its_own(replica):
    assert value_once_up(replica, "pg_stat_replication_pg_wal_lsn_diff") == {}


@pytest.mark.parametrize("node", ["leader", "replica"])
def test_monitor_password_is_in_no_process_list_nor_journal(node, request):
    host = request.getfixturevalue(node)
    password = monitor_password(host)
    processes = host.check_output("ps -eww -o args")
    logs = host.run("journalctl --no-pager -o cat").stdout
    # Booleans, not `in` on the texts: a failure must not print the password.
    in_processes, in_logs = password in processes, password in logs
    assert not in_processes, "the monitoring password is on a command line"
    assert not in_logs, "the monitoring password is in the journal"


@pytest.mark.parametrize("node", ["leader", "replica"])
def test_environment_file_is_read_by_the_exporters_group_only(node, request):
    host = request.getfixturevalue(node)
    assert host.run(f"runuser -u prometheus -- test -r {ENV_FILE}").rc == 0
    assert host.run(f"runuser -u nobody -- test -r {ENV_FILE}").rc != 0
    assert host.run(f"runuser -u prometheus -- test -w {ENV_FILE}").rc != 0


def test_monitor_role_reads_statistics_not_the_apps_data(leader, replica):
    membership = psql(
        replica,
        "SELECT pg_has_role(rolname, 'pg_monitor', 'member'),"
        " rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication"
        " FROM pg_roles WHERE rolname = 'flaskfleet_monitor'",
    ).stdout.strip()
    assert membership == "t|f", f"on the replica (by replication): {membership!r}"
    conninfo = (
        f"host=127.0.0.1 user={MONITOR_ROLE} dbname={APP_DATABASE}"
        f" sslmode=verify-full sslrootcert={CA_FILE}"
    )
    refused = leader.run(f"psql -XAtq {shlex.quote(conninfo)} -c 'SELECT 1'")
    assert refused.rc != 0
    assert "permission denied for database" in refused.stderr, refused.stderr


@pytest.mark.parametrize("node", ["leader", "replica"])
def test_exporter_sandbox_rates_safe(node, request):
    host = request.getfixturevalue(node)
    assert exposure(host, f"{UNIT}.service") <= MAX_EXPOSURE
