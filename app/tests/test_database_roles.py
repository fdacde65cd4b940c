"""The app needs only DML at runtime: it connects as a role that may read and write rows of the
owner's tables (conftest.create_app_database) and nothing more. Every API test runs as that
role, so a statement beyond those privileges would fail there; these tests show the limits."""

import psycopg2
import pytest
from conftest import OWNER_ROLE, RUNTIME_ROLE


def test_the_app_connects_as_the_runtime_role(app):
    database = app.extensions["flaskfleet"].db
    for pool in (database.primary, database.replica):
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT current_user, pg_has_role(current_user, %s, 'MEMBER')", (OWNER_ROLE,)
            )
            assert cur.fetchone() == (RUNTIME_ROLE, False)


def test_runtime_role_has_exactly_dml(cluster):
    rows = cluster.primary.query(
        "SELECT c.relname, c.relkind,"
        " string_agg(p.privilege_type, ',' ORDER BY p.privilege_type)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " LEFT JOIN LATERAL aclexplode(c.relacl) p ON p.grantee = %s::regrole"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S')"
        " GROUP BY c.relname, c.relkind",
        (RUNTIME_ROLE,),
    )
    expected = {"r": "DELETE,INSERT,SELECT,UPDATE", "S": "SELECT,USAGE"}
    assert {name: granted for name, kind, granted in rows if granted != expected[kind]} == {}
    assert {"products", "orders", "order_items", "idempotency_keys"} <= {row[0] for row in rows}
    ((database, schema),) = cluster.primary.query(
        "SELECT array(SELECT privilege_type FROM aclexplode(d.datacl)"
        "  WHERE grantee = %s::regrole ORDER BY 1),"
        " array(SELECT privilege_type FROM aclexplode(n.nspacl)"
        "  WHERE grantee = %s::regrole ORDER BY 1)"
        " FROM pg_database d, pg_namespace n"
        " WHERE d.datname = current_database() AND n.nspname = 'public'",
        (RUNTIME_ROLE, RUNTIME_ROLE),
    )
    assert (database, schema) == (["CONNECT"], ["USAGE"])


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE order_items",
        "ALTER TABLE products ADD COLUMN colour text",
        "CREATE TABLE scratch (id int)",
        "CREATE INDEX products_name_idx ON products (name)",
        "TRUNCATE products CASCADE",
        "CREATE TEMP TABLE scratch (id int)",
    ],
)
def test_runtime_role_cannot_change_the_schema(cluster, statement):
    conn = cluster.primary.connect(user=RUNTIME_ROLE)
    try:
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(statement)
    finally:
        conn.close()
