"""Redis: shared rate limits (429 with Retry-After), and surviving Redis going away."""

import redis
from conftest import AUTH


def test_rate_limit_is_429_with_retry_after(make_app, redis_server):
    app = make_app(FLASKFLEET_RATELIMIT_DEFAULT="3 per minute")
    client = app.test_client()
    for _ in range(3):
        assert client.get("/api/v1/products").status_code == 200
    response = client.get("/api/v1/products")
    assert response.status_code == 429
    assert response.json["error"]["code"] == "rate_limited"
    assert 0 < int(response.headers["Retry-After"]) <= 60
    assert response.headers["X-Request-ID"]
    # Limits count per client and route; probes are never limited.
    assert client.get("/api/v2/products").status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    # Counters live in Redis, so another worker process (another app) sees the same limit.
    assert redis.Redis.from_url(redis_server.url).keys("LIMITS:LIMITER/flaskfleet/*")
    assert (
        make_app(FLASKFLEET_RATELIMIT_DEFAULT="3 per minute")
        .test_client()
        .get("/api/v1/products")
        .status_code
        == 429
    )


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
        assert client.get(url).json["name"] == "Still writable"
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200
        assert ready.json["status"] == "degraded"
        assert ready.json["checks"]["redis"]["status"] == "down"
        assert ready.json["checks"]["primary"]["status"] == "ok"
        metrics = anonymous.get("/metrics").data.decode()
        assert 'flaskfleet_cache_requests_total{result="error"}' in metrics
    finally:
        redis_server.start()
    ready = anonymous.get("/readyz")
    assert ready.json["status"] == "ready"
    assert ready.json["checks"]["redis"]["status"] == "ok"
    anonymous.get(url)
    assert anonymous.get(url).headers["X-Cache"] == "HIT"


def test_without_redis_configured_cache_is_off_and_limits_in_memory(make_app, app_env):
    app = make_app(FLASKFLEET_REDIS_URL="", FLASKFLEET_RATELIMIT_DEFAULT="2 per minute")
    client = app.test_client()
    assert client.get("/readyz").json["checks"]["redis"] == {"status": "not_configured"}
    assert client.get("/readyz").json["status"] == "ready"
    assert client.get("/api/v1/products").headers["X-Cache"] == "MISS"
    assert client.get("/api/v1/products").headers["X-Cache"] == "MISS"
    assert client.get("/api/v1/products").status_code == 429
