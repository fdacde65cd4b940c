"""Sales reports: queued with 202 and a job to poll, computed by a worker from the replica,
validated with errors that name the field, and visible to the client that asked only."""

import datetime
import uuid

import psycopg2
import pytest
from conftest import AUTH, bearer, wait_for
from flaskfleet import shop

TODAY = datetime.datetime.now(datetime.UTC).date()


def report(client, first: object, last: object, headers=None):
    return client.post(
        "/api/v1/reports/sales",
        json={"from": first, "to": last},
        headers=AUTH if headers is None else headers,
    )


def test_report_job_computes_confirmed_sales_per_product(client, product, cluster, start_worker):
    start_worker()
    mug = product(sku="MUG", stock=50, price_cents=800)
    pen = product(sku="PEN", stock=50, price_cents=150)

    def order(*lines):
        body = {"items": [{"product_id": pid, "quantity": qty} for pid, qty in lines]}
        response = client.post("/api/v1/orders", json=body, headers=AUTH)
        assert response.status_code == 201
        return response.json["id"]

    counted = [order((mug["id"], 2), (pen["id"], 1)), order((mug["id"], 1))]
    expired, old = order((pen["id"], 7)), order((mug["id"], 5))
    wait_for(
        lambda: cluster.primary.query("SELECT count(*) = 4 FROM orders WHERE status = 'confirmed'")[
            0
        ][0],
        what="the worker to confirm the orders",
    )
    # Not sales in the range: an order whose reservation expired, one from long ago.
    cluster.primary.query("UPDATE orders SET status = 'expired' WHERE public_id = %s", (expired,))
    cluster.primary.query(
        "UPDATE orders SET created_at = now() - interval '40 days' WHERE public_id = %s", (old,)
    )
    first = (TODAY - datetime.timedelta(days=7)).isoformat()
    queued = report(client, first, TODAY.isoformat())
    assert queued.status_code == 202
    job_url = queued.headers["Location"]
    assert job_url == f"/api/v1/jobs/{queued.json['id']}"
    assert queued.json["status"] == "queued"
    assert queued.json["params"] == {"from": first, "to": TODAY.isoformat()}
    job = wait_for(
        lambda: (body := client.get(job_url, headers=AUTH).json)["status"] == "done" and body,
        what="the report job to finish",
    )
    assert job["result"] == {
        "from": first,
        "to": TODAY.isoformat(),
        "orders": len(counted),
        "revenue_cents": 3 * 800 + 150,
        "products": [
            {"product_id": mug["id"], "sku": "MUG", "name": "Product MUG", "orders": 2,
             "quantity": 3, "revenue_cents": 2400},
            {"product_id": pen["id"], "sku": "PEN", "name": "Product PEN", "orders": 1,
             "quantity": 1, "revenue_cents": 150},
        ],
    }  # fmt: skip
    assert job["started_at"] <= job["finished_at"]
    # Another client's job is answered like one that does not exist.
    foreign = client.get(job_url, headers=bearer("analyst"))
    absent = client.get(f"/api/v1/jobs/{uuid.uuid4()}", headers=bearer("analyst"))
    assert foreign.status_code == absent.status_code == 404
    assert foreign.json["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"from": "2026-03-02", "to": "2026-03-01"}, "to"),
        ({"from": "2020-01-01", "to": "2021-01-01"}, "to"),
        ({"from": "2026-02-30", "to": "2026-03-01"}, "from"),
        ({"from": "yesterday", "to": "2026-03-01"}, "from"),
        ({"from": "2026-03-01T00:00:00", "to": "2026-03-01"}, "from"),
        ({"from": 20260301, "to": "2026-03-01"}, "from"),
        ({"from": "2026-03-01"}, "to"),
        ({"from": "2026-03-01", "to": "2026-03-01", "group_by": "day"}, "group_by"),
    ],
)
def test_bad_ranges_are_422_naming_the_field(client, cluster, body, field):
    response = client.post("/api/v1/reports/sales", json=body, headers=AUTH)
    assert response.status_code == 422
    assert response.json["error"]["code"] == "validation_failed"
    assert list(response.json["error"]["fields"]) == [field]
    assert cluster.primary.query("SELECT count(*) FROM jobs")[0][0] == 0


def test_the_range_cap_is_a_setting(make_app):
    client = make_app(FLASKFLEET_REPORT_MAX_DAYS="31").test_client()
    assert report(client, "2026-01-01", "2026-01-31").status_code == 202
    response = report(client, "2026-01-01", "2026-02-01")
    assert response.status_code == 422
    assert response.json["error"]["fields"] == {"to": "the range may span at most 31 days"}


def test_reports_need_their_scope(client):
    queued = report(client, "2026-01-01", "2026-01-02")
    assert report(client, "2026-01-01", "2026-01-02", headers={}).status_code == 401
    for name in ("shop", "catalog"):
        assert report(client, "2026-01-01", "2026-01-02", bearer(name)).status_code == 403
        assert client.get(queued.headers["Location"], headers=bearer(name)).status_code == 403


def test_a_report_query_past_its_timeout_is_cancelled_and_the_session_reset(cluster):
    """The worker's report query carries a statement timeout below the task's soft time limit:
    a query blocked on a lock is cancelled by PostgreSQL (an error the task retries and then
    dead-letters) rather than left for the hard time limit to kill."""
    blocker = cluster.primary.connect()
    blocker.autocommit = False
    reader = cluster.primary.connect()
    reader.autocommit = True
    try:
        with blocker.cursor() as cur:
            cur.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(psycopg2.errors.QueryCanceled):
            shop.sales_report(reader, TODAY, TODAY, timeout_ms=300)
        with reader.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone()[0] == "0"
    finally:
        blocker.rollback()
        blocker.close()
        reader.close()
