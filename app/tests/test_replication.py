"""Read routing: anonymous reads use the replica, writers read their own writes, and a replica
that is down only sends reads to the primary."""

import time

import pytest
from conftest import AUTH, wait_for
from flaskfleet.web import WRITE_LSN_COOKIE, WRITE_LSN_SALT
from itsdangerous import TimestampSigner, URLSafeTimedSerializer


@pytest.fixture
def pause_replica(cluster):
    """Call to stop WAL replay on the replica: new writes stay invisible there until the test
    ends, when replay resumes."""
    paused = []

    def pause():
        cluster.replica.query("SELECT pg_wal_replay_pause()")
        paused.append(True)
        wait_for(
            lambda: (
                cluster.replica.query("SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused"
            ),
            what="replay to pause",
        )

    yield pause
    if paused:
        cluster.replica.query("SELECT pg_wal_replay_resume()")
        cluster.wait_replica_caught_up()


def new_product(client, sku):
    body = {"sku": sku, "name": sku, "price_cents": 100, "stock": 5}
    response = client.post("/api/v1/products", json=body, headers=AUTH)
    assert response.status_code == 201
    return response.json


def test_anonymous_reads_use_replica_writer_reads_own_writes(client, anonymous, pause_replica):
    pause_replica()
    created = new_product(client, "FRESH")
    url = f"/api/v1/products/{created['id']}"

    # The replica has not replayed the insert: a reader without the write cookie misses it.
    missing = anonymous.get(url)
    assert missing.status_code == 404
    listing = anonymous.get("/api/v2/products")
    assert listing.json["items"] == []
    assert listing.headers["X-Read-Source"] == "replica"

    # The writer carries the commit LSN, which the replica has not reached: primary answers.
    mine = client.get(url)
    assert mine.status_code == 200
    assert mine.json == created
    assert mine.headers["X-Read-Source"] == "primary"

    order = client.post(
        "/api/v1/orders",
        json={"items": [{"product_id": created["id"], "quantity": 2}]},
        headers=AUTH,
    )
    assert order.status_code == 201
    order_url = f"/api/v1/orders/{order.json['id']}"
    # The order is the client's own, but without the write cookie its read goes to the replica.
    assert anonymous.get(order_url, headers=AUTH).status_code == 404
    seen = client.get(order_url, headers=AUTH)
    assert seen.status_code == 200
    assert seen.json == order.json
    assert seen.headers["X-Read-Source"] == "primary"

    # The writer's fresh read also replaced the stale list page the anonymous read cached.
    assert client.get("/api/v2/products").json["items"][0]["stock"] == 3
    assert anonymous.get("/api/v2/products").json["items"][0]["stock"] == 3


def test_writer_goes_back_to_replica_once_it_caught_up(client, anonymous, cluster):
    created = new_product(client, "CAUGHT-UP")
    cluster.wait_replica_caught_up()
    product = client.get(f"/api/v1/products/{created['id']}")
    assert product.status_code == 200
    assert product.headers["X-Read-Source"] == "replica"


def test_read_your_writes_window_expires(make_app, product, pause_replica):
    item = product(sku="SHORT-WINDOW")
    pause_replica()
    client = make_app(FLASKFLEET_READ_YOUR_WRITES_SECONDS="2").test_client()
    order = client.post(
        "/api/v1/orders", json={"items": [{"product_id": item["id"], "quantity": 1}]}, headers=AUTH
    )
    url = f"/api/v1/orders/{order.json['id']}"
    assert client.get(url, headers=AUTH).status_code == 200
    # The cookie's signing time is in whole seconds, so it may be honoured for up to a second
    # past the window.
    time.sleep(3.1)
    # After the window the writer is an ordinary reader again, served by the (paused) replica.
    assert client.get(url, headers=AUTH).status_code == 404


def test_replica_down_reads_fall_back_to_primary(client, anonymous, product, cluster):
    created = product(sku="FALLBACK")
    cluster.replica.stop()
    try:
        response = anonymous.get(f"/api/v1/products/{created['id']}")
        assert response.status_code == 200
        assert response.headers["X-Read-Source"] == "primary"
        assert anonymous.get("/api/v1/products").json["total"] == 1
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200
        assert ready.json["status"] == "degraded"
        assert ready.json["checks"]["replica"]["status"] == "down"
        assert ready.json["checks"]["primary"]["status"] == "ok"
        assert new_product(client, "WRITE-WHILE-REPLICA-DOWN")["id"] > created["id"]
    finally:
        cluster.restart_replica()
    assert anonymous.get("/readyz").json["status"] == "ready"
    response = anonymous.get("/api/v2/products")
    assert response.headers["X-Read-Source"] == "replica"
    assert len(response.json["items"]) == 2


def test_primary_down_is_unavailable_but_replica_still_serves(make_app, cluster, product):
    created = product(sku="PRIMARY-GONE")
    from conftest import free_port

    app = make_app(FLASKFLEET_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json["status"] == "unavailable"
    assert ready.json["checks"]["primary"]["status"] == "down"
    assert ready.json["checks"]["replica"]["status"] == "ok"
    assert client.get(f"/api/v1/products/{created['id']}").status_code == 200
    body = {"sku": "NOPE", "name": "n", "price_cents": 1, "stock": 1}
    response = client.post("/api/v1/products", json=body, headers=AUTH)
    assert response.status_code == 503
    assert response.json["error"]["code"] == "database_unavailable"


class _SignerAt(TimestampSigner):
    """Signs as if the clock read `offset` seconds from now."""

    offset = 0

    def get_timestamp(self) -> int:
        return int(time.time()) + self.offset


def signed_lsn(lsn: str, *, key: str, salt: str = WRITE_LSN_SALT, offset: int = 0) -> str:
    signer = type("Signer", (_SignerAt,), {"offset": offset})
    return URLSafeTimedSerializer(key, salt=salt, signer=signer).dumps(lsn)


def test_only_a_genuine_fresh_write_cookie_sends_reads_to_the_primary(
    app_env, client, make_app, pause_replica
):
    """A forged, tampered, expired or future-dated cookie is ignored: the read goes where any
    reader's would (here the paused replica, which has not seen the product yet)."""
    pause_replica()
    created = new_product(client, "COOKIE")
    url = f"/api/v1/products/{created['id']}"
    genuine = client.get_cookie(WRITE_LSN_COOKIE).value
    key = app_env["FLASKFLEET_SECRET_KEY"]
    lsn = URLSafeTimedSerializer(key, salt=WRITE_LSN_SALT).loads(genuine)
    payload, _, signature = genuine.rpartition(".")
    beyond = "FFFFFFFF/FFFFFFFF"
    ignored = {
        "unsigned, the old format": f"{lsn}@{int(time.time())}",
        "tampered payload": signed_lsn(beyond, key=key).split(".")[0]
        + genuine[genuine.index(".") :],
        "tampered signature": payload + "." + ("A" if signature[0] != "A" else "B") + signature[1:],
        "another key": signed_lsn(lsn, key="some-other-secret-key"),
        "another salt": signed_lsn(lsn, key=key, salt="itsdangerous"),
        "expired": signed_lsn(lsn, key=key, offset=-31),
        "future-dated": signed_lsn(lsn, key=key, offset=3600),
    }
    app = make_app()

    def read_with(cookie: str):
        reader = app.test_client()
        reader.set_cookie(WRITE_LSN_COOKIE, cookie)
        return reader.get(url)

    for name, cookie in ignored.items():
        assert read_with(cookie).status_code == 404, name
    # The genuine cookie, and one made the same way by this test (so the ones above differ
    # from a valid cookie only in what their names say), are honoured.
    for cookie in (genuine, signed_lsn(lsn, key=key)):
        response = read_with(cookie)
        assert response.status_code == 200
        assert response.headers["X-Read-Source"] == "primary"
