"""Versioned SQL migrations shipped in the package, applied by `flask --app flaskfleet db upgrade`.

Each file in migrations/ named NNNN_description.sql is applied once, in order, in its own
transaction together with its row in schema_migrations. A session-level advisory lock makes
concurrent runs (several hosts deploying at once) take turns; the second finds nothing to do.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

import click
import psycopg2
from flask import current_app
from flask.cli import AppGroup

log = logging.getLogger(__name__)

# Arbitrary but fixed: every flaskfleet process contends for the same advisory lock.
ADVISORY_LOCK_ID = 0x666C6565  # "flee"
MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def available() -> list[tuple[str, str]]:
    """(version, sql) for every migration in the package, oldest first."""
    found = []
    for entry in resources.files("flaskfleet").joinpath("migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append((entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    return sorted(found)


def upgrade(dsn: str, connect_timeout: int = 10) -> list[str]:
    """Apply pending migrations to the database at dsn; returns the versions applied."""
    applied_now = []
    conn = psycopg2.connect(dsn, connect_timeout=connect_timeout, application_name="flaskfleet-db")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_ID,))
        conn.autocommit = False
        with conn, conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in cur.fetchall()}
        conn.commit()
        for version, sql in available():
            if version in done:
                continue
            with conn, conn.cursor() as cur:
                cur.execute(sql)
                cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            log.info("applied migration", extra={"version": version})
            applied_now.append(version)
    finally:
        # Closing the session releases the advisory lock even if a migration failed.
        conn.close()
    return applied_now


db_cli = AppGroup("db", help="Database schema commands.")


@db_cli.command("upgrade")
def upgrade_command() -> None:
    """Apply pending schema migrations to the primary (safe to repeat and to run concurrently)."""
    settings = current_app.extensions["flaskfleet"].settings
    applied_now = upgrade(settings.database_url.get_secret_value(), settings.db_connect_timeout)
    if applied_now:
        click.echo("applied: " + ", ".join(applied_now))
    else:
        click.echo("database schema is up to date")
