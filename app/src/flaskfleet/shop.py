"""SQL for the shop domain. Every function takes an open connection; callers pick the server.

All values travel as query parameters, so quotes, semicolons and comment markers in user input
are stored literally.
"""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

import psycopg2.errors
from psycopg2 import sql
from psycopg2.extras import RealDictCursor

from flaskfleet.errors import APIError
from flaskfleet.schemas import OrderIn, ProductIn

# The columns the API shows, composed into queries with psycopg2.sql (never user input).
PRODUCT_COLUMNS = sql.SQL("id, sku, name, description, price_cents, stock, created_at, updated_at")


def _product(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row,
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def get_product(conn, product_id: int) -> dict[str, Any] | None:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            sql.SQL("SELECT {} FROM products WHERE id = %s").format(PRODUCT_COLUMNS), (product_id,)
        )
        row = cur.fetchone()
    return _product(row) if row else None


def list_products_page(conn, page: int, per_page: int) -> dict[str, Any]:
    """Offset pagination (API v1)."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            sql.SQL(
                "SELECT {}, count(*) OVER () AS total FROM products ORDER BY id LIMIT %s OFFSET %s"
            ).format(PRODUCT_COLUMNS),
            (per_page, (page - 1) * per_page),
        )
        rows = cur.fetchall()
        if rows:
            total = rows[0]["total"]
        else:
            cur.execute("SELECT count(*) AS total FROM products")
            total = cur.fetchone()["total"]
    items = [_product({k: v for k, v in row.items() if k != "total"}) for row in rows]
    return {"items": items, "page": page, "per_page": per_page, "total": total}


def list_products_after(conn, after_id: int, limit: int) -> dict[str, Any]:
    """Keyset pagination (API v2): stable under concurrent inserts and deletes."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            sql.SQL("SELECT {} FROM products WHERE id > %s ORDER BY id LIMIT %s").format(
                PRODUCT_COLUMNS
            ),
            (after_id, limit + 1),
        )
        rows = cur.fetchall()
    items = [_product(row) for row in rows[:limit]]
    next_after = items[-1]["id"] if len(rows) > limit else None
    return {"items": items, "next_after": next_after}


def _sku_taken(sku: str) -> APIError:
    return APIError(
        409, "sku_taken", f"a product with sku {sku!r} already exists", {"sku": "already taken"}
    )


def _columns(product: ProductIn) -> tuple:
    """The values of a product's writable columns, in the order the statements name them."""
    return (product.sku, product.name, product.description, product.price_cents, product.stock)


def create_product(conn, product: ProductIn) -> dict[str, Any]:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        try:
            cur.execute(
                sql.SQL(
                    "INSERT INTO products (sku, name, description, price_cents, stock)"
                    " VALUES (%s, %s, %s, %s, %s) RETURNING {}"
                ).format(PRODUCT_COLUMNS),
                _columns(product),
            )
        except psycopg2.errors.UniqueViolation:
            raise _sku_taken(product.sku) from None
        return _product(cur.fetchone())


def replace_product(conn, product_id: int, product: ProductIn) -> dict[str, Any] | None:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        try:
            cur.execute(
                sql.SQL(
                    "UPDATE products SET sku = %s, name = %s, description = %s,"
                    " price_cents = %s, stock = %s, updated_at = now()"
                    " WHERE id = %s RETURNING {}"
                ).format(PRODUCT_COLUMNS),
                (*_columns(product), product_id),
            )
        except psycopg2.errors.UniqueViolation:
            raise _sku_taken(product.sku) from None
        row = cur.fetchone()
    return _product(row) if row else None


def delete_product(conn, product_id: int) -> bool:
    with conn.cursor() as cur:
        try:
            cur.execute("DELETE FROM products WHERE id = %s", (product_id,))
        except psycopg2.errors.ForeignKeyViolation:
            raise APIError(
                409, "product_has_orders", "a product that appears in orders cannot be deleted"
            ) from None
        return cur.rowcount == 1


def _order_body(cur, order_pk: int) -> dict[str, Any]:
    """The API's view of an order: its public id stands in for the sequential key."""
    cur.execute(
        "SELECT public_id::text AS id, status, total_cents, created_at, confirmed_at"
        " FROM orders WHERE id = %s",
        (order_pk,),
    )
    order = cur.fetchone()
    cur.execute(
        "SELECT product_id, quantity, unit_price_cents FROM order_items"
        " WHERE order_id = %s ORDER BY product_id",
        (order_pk,),
    )
    items = cur.fetchall()
    confirmed_at = order["confirmed_at"]
    return {
        **order,
        "created_at": order["created_at"].isoformat(),
        "confirmed_at": confirmed_at.isoformat() if confirmed_at else None,
        "items": items,
    }


def get_order(conn, public_id: uuid.UUID, owner: str) -> dict[str, Any] | None:
    """The order, if it exists and belongs to `owner`: another client's order is not found."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            "SELECT id FROM orders WHERE public_id = %s AND owner = %s", (str(public_id), owner)
        )
        row = cur.fetchone()
        return _order_body(cur, row["id"]) if row else None


def place_order(conn, order: OrderIn, owner: str, idempotency_key: str | None, request_hash: str):
    """Reserve stock for every line and record the order for `owner` as reserved (a worker
    confirms it), all in the caller's transaction.

    Returns (status, body, replayed). With an idempotency key (scoped to the owner), the key
    row is inserted first: a concurrent request with the same key waits on it, then sees the
    stored response.
    """
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        if idempotency_key is not None:
            cur.execute(
                "INSERT INTO idempotency_keys (owner, key, request_hash) VALUES (%s, %s, %s)"
                " ON CONFLICT (owner, key) DO NOTHING RETURNING key",
                (owner, idempotency_key, request_hash),
            )
            if cur.fetchone() is None:
                cur.execute(
                    "SELECT request_hash, response_status, response_body"
                    " FROM idempotency_keys WHERE owner = %s AND key = %s",
                    (owner, idempotency_key),
                )
                stored = cur.fetchone()
                if stored["request_hash"] != request_hash:
                    raise APIError(
                        422,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used with a different request body",
                        {"Idempotency-Key": "already used with a different body"},
                    )
                return stored["response_status"], stored["response_body"], True

        quantities: dict[int, int] = {}
        for item in order.items:
            quantities[item.product_id] = quantities.get(item.product_id, 0) + item.quantity

        lines = []
        # A fixed lock order (by product id) keeps concurrent multi-line orders deadlock-free.
        for product_id in sorted(quantities):
            quantity = quantities[product_id]
            cur.execute(
                "UPDATE products SET stock = stock - %s, updated_at = now()"
                " WHERE id = %s AND stock >= %s RETURNING price_cents",
                (quantity, product_id, quantity),
            )
            row = cur.fetchone()
            if row is None:
                cur.execute("SELECT stock FROM products WHERE id = %s", (product_id,))
                existing = cur.fetchone()
                if existing is None:
                    raise APIError(
                        422,
                        "unknown_product",
                        f"product {product_id} does not exist",
                        {"items": f"unknown product {product_id}"},
                    )
                raise APIError(
                    409,
                    "insufficient_stock",
                    f"product {product_id} has {existing['stock']} in stock, {quantity} requested",
                    {"items": f"insufficient stock for product {product_id}"},
                )
            lines.append((product_id, quantity, row["price_cents"]))

        total = sum(quantity * price for _, quantity, price in lines)
        cur.execute(
            "INSERT INTO orders (owner, total_cents, status) VALUES (%s, %s, 'reserved')"
            " RETURNING id",
            (owner, total),
        )
        order_pk = cur.fetchone()["id"]
        cur.executemany(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)"
            " VALUES (%s, %s, %s, %s)",
            [(order_pk, *line) for line in lines],
        )
        body = _order_body(cur, order_pk)
        if idempotency_key is not None:
            cur.execute(
                "UPDATE idempotency_keys SET response_status = 201, response_body = %s"
                " WHERE owner = %s AND key = %s",
                (json.dumps(body), owner, idempotency_key),
            )
    return 201, body, False


def confirm_order(conn, public_id: str, task_id: str) -> tuple[str, float | None]:
    """Confirm a reserved order and write its receipt, exactly once however often it is asked.

    Returns (outcome, seconds from placing to confirming): "confirmed", "already_confirmed",
    "expired" (its reservation was released first) or "missing". The row lock orders this
    against a concurrent confirmation or expiry of the same order; the receipt's primary key
    and the status guard keep a second confirmation from changing anything even without it.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, status, total_cents FROM orders WHERE public_id = %s FOR UPDATE",
            (public_id,),
        )
        row = cur.fetchone()
        if row is None:
            return "missing", None
        order_pk, status, total_cents = row
        if status != "reserved":
            return ("already_confirmed" if status == "confirmed" else status), None
        cur.execute(
            "INSERT INTO order_receipts (order_id, total_cents, task_id) VALUES (%s, %s, %s)"
            " ON CONFLICT (order_id) DO NOTHING",
            (order_pk, total_cents, task_id),
        )
        cur.execute(
            "UPDATE orders SET status = 'confirmed', confirmed_at = now()"
            " WHERE id = %s AND status = 'reserved'"
            " RETURNING extract(epoch FROM confirmed_at - created_at)::float",
            (order_pk,),
        )
        (lag,) = cur.fetchone()
    return "confirmed", lag


def release_expired_orders(conn, older_than_seconds: int, limit: int) -> list[int]:
    """Expire up to `limit` orders reserved longer than `older_than_seconds` and put their
    stock back; returns the ids of the products whose stock changed.

    SKIP LOCKED leaves orders being confirmed right now (and those a concurrent run took) to
    their holder: each order is released at most once. Products are locked in id order, as
    place_order locks them, so concurrent runs and orders cannot deadlock.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id FROM orders WHERE status = 'reserved'"
            " AND created_at < now() - make_interval(secs => %s)"
            " ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED",
            (older_than_seconds, limit),
        )
        order_pks = [order_pk for (order_pk,) in cur.fetchall()]
        if not order_pks:
            return []
        cur.execute(
            "UPDATE orders SET status = 'expired', expired_at = now()"
            " WHERE id = ANY(%s) AND status = 'reserved'",
            (order_pks,),
        )
        cur.execute(
            "SELECT product_id, sum(quantity) FROM order_items WHERE order_id = ANY(%s)"
            " GROUP BY product_id ORDER BY product_id",
            (order_pks,),
        )
        released = cur.fetchall()
        cur.execute(
            "SELECT id FROM products WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
            ([product_id for product_id, _ in released],),
        )
        cur.executemany(
            "UPDATE products SET stock = stock + %s, updated_at = now() WHERE id = %s",
            [(quantity, product_id) for product_id, quantity in released],
        )
    return [product_id for product_id, _ in released]


def sales_report(
    conn, first_day: datetime.date, last_day: datetime.date, timeout_ms: int
) -> dict[str, Any]:
    """Confirmed sales per product for orders placed from first_day to last_day (UTC days,
    both included). PostgreSQL cancels a statement that runs longer than timeout_ms."""
    start = datetime.datetime.combine(first_day, datetime.time(), datetime.UTC)
    end = start + datetime.timedelta(days=(last_day - first_day).days + 1)
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        # For the session (reads run in autocommit), reset before it returns to the pool.
        cur.execute("SET statement_timeout = %s", (timeout_ms,))
        try:
            cur.execute(
                "SELECT p.id AS product_id, p.sku, p.name, count(DISTINCT o.id) AS orders,"
                " sum(i.quantity)::bigint AS quantity,"
                " sum(i.quantity::bigint * i.unit_price_cents)::bigint AS revenue_cents"
                " FROM orders o JOIN order_items i ON i.order_id = o.id"
                " JOIN products p ON p.id = i.product_id"
                " WHERE o.status = 'confirmed' AND o.created_at >= %s AND o.created_at < %s"
                " GROUP BY p.id ORDER BY p.id",
                (start, end),
            )
            products = cur.fetchall()
            cur.execute(
                "SELECT count(*) AS orders, coalesce(sum(total_cents), 0)::bigint AS revenue_cents"
                " FROM orders WHERE status = 'confirmed' AND created_at >= %s AND created_at < %s",
                (start, end),
            )
            totals = cur.fetchone()
        finally:
            cur.execute("RESET statement_timeout")
    return {
        "from": first_day.isoformat(),
        "to": last_day.isoformat(),
        "products": products,
        **totals,
    }
