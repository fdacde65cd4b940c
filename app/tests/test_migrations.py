"""`flask --app flaskfleet db upgrade`: repeatable, and safe when several hosts run it at once."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg2
import pytest
from conftest import OWNER_ROLE, create_app_database
from flaskfleet import migrations

SRC = Path(__file__).resolve().parents[1] / "src"
LATEST = [version for version, _ in migrations.available()]


@pytest.fixture
def fresh_database(cluster, request):
    """An empty database set up as in production; migrations run as its owner role."""
    name = "migrate_" + request.node.name.lower().replace("test_", "")[:40]
    cluster.primary.query(f'DROP DATABASE IF EXISTS "{name}"', dbname="postgres")
    create_app_database(cluster.primary, name)
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
    url = cluster.primary.url(fresh_database, user=OWNER_ROLE)
    first = flask_db_upgrade(url)
    assert first.returncode == 0, first.stderr
    assert "applied: " + ", ".join(LATEST) in first.stdout
    second = flask_db_upgrade(url)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    rows = cluster.primary.query(
        "SELECT version FROM schema_migrations ORDER BY 1", dbname=fresh_database
    )
    assert [version for (version,) in rows] == LATEST
    tables = cluster.primary.query(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        dbname=fresh_database,
    )
    assert [name for (name,) in tables] == [
        "dead_letters",
        "idempotency_keys",
        "jobs",
        "order_items",
        "order_receipts",
        "orders",
        "outbox",
        "products",
        "schema_migrations",
    ]


def test_concurrent_upgrades_apply_each_migration_once(cluster, fresh_database):
    url = cluster.primary.url(fresh_database, user=OWNER_ROLE)
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
    assert sorted(applied) == [[]] * (runners - 1) + [LATEST]


def test_order_owners_migration_carries_existing_rows_over(cluster, fresh_database):
    """Rows from before 0002 get random public ids and the owner 'legacy'; afterwards every
    order and idempotency key must name its owner, and keys are unique per owner only."""
    conn = cluster.primary.connect(fresh_database, user=OWNER_ROLE)
    try:
        with conn.cursor() as cur:
            cur.execute(dict(migrations.available())["0001_shop"])
            cur.execute(
                "CREATE TABLE schema_migrations (version text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now());"
                " INSERT INTO schema_migrations VALUES ('0001_shop');"
                " INSERT INTO orders (total_cents) SELECT n FROM generate_series(1, 50) n;"
                " INSERT INTO idempotency_keys (key, request_hash) VALUES ('old-key', 'h');"
            )
        assert (
            migrations.upgrade(cluster.primary.url(fresh_database, user=OWNER_ROLE)) == (LATEST[1:])
        )
        with conn.cursor() as cur:
            cur.execute("SELECT count(DISTINCT public_id), min(owner), max(owner) FROM orders")
            assert cur.fetchone() == (50, "legacy", "legacy")
            cur.execute("SELECT public_id FROM orders")
            assert all(len(public_id) == 36 for (public_id,) in cur.fetchall())
            cur.execute("SELECT owner FROM idempotency_keys WHERE key = 'old-key'")
            assert cur.fetchone() == ("legacy",)
            # The same key for another owner is a different key.
            cur.execute(
                "INSERT INTO idempotency_keys (owner, key, request_hash)"
                " VALUES ('shop', 'old-key', 'h')"
            )
            with pytest.raises(psycopg2.errors.NotNullViolation):
                cur.execute("INSERT INTO orders (total_cents) VALUES (1)")
    finally:
        conn.close()


def test_worker_migration_makes_earlier_orders_final(cluster, fresh_database):
    """Orders from before 0003 were final when placed: they become confirmed, never expire, and
    so does an order a previous release places during a rolling deploy (no status named)."""
    owner_url = cluster.primary.url(fresh_database, user=OWNER_ROLE)
    conn = cluster.primary.connect(fresh_database, user=OWNER_ROLE)
    try:
        with conn.cursor() as cur:
            for _, sql in migrations.available()[:2]:
                cur.execute(sql)
            cur.execute(
                "CREATE TABLE schema_migrations (version text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now());"
                " INSERT INTO schema_migrations VALUES ('0001_shop'), ('0002_order_owners');"
                " INSERT INTO orders (owner, total_cents) VALUES ('shop', 1), ('shop', 2);"
            )
        assert migrations.upgrade(owner_url) == LATEST[2:]  # 0003_worker and those after it
        with conn.cursor() as cur:
            cur.execute("INSERT INTO orders (owner, total_cents) VALUES ('shop', 3)")
            cur.execute("SELECT status, confirmed_at FROM orders ORDER BY id")
            assert cur.fetchall() == [("confirmed", None)] * 3
            with pytest.raises(psycopg2.errors.CheckViolation):
                cur.execute("INSERT INTO orders (owner, total_cents, status) VALUES ('a', 1, 'x')")
    finally:
        conn.close()


def test_upgrade_command_fails_clearly_on_bad_configuration():
    result = flask_db_upgrade("not a dsn at all")
    assert result.returncode != 0
    assert "FLASKFLEET_DATABASE_URL" in result.stderr


def test_migrations_ship_in_the_package():
    versions = [version for version, _ in migrations.available()]
    assert versions == sorted(versions)
    assert versions[:2] == ["0001_shop", "0002_order_owners"]
