"""Authentication: a bearer token names a configured client, whose scopes decide what it may do.
A token that is present but not valid is refused on every route, never treated as anonymous."""

import pytest
from conftest import AUTH, bearer

PRODUCT = {"sku": "AUTH-1", "name": "n", "price_cents": 1, "stock": 1}
BAD_HEADERS = [
    {"Authorization": "Bearer not-a-configured-token"},
    {"Authorization": "Bearer " + bearer("admin")["Authorization"][7:-1]},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer"},
]


@pytest.mark.parametrize("headers", BAD_HEADERS)
@pytest.mark.parametrize(
    "url", ["/api/v1/products", "/api/v2/products", "/api/v1/products/1", "/healthz", "/metrics"]
)
def test_an_invalid_token_is_401_on_reads_too(anonymous, url, headers):
    response = anonymous.get(url, headers=headers)
    assert response.status_code == 401
    assert response.json["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="flaskfleet"')
    assert "X-Cache" not in response.headers


def test_reads_need_no_token_and_accept_a_valid_one(anonymous, product):
    item = product(sku="READ-ME")
    for headers in ({}, AUTH, bearer("catalog")):
        response = anonymous.get(f"/api/v1/products/{item['id']}", headers=headers)
        assert response.status_code == 200
        assert response.json == item


def test_product_writes_need_products_write(client, product):
    item = product(sku="GUARDED-SCOPE")
    url = f"/api/v1/products/{item['id']}"
    replacement = {**PRODUCT, "sku": "GUARDED-SCOPE"}
    for response in (
        client.post("/api/v1/products", json=PRODUCT, headers=bearer("shop")),
        client.put(url, json=replacement, headers=bearer("shop")),
        client.delete(url, headers=bearer("shop")),
    ):
        assert response.status_code == 403
        assert response.json["error"] == {
            "code": "forbidden",
            "message": "client shop lacks the scope products:write",
            "fields": {},
        }
        assert response.headers["WWW-Authenticate"] == (
            'Bearer realm="flaskfleet", error="insufficient_scope", scope="products:write"'
        )
    assert (
        client.post("/api/v1/products", json=PRODUCT, headers=bearer("catalog")).status_code == 201
    )
    assert client.put(url, json=replacement, headers=bearer("catalog")).status_code == 200
