"""`flask --app flaskfleet db upgrade`: repeatable, and safe when several hosts run it at once."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from flaskfleet import migrations

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def fresh_database(cluster, request):
    name = "migrate_" + request.node.name.lower().replace("test_", "")[:40]
    cluster.primary.query(f'DROP DATABASE IF EXISTS "{name}"', dbname="postgres")
    cluster.primary.query(f'CREATE DATABASE "{name}"', dbname="postgres")
    yield name
    cluster.primary.query(f'DROP DATABASE "{name}" WITH (FORCE)', dbname="postgres")


def flask_db_upgrade(database_url: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLASKFLEET_")}
    env["FLASKFLEET_DATABASE_URL"] = database_url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "flaskfleet", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_upgrade_command_applies_once(cluster, fresh_database):
    url = cluster.primary.url(fresh_database)
    first = flask_db_upgrade(url)
    assert first.returncode == 0, first.stderr
    assert "applied: 0001_shop" in first.stdout
    second = flask_db_upgrade(url)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    rows = cluster.primary.query("SELECT version FROM schema_migrations", dbname=fresh_database)
    assert rows == [("0001_shop",)]
    tables = cluster.primary.query(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        dbname=fresh_database,
    )
    assert [name for (name,) in tables] == [
        "idempotency_keys",
        "order_items",
        "orders",
        "products",
        "schema_migrations",
    ]


def test_concurrent_upgrades_apply_each_migration_once(cluster, fresh_database):
    url = cluster.primary.url(fresh_database)
    runners = 5
    barrier = threading.Barrier(runners)
    applied, failures = [], []

    def run():
        barrier.wait()
        try:
            applied.append(migrations.upgrade(url))
        except Exception as exc:  # collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(applied) == [[]] * (runners - 1) + [["0001_shop"]]


def test_upgrade_command_fails_clearly_on_bad_configuration():
    result = flask_db_upgrade("not a dsn at all")
    assert result.returncode != 0
    assert "FLASKFLEET_DATABASE_URL" in result.stderr


def test_migrations_ship_in_the_package():
    versions = [version for version, _ in migrations.available()]
    assert versions == sorted(versions)
    assert versions[0] == "0001_shop"
