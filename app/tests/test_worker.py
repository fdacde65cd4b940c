"""The worker tier against a real queue Redis and real `celery worker` processes: orders
confirmed exactly once through the outbox, the relay, redelivery after a killed worker,
retries and dead letters, expiry, reports, and the request id in task logs."""

from conftest import AUTH, wait_for


def order_body(*lines):
    return {"items": [{"product_id": pid, "quantity": qty} for pid, qty in lines]}


def test_worker_confirms_an_order_once(client, product, cluster, start_worker):
    start_worker()
    item = product(sku="CONFIRM", stock=5)
    placed = client.post("/api/v1/orders", json=order_body((item["id"], 2)), headers=AUTH)
    assert placed.status_code == 201
    assert placed.json["status"] == "reserved"
    assert placed.json["confirmed_at"] is None
    url = f"/api/v1/orders/{placed.json['id']}"
    order = wait_for(
        lambda: (body := client.get(url, headers=AUTH).json)["status"] == "confirmed" and body,
        what="the worker to confirm the order",
    )
    assert order["confirmed_at"] >= order["created_at"]
    assert cluster.primary.query("SELECT count(*) FROM order_receipts")[0][0] == 1
    # Published by the app right after its commit, not by the relay.
    assert cluster.primary.query("SELECT count(*) FROM outbox WHERE sent_at IS NULL")[0][0] == 0
