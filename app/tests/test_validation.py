"""Hostile and malformed input: always a clear JSON error or a literal round trip, never a 500."""

import json

import pytest
from conftest import AUTH

VALID = {"sku": "V-1", "name": "Valid", "price_cents": 100, "stock": 1}


def post_raw(client, body: bytes, content_type: str = "application/json"):
    return client.post(
        "/api/v1/products", data=body, headers={**AUTH, "Content-Type": content_type}
    )


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.data
    error = response.json["error"]
    assert error["code"] == code
    assert set(error) == {"code", "message", "fields"}
    assert error["message"]
    return error["fields"]


def test_unknown_field_is_named(client):
    response = client.post("/api/v1/products", json={**VALID, "colour": "red"}, headers=AUTH)
    fields = assert_error(response, 422, "validation_failed")
    assert "colour" in fields


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("price_cents", "100"),
        ("price_cents", 1.5),
        ("price_cents", True),
        ("price_cents", -1),
        ("price_cents", 2**31),
        ("stock", None),
        ("name", 42),
        ("name", ""),
        ("sku", ["a"]),
        ("sku", "line\nbreak"),
        ("name", "nul\u0000byte"),
    ],
)
def test_wrong_type_or_value_is_named(client, field, value):
    response = client.post("/api/v1/products", json={**VALID, field: value}, headers=AUTH)
    fields = assert_error(response, 422, "validation_failed")
    assert field in fields


def test_missing_fields_and_wrong_shapes(client):
    fields = assert_error(
        client.post("/api/v1/products", json={"sku": "x"}, headers=AUTH), 422, "validation_failed"
    )
    assert {"name", "price_cents", "stock"} <= set(fields)
    assert_error(post_raw(client, b"[1, 2]"), 422, "validation_failed")
    order = {"items": [{"product_id": 1, "quantity": 0}]}
    fields = assert_error(
        client.post("/api/v1/orders", json=order, headers=AUTH), 422, "validation_failed"
    )
    assert "items.0.quantity" in fields
    assert_error(
        client.post("/api/v1/orders", json={"items": []}, headers=AUTH), 422, "validation_failed"
    )


def test_malformed_json_is_400(client):
    assert_error(post_raw(client, b'{"sku": '), 400, "malformed_json")
    assert_error(post_raw(client, b""), 400, "malformed_json")
    # Valid escape syntax, but a lone surrogate is not Unicode text and cannot be stored.
    lone_surrogate = json.dumps({**VALID, "name": "lone \ud800 surrogate"}).encode()
    assert b"\\ud800" in lone_surrogate
    assert_error(post_raw(client, lone_surrogate), 400, "malformed_json")


def test_bad_utf8_is_400(client):
    body = b'{"sku": "\xff\xfe", "name": "x", "price_cents": 1, "stock": 1}'
    assert_error(post_raw(client, body), 400, "invalid_encoding")


def test_wrong_content_type_is_415(client):
    body = json.dumps(VALID).encode()
    assert_error(post_raw(client, body, "text/plain"), 415, "unsupported_media_type")
    assert_error(
        post_raw(client, b"sku=x", "application/x-www-form-urlencoded"),
        415,
        "unsupported_media_type",
    )


def test_huge_body_is_413(client):
    body = json.dumps({**VALID, "description": "x" * (2 * 1024 * 1024)}).encode()
    assert_error(post_raw(client, body), 413, "body_too_large")


def test_too_long_string_is_422(client):
    response = client.post(
        "/api/v1/products", json={**VALID, "description": "x" * 5000}, headers=AUTH
    )
    assert "description" in assert_error(response, 422, "validation_failed")


@pytest.mark.parametrize(
    "text",
    [
        "Robert'); DROP TABLE products;--",
        "' OR '1'='1",
        'quote " backslash \\ percent %s %(name)s',
        "/* comment */ ; SELECT pg_sleep(10);",
        "naïve café ☕ 🛒 中文",
    ],
)
def test_sql_metacharacters_are_stored_literally(client, anonymous, cluster, text):
    body = {"sku": text[:64].replace("\n", " "), "name": text, "description": text}
    response = client.post(
        "/api/v1/products", json={**body, "price_cents": 1, "stock": 1}, headers=AUTH
    )
    assert response.status_code == 201, response.json
    cluster.wait_replica_caught_up()
    stored = anonymous.get(f"/api/v1/products/{response.json['id']}").json
    assert stored["name"] == text
    assert stored["description"] == text
    assert stored["sku"] == body["sku"]
    assert anonymous.get("/api/v1/products").json["total"] == 1


def test_bad_idempotency_key_is_400(client):
    order = {"items": [{"product_id": 1, "quantity": 1}]}
    response = client.post(
        "/api/v1/orders", json=order, headers={**AUTH, "Idempotency-Key": "has space"}
    )
    assert "Idempotency-Key" in assert_error(response, 400, "invalid_idempotency_key")


def test_method_not_allowed_is_json(client):
    response = client.patch("/api/v1/products", headers=AUTH)
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]
