"""Redis: rate limits per client (429 with Retry-After), JSON-only cache under ff:, the app's
ACL user, and surviving Redis going away."""

import json
import pickle
from pathlib import Path

import pytest
import redis
from conftest import AUTH, bearer, wait_for


def test_rate_limit_is_per_client(make_app, redis_server):
    app = make_app(FLASKFLEET_RATELIMIT_PER_CLIENT="3 per minute")
    client = app.test_client()
    # The limit covers all routes together.
    for url in ("/api/v1/products", "/api/v2/products", "/api/v1/products/1"):
        assert client.get(url, headers=AUTH).status_code in {200, 404}
    response = client.get("/api/v1/products", headers=AUTH)
    assert response.status_code == 429
    assert response.json["error"]["code"] == "rate_limited"
    assert 0 < int(response.headers["Retry-After"]) <= 60
    assert response.headers["X-Request-ID"]
    # Another client is still served; anonymous requests are nginx's to limit, not the app's.
    assert client.get("/api/v1/products", headers=bearer("shop")).status_code == 200
    for _ in range(5):
        assert client.get("/api/v1/products").status_code == 200
    # Probes are never limited.
    assert client.get("/healthz", headers=AUTH).status_code == 200
    assert client.get("/readyz", headers=AUTH).status_code == 200
    # Counters live in Redis, under ff:, one per client: another worker process (another app)
    # sees the same limit.
    keys = sorted(key.decode() for key in redis_server.admin().keys("ff:limits:*"))
    assert [key.split("/")[1] for key in keys] == ["admin", "shop"], keys
    other_worker = make_app(FLASKFLEET_RATELIMIT_PER_CLIENT="3 per minute").test_client()
    assert other_worker.get("/api/v1/products", headers=AUTH).status_code == 429


def test_without_redis_configured_cache_is_off_and_limits_in_memory(make_app, app_env):
    app = make_app(FLASKFLEET_REDIS_URL="", FLASKFLEET_RATELIMIT_PER_CLIENT="2 per minute")
    client = app.test_client()
    assert client.get("/readyz").json["checks"]["redis"] == {"status": "not_configured"}
    assert client.get("/readyz").json["status"] == "ready"
    assert client.get("/api/v1/products", headers=AUTH).headers["X-Cache"] == "MISS"
    assert client.get("/api/v1/products", headers=AUTH).headers["X-Cache"] == "MISS"
    assert client.get("/api/v1/products", headers=AUTH).status_code == 429
    assert client.get("/api/v1/products", headers=bearer("shop")).status_code == 200


def test_every_key_the_app_writes_starts_with_ff(client, anonymous, product, redis_server):
    item = product(sku="PREFIXED")
    url = f"/api/v1/products/{item['id']}"
    anonymous.get(url)
    anonymous.get("/api/v1/products")
    anonymous.get("/api/v2/products")
    client.get(url, headers=AUTH)
    order = {"items": [{"product_id": item["id"], "quantity": 1}]}
    assert client.post("/api/v1/orders", json=order, headers=AUTH).status_code == 201
    keys = {key.decode() for key in redis_server.admin().keys("*")}
    assert keys, "the requests above should have written cache entries and limit counters"
    assert {key for key in keys if not key.startswith("ff:")} == set()
    assert "ff:cache:product-list-generation" in keys
    assert any(key.startswith("ff:cache:product-list:") for key in keys)
    assert any(key.startswith("ff:limits:") for key in keys)


class _Touch:
    """A pickle that creates a file when loaded: the kind of payload a Redis writer could plant."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_cache_never_unpickles_a_planted_value(anonymous, product, redis_server, tmp_path):
    item = product(sku="PLANTED")
    url = f"/api/v1/products/{item['id']}"
    key = f"ff:cache:product:{item['id']}"
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Touch(marker))
    pickle.loads(payload)  # noqa: S301 -- proves the payload is live: loading creates the marker
    assert marker.exists()
    marker.unlink()

    admin = redis_server.admin()
    admin.set(key, payload)
    response = anonymous.get(url)
    assert response.status_code == 200
    assert response.headers["X-Cache"] == "MISS"
    assert response.json == item
    assert not marker.exists()
    # The read replaced the planted value with JSON, which the next read serves.
    assert json.loads(admin.get(key)) == item
    assert anonymous.get(url).headers["X-Cache"] == "HIT"


@pytest.mark.parametrize(
    "command",
    [
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "GET", "*"),
        ("ACL", "LIST"),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("SET", "elsewhere", "1"),
        ("GET", "LIMITS:anything"),
    ],
)
def test_app_redis_user_cannot_leave_its_lane(redis_server, command):
    app_user = redis.Redis.from_url(redis_server.url)
    # Logged in as the app's user, which may write its own keys.
    assert app_user.connection_pool.connection_kwargs["username"] == redis_server.app_user
    assert app_user.set("ff:probe", "1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        app_user.execute_command(*command)


def test_service_keeps_answering_while_redis_is_down(client, anonymous, product, redis_server):
    created = product(sku="NO-REDIS")
    url = f"/api/v1/products/{created['id']}"
    anonymous.get(url)
    assert anonymous.get(url).headers["X-Cache"] == "HIT"
    redis_server.stop()
    try:
        for _ in range(3):
            response = anonymous.get(url)
            assert response.status_code == 200
            assert response.headers["X-Cache"] == "MISS"
            assert response.json["sku"] == "NO-REDIS"
        assert anonymous.get("/api/v1/products").status_code == 200
        replacement = {"sku": "NO-REDIS", "name": "Still writable", "price_cents": 1, "stock": 1}
        assert client.put(url, json=replacement, headers=AUTH).status_code == 200
        assert client.get(url, headers=AUTH).json["name"] == "Still writable"
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200
        assert ready.json["status"] == "degraded"
        assert ready.json["checks"]["redis"]["status"] == "down"
        assert ready.json["checks"]["redis"]["error"] == "ConnectionError"
        assert ready.json["checks"]["redis"]["breaker"]["state"] == "open"
        assert ready.json["checks"]["primary"]["status"] == "ok"
        metrics = anonymous.get("/metrics").data.decode()
        assert 'flaskfleet_cache_requests_total{result="error"}' in metrics
    finally:
        redis_server.start()
    ready = anonymous.get("/readyz")
    assert ready.json["status"] == "ready"
    assert ready.json["checks"]["redis"]["status"] == "ok"
    # The breaker opened while Redis was down; the first request after its cool-down probes
    # Redis, closes it, and the cache is used again.
    wait_for(
        lambda: anonymous.get(url).headers["X-Cache"] == "HIT",
        timeout=30,
        what="the cache to be used again",
    )
    assert anonymous.get("/readyz").json["checks"]["redis"]["breaker"]["state"] == "closed"
