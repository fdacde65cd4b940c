"""Fixtures for the postgresql scenario: the Patroni cluster's leader and replica as testinfra hosts
(whichever leads: the side effect crashes the first leader)."""

import json
import shlex
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_shared"))

from testlib import eventually, fails_in_validation_on, host, run_playbook, write_private_file

# The tests import these testlib helpers from here with the scenario's own helpers.
__all__ = ["eventually", "fails_in_validation_on", "host"]

SCENARIO_DIR = Path(__file__).resolve().parent.parent
SERVICE = "patroni"
MEMBERS = ("postgresql-primary", "postgresql-replica")
PATRONICTL = "patronictl --config-file /etc/patroni/config.yml"
APP_DATABASE = "flaskfleet"
APP_ROLES = {"owner": "flaskfleet_owner", "runtime": "flaskfleet"}
REPLICATION_ROLE = "replicator"
MONITOR_ROLE = "flaskfleet_monitor"
CA_FILE = "/etc/flaskfleet/tls/ca.crt"
CERTIFICATE_FILE = "/etc/flaskfleet/tls/postgresql.crt"
KEY_FILE = "/etc/flaskfleet/tls/postgresql.key"
# TLS that checks the server's certificate and address against the stack's CA, as the app does.
VERIFY_FULL = f"sslmode=verify-full sslrootcert={CA_FILE}"


def cluster():
    """Patroni's view of the cluster (patronictl list), asked on the first member."""
    return json.loads(host(MEMBERS[0]).check_output(f"{PATRONICTL} list --format json"))


@pytest.fixture(scope="session")
def members():
    return {member["Member"]: member for member in cluster()}


@pytest.fixture(scope="session")
def leader(members):
    (name,) = [name for name, member in members.items() if member["Role"] == "Leader"]
    return host(name)


@pytest.fixture(scope="session")
def replica(members):
    (name,) = [name for name, member in members.items() if member["Role"] != "Leader"]
    return host(name)


def diagnostics(host):
    """Patroni's journal (the server logs there too), for assertion messages."""
    journal = host.run(f"journalctl -u {SERVICE} --no-pager -n 60").stdout
    return f"\n--- journalctl -u {SERVICE}:\n{journal}"


def psql(host, sql, database="postgres"):
    """Run one SQL statement as the postgres superuser; returns testinfra's CommandResult."""
    return host.run(
        f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d {database} -c {shlex.quote(sql)}"
    )


def pgpass_line(user, password):
    """A ~/.pgpass line for any server and database, ':' and '\\' escaped as libpq reads them."""
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:{user}:{escaped}"


@pytest.fixture(scope="session", autouse=True)
def _passwords_in_pgpass():
    """The tests' TCP connections as the app's, the replication and the monitoring roles read
    the inventory's passwords from root's ~/.pgpass on each member, never from a command line."""
    for name in MEMBERS:
        member = host(name)
        variables = member.ansible.get_variables()
        lines = [
            pgpass_line(APP_ROLES["owner"], variables["postgresql_app_owner_password"]),
            pgpass_line(APP_ROLES["runtime"], variables["postgresql_app_password"]),
            pgpass_line(REPLICATION_ROLE, variables["postgresql_replication_password"]),
            pgpass_line(MONITOR_ROLE, variables["postgresql_monitor_password"]),
        ]
        write_private_file(member, "/root/.pgpass", "\n".join(lines) + "\n")


def psql_as(host, role, sql, server="127.0.0.1", database=APP_DATABASE, tls=VERIFY_FULL):
    """Run SQL as one of the app's roles ('owner' or 'runtime'), over TCP with its password and,
    unless tls says otherwise, TLS verified against the stack's CA."""
    conninfo = f"host={server} user={APP_ROLES[role]} dbname={database} {tls}"
    return host.run(f"psql -XAtq -v ON_ERROR_STOP=1 {shlex.quote(conninfo)} -c {shlex.quote(sql)}")


def served_serial(host, server):
    """The serial number of the certificate PostgreSQL at server serves to a new connection."""
    return host.check_output(
        f"openssl s_client -starttls postgres -connect {server}:5432 -CAfile {CA_FILE}"
        " -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -serial"
    )


def postmaster_pid(host):
    return host.check_output("head -n 1 /var/lib/postgresql/15/main/postmaster.pid")


def run_converge(*extra_vars):
    """Run the scenario's converge playbook with extra -e arguments; returns (exit code, output)."""
    return run_playbook(SCENARIO_DIR / "converge.yml", *extra_vars)
