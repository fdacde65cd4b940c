"""Orders: stock reservation in one transaction, idempotent creation, no overselling."""

import threading

from conftest import AUTH


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
    assert response.headers["Location"] == f"/api/v1/orders/{order['id']}"
    assert client.get(f"/api/v1/products/{mug['id']}").json["stock"] == 2
    assert client.get(f"/api/v1/orders/{order['id']}").json == order


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
