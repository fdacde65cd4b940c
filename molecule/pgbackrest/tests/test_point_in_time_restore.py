"""Point-in-time restore on the scratch host: rows written and a table dropped after the target
are not in the restored cluster, what came before is; the role reports what it restored."""

import json
import time
import uuid
from datetime import datetime

from conftest import (
    APP_DATABASE,
    DB,
    RESTORE,
    SCENARIO_DIR,
    psql,
    run_playbook,
    sql_value,
    stanza_info,
    switch_wal_and_wait_for_archive,
)


def test_restore_to_a_point_in_time(tmp_path):
    suffix = uuid.uuid4().hex[:8]
    kept, dropped = f"orders_{suffix}", f"dropped_{suffix}"
    sql_value(
        DB,
        f"CREATE TABLE {kept} (id int PRIMARY KEY, label text NOT NULL);"  # noqa: S608 - uuid-based names
        f" CREATE TABLE {dropped} (id int); INSERT INTO {dropped} VALUES (1)",
    )
    sql_value(DB, f"INSERT INTO {kept} VALUES (1, 'A')")  # noqa: S608
    # The primary's clock, in the form make restore TIME= hands the role.
    target = sql_value(
        DB, "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'"
    )
    time.sleep(1)
    sql_value(DB, f"INSERT INTO {kept} VALUES (2, 'B')")  # noqa: S608
    sql_value(DB, f"DROP TABLE {dropped}")
    # Recovery needs the WAL past the target to know it has reached it.
    switch_wal_and_wait_for_archive()

    report_file = tmp_path / "restore.json"
    returncode, output = run_playbook(
        SCENARIO_DIR / "restore.yml",
        json.dumps(
            {
                "restore_target": target,
                "restore_report_file": str(report_file),
                # A recovery that does not finish fails within the test's time.
                "pgbackrest_restore_timeout_seconds": 300,
            }
        ),
    )
    assert returncode == 0, output

    assert sql_value(RESTORE, "SELECT pg_is_in_recovery()", "postgres") == "f"
    restored = f"SELECT string_agg(label, ',' ORDER BY id) FROM {kept}"  # noqa: S608
    assert sql_value(RESTORE, restored) == "A"
    assert sql_value(RESTORE, f"SELECT count(*) FROM {dropped}") == "1"  # noqa: S608
    # Only on the loopback, and it never archives into the live cluster's repository.
    assert sql_value(RESTORE, "SHOW listen_addresses", "postgres") == "localhost"
    assert sql_value(RESTORE, "SHOW archive_mode", "postgres") == "off"
    # The live cluster is as it was.
    assert psql(DB, f"SELECT 1 FROM {dropped}").rc != 0  # noqa: S608

    report = json.loads(report_file.read_text())
    assert report["target"] == target
    backups = {backup["label"]: backup for backup in stanza_info()["backup"]}
    assert report["backup_set"] in backups, report
    finished = backups[report["backup_set"]]["timestamp"]["stop"]
    assert finished <= datetime.fromisoformat(target).timestamp(), report
    assert report["restore_seconds"] >= 0, report
    replayed = datetime.fromisoformat(report["last_replayed_transaction"])
    assert replayed <= datetime.fromisoformat(target), report
    databases = {database["name"]: database for database in report["databases"]}
    assert databases[APP_DATABASE]["tables"][f"public.{kept}"] == 1, report
    assert databases[APP_DATABASE]["tables"][f"public.{dropped}"] == 1, report
    assert databases[APP_DATABASE]["size_bytes"] > 0, report
