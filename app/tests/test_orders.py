"""Orders: stock reservation in one transaction, idempotent creation, no overselling, and
each client sees only its own orders, by public id."""

import re
import threading
import uuid

from conftest import AUTH, bearer

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def order_body(*lines):
    return {"items": [{"product_id": pid, "quantity": qty} for pid, qty in lines]}


def test_order_reserves_stock_and_totals(client, product):
    mug, pen = (
        product(sku="MUG", stock=5, price_cents=800),
        product(sku="PEN", stock=9, price_cents=150),
    )
    response = client.post(
        "/api/v1/orders",
        json=order_body((mug["id"], 2), (pen["id"], 3), (mug["id"], 1)),
        headers=AUTH,
    )
    assert response.status_code == 201
    order = response.json
    assert order["total_cents"] == 3 * 800 + 3 * 150
    assert order["items"] == [
        {"product_id": mug["id"], "quantity": 3, "unit_price_cents": 800},
        {"product_id": pen["id"], "quantity": 3, "unit_price_cents": 150},
    ]
    assert UUID4.match(order["id"])
    assert response.headers["Location"] == f"/api/v1/orders/{order['id']}"
    assert client.get(f"/api/v1/products/{mug['id']}").json["stock"] == 2
    assert client.get(f"/api/v1/orders/{order['id']}", headers=AUTH).json == order


def test_insufficient_stock_is_409_and_changes_nothing(client, product, cluster):
    plenty, scarce = product(sku="PLENTY", stock=10), product(sku="SCARCE", stock=1)
    response = client.post(
        "/api/v1/orders", json=order_body((plenty["id"], 2), (scarce["id"], 2)), headers=AUTH
    )
    assert response.status_code == 409
    assert response.json["error"]["code"] == "insufficient_stock"
    assert client.get(f"/api/v1/products/{plenty['id']}").json["stock"] == 10
    assert cluster.primary.query("SELECT count(*) FROM orders")[0][0] == 0


def test_unknown_product_is_422(client):
    response = client.post("/api/v1/orders", json=order_body((424242, 1)), headers=AUTH)
    assert response.status_code == 422
    assert response.json["error"]["code"] == "unknown_product"


def test_idempotent_replay_returns_first_response(client, product, cluster):
    item = product(sku="IDEM", stock=10)
    headers = {**AUTH, "Idempotency-Key": "order-123"}
    first = client.post("/api/v1/orders", json=order_body((item["id"], 2)), headers=headers)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    # Same body, formatted differently, is the same request.
    replay = client.post(
        "/api/v1/orders",
        data='{"items":[ {"quantity": 2, "product_id": ' + str(item["id"]) + "} ]}",
        headers={**headers, "Content-Type": "application/json"},
    )
    assert replay.status_code == 201
    assert replay.json == first.json
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert cluster.primary.query("SELECT count(*) FROM orders")[0][0] == 1
    assert client.get(f"/api/v1/products/{item['id']}").json["stock"] == 8


def test_reused_key_with_different_body_is_422(client, product, cluster):
    item = product(sku="IDEM2", stock=10)
    headers = {**AUTH, "Idempotency-Key": "order-456"}
    assert (
        client.post("/api/v1/orders", json=order_body((item["id"], 1)), headers=headers).status_code
        == 201
    )
    response = client.post("/api/v1/orders", json=order_body((item["id"], 5)), headers=headers)
    assert response.status_code == 422
    assert response.json["error"]["code"] == "idempotency_key_reused"
    assert cluster.primary.query("SELECT count(*) FROM orders")[0][0] == 1
    assert client.get(f"/api/v1/products/{item['id']}").json["stock"] == 9


def test_concurrent_replays_of_one_key_create_one_order(app, product, cluster):
    item = product(sku="RACE-KEY", stock=50)
    headers = {**AUTH, "Idempotency-Key": "same-key-everywhere"}
    results = []
    barrier = threading.Barrier(6)

    def place():
        client = app.test_client()
        barrier.wait()
        results.append(
            client.post("/api/v1/orders", json=order_body((item["id"], 1)), headers=headers)
        )

    threads = [threading.Thread(target=place) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [response.status_code for response in results] == [201] * 6
    assert len({response.json["id"] for response in results}) == 1
    assert cluster.primary.query("SELECT count(*) FROM orders")[0][0] == 1
    assert cluster.primary.query("SELECT stock FROM products")[0][0] == 49


def test_parallel_orders_never_oversell(app, product, cluster):
    available = 5
    item = product(sku="LAST-UNITS", stock=available)
    buyers = 16
    barrier = threading.Barrier(buyers)
    statuses = []

    def buy():
        client = app.test_client()
        barrier.wait()
        response = client.post("/api/v1/orders", json=order_body((item["id"], 1)), headers=AUTH)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=buy) for _ in range(buyers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(201) == available
    assert statuses.count(409) == buyers - available
    ((stock,),) = cluster.primary.query("SELECT stock FROM products WHERE id = %s", (item["id"],))
    assert stock == 0
    ((sold,),) = cluster.primary.query(
        "SELECT coalesce(sum(quantity), 0) FROM order_items WHERE product_id = %s", (item["id"],)
    )
    assert sold == available


def test_orders_belong_to_their_client_and_show_only_the_public_id(client, product, cluster):
    item = product(sku="OWNED", stock=10)
    placed = client.post("/api/v1/orders", json=order_body((item["id"], 1)), headers=bearer("shop"))
    assert placed.status_code == 201
    order = placed.json
    ((pk, owner),) = cluster.primary.query(
        "SELECT id, owner FROM orders WHERE public_id = %s", (order["id"],)
    )
    assert owner == "shop"
    # The public id is the only id shown; the sequential key appears nowhere.
    assert UUID4.match(order["id"])
    assert placed.headers["Location"] == f"/api/v1/orders/{order['id']}"
    assert set(order) == {"id", "status", "total_cents", "created_at", "confirmed_at", "items"}

    url = f"/api/v1/orders/{order['id']}"
    assert client.get(url, headers=bearer("shop")).json == order
    # Another client's order is answered exactly as one that does not exist.
    foreign = client.get(url, headers=AUTH)
    absent_id = str(uuid.uuid4())
    absent = client.get(f"/api/v1/orders/{absent_id}", headers=AUTH)
    assert foreign.status_code == absent.status_code == 404
    assert foreign.json == {
        "error": {**absent.json["error"], "message": f"order {order['id']} does not exist"}
    }
    assert absent.json["error"]["message"] == f"order {absent_id} does not exist"
    # A sequential id is no address at all.
    assert client.get(f"/api/v1/orders/{pk}", headers=bearer("shop")).status_code == 404


def test_orders_need_their_scopes(client, product):
    item = product(sku="SCOPED", stock=10)
    body = order_body((item["id"], 1))
    order = client.post("/api/v1/orders", json=body, headers=AUTH).json
    url = f"/api/v1/orders/{order['id']}"
    for response in (client.get(url), client.post("/api/v1/orders", json=body)):
        assert response.status_code == 401
        assert response.json["error"]["code"] == "unauthorized"
    # catalog holds products:write only.
    for response, scope in (
        (client.get(url, headers=bearer("catalog")), "orders:read"),
        (client.post("/api/v1/orders", json=body, headers=bearer("catalog")), "orders:write"),
    ):
        assert response.status_code == 403
        assert response.json["error"]["code"] == "forbidden"
        assert scope in response.json["error"]["message"]
        assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_legacy_orders_are_readable_by_no_client(client, cluster):
    ((public_id,),) = cluster.primary.query(
        "INSERT INTO orders (owner, total_cents) VALUES ('legacy', 0) RETURNING public_id::text"
    )
    cluster.wait_replica_caught_up()
    for name in ("admin", "shop"):
        assert client.get(f"/api/v1/orders/{public_id}", headers=bearer(name)).status_code == 404


def test_idempotency_keys_are_per_client(client, product, cluster):
    item = product(sku="SHARED-KEY", stock=10)
    key = {"Idempotency-Key": "the-same-key"}
    mine = client.post("/api/v1/orders", json=order_body((item["id"], 1)), headers={**AUTH, **key})
    theirs = client.post(
        "/api/v1/orders", json=order_body((item["id"], 3)), headers={**bearer("shop"), **key}
    )
    assert mine.status_code == theirs.status_code == 201
    assert "Idempotent-Replayed" not in theirs.headers
    assert mine.json["id"] != theirs.json["id"]
    replay = client.post(
        "/api/v1/orders", json=order_body((item["id"], 3)), headers={**bearer("shop"), **key}
    )
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json == theirs.json
    assert cluster.primary.query("SELECT count(*) FROM orders")[0][0] == 2
