"""The shop API: /api/v1 (offset pages, deprecated for reads of lists) and /api/v2 (cursors)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid

from flask import Blueprint, Response, current_app, g, request, url_for

from flaskfleet import jobs, shop
from flaskfleet.cache import product_key
from flaskfleet.errors import APIError
from flaskfleet.schemas import PG_BIGINT_MAX, OrderIn, ProductIn, SalesReportIn
from flaskfleet.tasks import CONFIRM_ORDER, SALES_REPORT
from flaskfleet.web import (
    client_write_lsn,
    conditional_json,
    json_response,
    parse_body,
    query_int,
    remember_write,
    require_scope,
)

v1 = Blueprint("v1", __name__, url_prefix="/api/v1")
v2 = Blueprint("v2", __name__, url_prefix="/api/v2")

MAX_PAGE_SIZE = 100
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")
# RFC 9745 Deprecation (a date, as @epoch-seconds) and RFC 8594 Sunset for v1 list reads.
V1_LIST_DEPRECATION = "@1767225600"  # 2026-01-01T00:00:00Z
V1_LIST_SUNSET = "Thu, 31 Dec 2026 23:59:59 GMT"


def _services():
    return current_app.extensions["flaskfleet"]


def _not_found(kind: str, object_id: object) -> APIError:
    return APIError(404, "not_found", f"{kind} {object_id} does not exist")


def _checked_id(kind: str, object_id: int) -> int:
    # Larger ids cannot exist (bigint) and would make PostgreSQL raise instead of finding none.
    if object_id > PG_BIGINT_MAX:
        raise _not_found(kind, object_id)
    return object_id


def _cached_read(key: str | None, query) -> tuple[object, str, str | None]:
    """(body, X-Cache value, server read) for a product read through the cache.

    A client that wrote recently skips the cache lookup, since a stale entry may have been
    filled from a lagging replica, and refreshes the entry with what it reads.
    """
    services = _services()
    write_lsn = client_write_lsn()
    if key is not None and write_lsn is None:
        found, body = services.cache.get(key)
        if found:
            return body, "HIT", None
    body, source = services.db.read(query, write_lsn)
    if key is not None:
        # None (no such product) is cached too, for a shorter time: see flaskfleet.cache.
        services.cache.set(key, body)
    return body, "MISS", source


def _product_response(product_id: int) -> Response:
    product_id = _checked_id("product", product_id)
    body, cache_state, source = _cached_read(
        product_key(product_id), lambda conn: shop.get_product(conn, product_id)
    )
    if body is None:
        raise _not_found("product", product_id)
    return conditional_json(body, cache_state, source)


@v1.get("/products")
def list_products_v1() -> Response:
    page = query_int("page", 1, 1, 1_000_000)
    per_page = query_int("per_page", 20, 1, MAX_PAGE_SIZE)
    # PostgreSQL reads and discards every row before the offset: deep pages cost the database
    # in proportion to their depth, which cursors do not.
    max_offset = _services().settings.max_page_offset
    if (page - 1) * per_page > max_offset:
        raise APIError(
            400,
            "page_too_deep",
            f"v1 serves offsets (page - 1) * per_page up to {max_offset};"
            f" walk further with cursors: {url_for('v2.list_products_v2')}",
            {"page": f"(page - 1) * per_page must not exceed {max_offset}"},
        )
    key = _services().cache.list_key(f"v1:{page}:{per_page}")
    body, cache_state, source = _cached_read(
        key, lambda conn: shop.list_products_page(conn, page, per_page)
    )
    response = conditional_json(body, cache_state, source)
    response.headers["Deprecation"] = V1_LIST_DEPRECATION
    response.headers["Sunset"] = V1_LIST_SUNSET
    response.headers["Link"] = f'<{url_for("v2.list_products_v2")}>; rel="successor-version"'
    return response


def _encode_cursor(after_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after_id}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        after_id = decoded["after"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        after_id = None
    if type(after_id) is not int or not 0 <= after_id <= PG_BIGINT_MAX:
        raise APIError(400, "invalid_cursor", "the cursor is not valid", {"cursor": "invalid"})
    return after_id


@v2.get("/products")
def list_products_v2() -> Response:
    limit = query_int("limit", 20, 1, MAX_PAGE_SIZE)
    cursor = request.args.get("cursor")
    after_id = _decode_cursor(cursor) if cursor else 0
    key = _services().cache.list_key(f"v2:{after_id}:{limit}")
    page, cache_state, source = _cached_read(
        key, lambda conn: shop.list_products_after(conn, after_id, limit)
    )
    next_after = page["next_after"]
    body = {
        "items": page["items"],
        "next_cursor": None if next_after is None else _encode_cursor(next_after),
    }
    return conditional_json(body, cache_state, source)


@v1.get("/products/<int:product_id>")
def get_product_v1(product_id: int) -> Response:
    return _product_response(product_id)


@v2.get("/products/<int:product_id>")
def get_product_v2(product_id: int) -> Response:
    return _product_response(product_id)


@v1.post("/products")
@require_scope("products:write")
def create_product() -> Response:
    product = parse_body(ProductIn)
    services = _services()
    created, lsn = services.db.write(lambda conn: shop.create_product(conn, product))
    services.cache.invalidate_products([created["id"]])
    response = json_response(created, 201)
    response.headers["Location"] = url_for("v1.get_product_v1", product_id=created["id"])
    return remember_write(response, lsn)


@v1.put("/products/<int:product_id>")
@require_scope("products:write")
def replace_product(product_id: int) -> Response:
    product_id = _checked_id("product", product_id)
    product = parse_body(ProductIn)
    services = _services()
    updated, lsn = services.db.write(lambda conn: shop.replace_product(conn, product_id, product))
    if updated is None:
        raise _not_found("product", product_id)
    services.cache.invalidate_products([product_id])
    return remember_write(json_response(updated), lsn)


@v1.delete("/products/<int:product_id>")
@require_scope("products:write")
def delete_product(product_id: int) -> Response:
    product_id = _checked_id("product", product_id)
    services = _services()
    deleted, lsn = services.db.write(lambda conn: shop.delete_product(conn, product_id))
    if not deleted:
        raise _not_found("product", product_id)
    services.cache.invalidate_products([product_id])
    return remember_write(Response(status=204), lsn)


@v1.post("/orders")
@require_scope("orders:write")
def place_order() -> Response:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY_PATTERN.match(key):
        raise APIError(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1-255 visible ASCII characters",
            {"Idempotency-Key": "invalid"},
        )
    order = parse_body(OrderIn)
    # Hash the validated body, so that formatting differences do not count as a new request.
    request_hash = hashlib.sha256(order.model_dump_json().encode()).hexdigest()
    services = _services()

    def statement(conn):
        status, body, replayed = shop.place_order(conn, order, g.client.name, key, request_hash)
        # The confirmation task commits with the order, or neither does.
        task = (
            None
            if replayed
            else jobs.add(conn, CONFIRM_ORDER, [body["id"]], g.request_id, g.trace.traceparent)
        )
        return status, body, task

    (status, body, task), lsn = services.db.write(statement)
    replayed = task is None
    if not replayed:
        jobs.publish_committed(services, task)
        services.cache.invalidate_products([line["product_id"] for line in body["items"]])
    response = json_response(body, status)
    response.headers["Location"] = url_for("v1.get_order", public_id=body["id"])
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return remember_write(response, lsn)


def _owned(kind: str, fetch, public_id: uuid.UUID) -> Response:
    """The requesting client's own `kind` by its public id; another client's is answered exactly
    like one that does not exist."""
    found, source = _services().db.read(
        lambda conn: fetch(conn, public_id, g.client.name), client_write_lsn()
    )
    if found is None:
        raise _not_found(kind, public_id)
    response = json_response(found)
    response.headers["X-Read-Source"] = source
    return response


@v1.get("/orders/<uuid:public_id>")
@require_scope("orders:read")
def get_order(public_id: uuid.UUID) -> Response:
    return _owned("order", shop.get_order, public_id)


@v1.post("/reports/sales")
@require_scope("reports:read")
def request_sales_report() -> Response:
    """Queue a sales report: 202 with the job to poll in Location."""
    report = parse_body(SalesReportIn)
    services = _services()
    max_days = services.settings.report_max_days
    if (report.last_day - report.first_day).days + 1 > max_days:
        raise APIError(
            422,
            "validation_failed",
            "the request body is not valid",
            {"to": f"the range may span at most {max_days} days"},
        )
    params = {"from": report.first_day.isoformat(), "to": report.last_day.isoformat()}

    def statement(conn):
        job = jobs.create_job(conn, g.client.name, "sales_report", params)
        return job, jobs.add(conn, SALES_REPORT, [job["id"]], g.request_id, g.trace.traceparent)

    (job, task), lsn = services.db.write(statement)
    jobs.publish_committed(services, task)
    response = json_response(job, 202)
    response.headers["Location"] = url_for("v1.get_job", public_id=job["id"])
    return remember_write(response, lsn)


@v1.get("/jobs/<uuid:public_id>")
@require_scope("reports:read")
def get_job(public_id: uuid.UUID) -> Response:
    response = _owned("job", jobs.get_job, public_id)
    response.headers["Cache-Control"] = "no-store"
    return response
