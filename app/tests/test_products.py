"""Product reads and writes: pagination, caching, ETags, auth, conflicts."""

from conftest import AUTH, bearer


def test_create_read_update_delete(client, anonymous, product, cluster):
    created = product(sku="MUG-1", stock=4, price_cents=899, description="A mug")
    assert created["sku"] == "MUG-1"
    assert created["description"] == "A mug"

    response = anonymous.get(f"/api/v1/products/{created['id']}")
    assert response.status_code == 200
    assert response.json == created
    assert anonymous.get(f"/api/v2/products/{created['id']}").json == created

    replacement = {"sku": "MUG-1", "name": "Big mug", "price_cents": 999, "stock": 2}
    response = client.put(f"/api/v1/products/{created['id']}", json=replacement, headers=AUTH)
    assert response.status_code == 200
    assert response.json["name"] == "Big mug"
    assert response.json["description"] == ""

    response = client.delete(f"/api/v1/products/{created['id']}", headers=AUTH)
    assert response.status_code == 204
    assert client.get(f"/api/v1/products/{created['id']}").status_code == 404
    assert client.delete(f"/api/v1/products/{created['id']}", headers=AUTH).status_code == 404


def test_v1_offset_pagination_is_deprecated(anonymous, product):
    for number in range(5):
        product(sku=f"P{number}")
    response = anonymous.get("/api/v1/products?page=2&per_page=2")
    assert response.status_code == 200
    assert [item["sku"] for item in response.json["items"]] == ["P2", "P3"]
    assert response.json["total"] == 5
    assert response.json["page"] == 2
    assert response.headers["Deprecation"].startswith("@")
    assert response.headers["Sunset"].endswith("GMT")
    assert 'rel="successor-version"' in response.headers["Link"]


def test_v1_pages_stop_at_the_offset_cap(make_app, product):
    for number in range(5):
        product(sku=f"P{number}")
    reader = make_app(FLASKFLEET_MAX_PAGE_OFFSET="4").test_client()
    last = reader.get("/api/v1/products?page=3&per_page=2")
    assert last.status_code == 200
    assert [item["sku"] for item in last.json["items"]] == ["P4"]
    response = reader.get("/api/v1/products?page=4&per_page=2")
    assert response.status_code == 400
    error = response.json["error"]
    assert error["code"] == "page_too_deep"
    assert set(error["fields"]) == {"page"}
    assert "/api/v2/products" in error["message"]


def test_v2_cursor_pagination_walks_all_products(anonymous, product):
    for number in range(5):
        product(sku=f"P{number}")
    seen, cursor = [], None
    while True:
        url = "/api/v2/products?limit=2" + (f"&cursor={cursor}" if cursor else "")
        response = anonymous.get(url)
        assert response.status_code == 200
        assert "Deprecation" not in response.headers
        seen += [item["sku"] for item in response.json["items"]]
        cursor = response.json["next_cursor"]
        if cursor is None:
            break
    assert seen == ["P0", "P1", "P2", "P3", "P4"]


def test_bad_pagination_parameters_are_400(anonymous):
    for url in (
        "/api/v1/products?page=0",
        "/api/v1/products?per_page=1000",
        "/api/v1/products?page=abc",
        "/api/v2/products?cursor=not-a-cursor",
        "/api/v2/products?limit=-1",
    ):
        response = anonymous.get(url)
        assert response.status_code == 400, url
        assert response.json["error"]["code"] in {"invalid_query", "invalid_cursor"}


def test_cache_hit_then_invalidated_by_write(client, anonymous, product, cluster):
    created = product(sku="CACHED", stock=3)
    url = f"/api/v1/products/{created['id']}"
    list_url = "/api/v2/products"
    assert anonymous.get(url).headers["X-Cache"] == "MISS"
    assert anonymous.get(url).headers["X-Cache"] == "HIT"
    assert anonymous.get(list_url).headers["X-Cache"] == "MISS"
    assert anonymous.get(list_url).headers["X-Cache"] == "HIT"

    replacement = {"sku": "CACHED", "name": "Renamed", "price_cents": 1, "stock": 3}
    assert client.put(url, json=replacement, headers=AUTH).status_code == 200
    cluster.wait_replica_caught_up()

    response = anonymous.get(url)
    assert response.headers["X-Cache"] == "MISS"
    assert response.json["name"] == "Renamed"
    listed = anonymous.get(list_url)
    assert listed.headers["X-Cache"] == "MISS"
    assert listed.json["items"][0]["name"] == "Renamed"
    assert anonymous.get(url).headers["X-Cache"] == "HIT"


def test_write_invalidates_only_the_products_it_touches(client, anonymous, product, cluster):
    first, second = product(sku="FIRST"), product(sku="SECOND")
    for item in (first, second):
        anonymous.get(f"/api/v1/products/{item['id']}")
    replacement = {"sku": "FIRST", "name": "Changed", "price_cents": 5, "stock": 1}
    client.put(f"/api/v1/products/{first['id']}", json=replacement, headers=AUTH)
    cluster.wait_replica_caught_up()
    assert anonymous.get(f"/api/v1/products/{first['id']}").headers["X-Cache"] == "MISS"
    assert anonymous.get(f"/api/v1/products/{second['id']}").headers["X-Cache"] == "HIT"


def test_order_invalidates_the_stock_it_changes(client, anonymous, product, cluster):
    item = product(sku="STOCKED", stock=5)
    url = f"/api/v1/products/{item['id']}"
    anonymous.get(url)
    assert anonymous.get(url).headers["X-Cache"] == "HIT"
    order = {"items": [{"product_id": item["id"], "quantity": 2}]}
    assert client.post("/api/v1/orders", json=order, headers=AUTH).status_code == 201
    cluster.wait_replica_caught_up()
    response = anonymous.get(url)
    assert response.headers["X-Cache"] == "MISS"
    assert response.json["stock"] == 3


def test_etag_and_304(anonymous, product):
    created = product(sku="ETAG")
    url = f"/api/v2/products/{created['id']}"
    first = anonymous.get(url)
    etag = first.headers["ETag"]
    assert etag
    again = anonymous.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.data == b""
    assert again.headers["ETag"] == etag
    other = anonymous.get(url, headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200
    listing = anonymous.get("/api/v1/products")
    assert (
        anonymous.get(
            "/api/v1/products", headers={"If-None-Match": listing.headers["ETag"]}
        ).status_code
        == 304
    )


def test_writes_need_a_valid_token(client, product):
    created = product(sku="GUARDED")
    body = {"sku": "NEW", "name": "New", "price_cents": 1, "stock": 1}
    url = f"/api/v1/products/{created['id']}"
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
    ):
        for response in (
            client.post("/api/v1/products", json=body, headers=headers),
            client.put(url, json=body, headers=headers),
            client.delete(url, headers=headers),
            client.post("/api/v1/orders", json={"items": []}, headers=headers),
        ):
            assert response.status_code == 401
            assert response.json["error"]["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # Any configured token works; reads need none.
    other = bearer("catalog")
    assert client.post("/api/v1/products", json=body, headers=other).status_code == 201
    assert client.get(url).status_code == 200


def test_duplicate_sku_is_409(client, product):
    existing = product(sku="DUP")
    body = {"sku": "DUP", "name": "Again", "price_cents": 1, "stock": 1}
    response = client.post("/api/v1/products", json=body, headers=AUTH)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "sku_taken"
    assert response.json["error"]["fields"] == {"sku": "already taken"}
    other = product(sku="OTHER")
    response = client.put(f"/api/v1/products/{other['id']}", json=body, headers=AUTH)
    assert response.status_code == 409
    assert client.get(f"/api/v1/products/{existing['id']}").json["name"] == existing["name"]


def test_deleting_an_ordered_product_is_409(client, product):
    item = product(sku="ORDERED")
    order = {"items": [{"product_id": item["id"], "quantity": 1}]}
    assert client.post("/api/v1/orders", json=order, headers=AUTH).status_code == 201
    response = client.delete(f"/api/v1/products/{item['id']}", headers=AUTH)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "product_has_orders"


def test_not_found_is_404_json(anonymous):
    for url in (
        "/api/v1/products/999",
        "/api/v2/products/99999999999999999999999",
        "/api/v1/orders/12345",
        "/api/v3/nothing",
    ):
        response = anonymous.get(url)
        assert response.status_code == 404, url
        assert response.json["error"]["code"] == "not_found"
        assert set(response.json["error"]) == {"code", "message", "fields"}
