"""The pgbackrest scenario's hosts, and SQL and pgBackRest on them, with the shared test library
(molecule/_shared/testlib.py)."""

import json
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "_shared"))

from testlib import (
    eventually,
    exposure,
    fails_in_validation_on,
    host,
    journal,
    private_ip,
    run_playbook,
)

__all__ = [
    "eventually",
    "exposure",
    "fails_in_validation_on",
    "host",
    "journal",
    "private_ip",
    "run_playbook",
]

SCENARIO_DIR = Path(__file__).resolve().parent.parent
REPO = host("pgbackrest-repo")
DB = host("pgbackrest-db")
RESTORE = host("pgbackrest-restore")
STANZA = "flaskfleet"
REPO_PATH = "/var/lib/pgbackrest"
TLS_PORT = 8432
APP_DATABASE = "flaskfleet"


def diagnostics() -> str:
    """The TLS servers' journals and Patroni's, which holds the server's log (archive-push
    reports there)."""
    return journal(REPO, "pgbackrest", "pgbackrest-backup@*", "pgbackrest-metrics") + journal(
        DB, "pgbackrest", "patroni"
    )


def psql(target, sql: str, database: str = APP_DATABASE):
    """SQL as the postgres superuser on the host's cluster (port 5432); a CommandResult."""
    return target.run(
        f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d {database} -c {shlex.quote(sql)}"
    )


def sql_value(target, sql: str, database: str = APP_DATABASE) -> str:
    """The output of SQL that must succeed."""
    result = psql(target, sql, database)
    assert result.rc == 0, result.stderr + diagnostics()
    return result.stdout.strip()


def pgbackrest(target, *args: str):
    """pgbackrest on the stanza, as postgres (who reads the key and the configuration)."""
    command = " ".join(shlex.quote(arg) for arg in args)
    return target.run(f"runuser -u postgres -- pgbackrest --stanza={STANZA} {command}")


def stanza_info(target=REPO) -> dict:
    """`pgbackrest info --output=json` of the stanza."""
    result = pgbackrest(target, "--output=json", "info")
    assert result.rc == 0, result.stdout + result.stderr + diagnostics()
    return json.loads(result.stdout)[0]


def switch_wal_and_wait_for_archive(timeout: float = 90) -> str:
    """Close the primary's current WAL segment and wait until PostgreSQL has archived it; returns
    the segment's name."""
    segment = sql_value(DB, "SELECT pg_walfile_name(pg_switch_wal())")

    def archived():
        last = sql_value(DB, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        # A segment's name, or a backup's history file named after the segment it began in.
        return re.match("[0-9A-F]{24}", last) and last[:24] >= segment

    if not eventually(archived, timeout=timeout, interval=2):
        archiver = sql_value(DB, "SELECT * FROM pg_stat_archiver")
        raise AssertionError(f"{segment} not archived: {archiver}" + diagnostics())
    return segment
