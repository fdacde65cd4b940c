"""Liveness, readiness, metrics and the headers every response carries."""

import json
import re

from conftest import AUTH, free_port
from prometheus_client.parser import text_string_to_metric_families


def test_healthz_says_ok_and_nothing_else(anonymous):
    response = anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}
    # The release and host are for the deploy's check on the node; nginx hides the headers.
    assert response.headers["X-App-Version"] == "test-release"
    assert response.headers["X-Served-By"]


def test_readyz_all_green(anonymous):
    response = anonymous.get("/readyz")
    assert response.status_code == 200
    assert response.json["status"] == "ready"
    checks = response.json["checks"]
    assert {name: check["status"] for name, check in checks.items()} == {
        "primary": "ok",
        "replica": "ok",
        "redis": "ok",
    }
    assert checks["primary"]["in_recovery"] is False
    assert checks["replica"]["in_recovery"] is True


def test_every_response_carries_service_headers(anonymous, client):
    for response in (
        anonymous.get("/healthz"),
        anonymous.get("/api/v1/products"),
        anonymous.get("/api/v1/products/99"),
        client.post("/api/v1/products", json={}, headers={}),
    ):
        assert response.headers["X-Served-By"]
        assert response.headers["X-App-Version"] == "test-release"
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_request_id_is_echoed_when_sane(anonymous):
    given = anonymous.get("/healthz", headers={"X-Request-ID": "abc-123.def"})
    assert given.headers["X-Request-ID"] == "abc-123.def"
    hostile = anonymous.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["X-Request-ID"])


def test_readyz_names_the_error_class_and_logs_the_message(make_app, cluster, capfd):
    port = free_port()
    app = make_app(
        FLASKFLEET_DATABASE_URL=f"postgresql://flaskfleet_app:pw@127.0.0.1:{port}/x",
        FLASKFLEET_REDIS_URL=f"redis://flaskfleet:pw@127.0.0.1:{free_port()}/0",
    )
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    checks = response.json["checks"]
    assert checks["primary"] == {"status": "down", "error": "OperationalError"}
    # The readiness probe does not feed the request path's breaker: it stays closed.
    assert checks["redis"] == {
        "status": "down",
        "error": "ConnectionError",
        "breaker": {"state": "closed", "consecutive_failures": 0},
    }
    assert checks["replica"]["status"] == "ok"
    assert checks["replica"]["breaker"]["state"] == "closed"
    for secret in ("127.0.0.1", str(port), "flaskfleet_app", "pw@"):
        assert secret not in response.text
    logged = [
        json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")
    ]
    failures = {line["dependency"]: line["error"] for line in logged if "dependency" in line}
    assert str(port) in failures["primary"]
    assert failures["redis"]


def test_logs_are_json_with_request_id_and_client(make_app, capfd):
    app = make_app(FLASKFLEET_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    body = {"sku": "LOGGED", "name": "n", "price_cents": 1, "stock": 1}
    response = app.test_client().post(
        "/api/v1/products", json=body, headers={**AUTH, "X-Request-ID": "trace-me"}
    )
    assert response.status_code == 503
    lines = [
        json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")
    ]
    logged = [line for line in lines if line.get("request_id") == "trace-me"]
    assert logged
    assert logged[0]["level"] == "error"
    assert logged[0]["message"] == "database unavailable"
    assert logged[0]["client"] == "admin"


def sample(families, name, **labels):
    for family in families:
        for metric in family.samples:
            if metric.name == name and all(metric.labels.get(k) == v for k, v in labels.items()):
                return metric.value
    return None


def test_metrics(client, anonymous, product):
    created = product(sku="METRICS")
    url = f"/api/v1/products/{created['id']}"
    anonymous.get(url)
    anonymous.get(url)
    anonymous.get("/api/v1/products/424242")
    response = anonymous.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = list(text_string_to_metric_families(response.data.decode()))
    route = "/api/v1/products/<int:product_id>"
    assert sample(families, "flaskfleet_http_requests_total", route=route, status="200") >= 2
    assert sample(families, "flaskfleet_http_requests_total", route=route, status="404") >= 1
    assert (
        sample(
            families, "flaskfleet_http_request_duration_seconds_count", route=route, method="GET"
        )
        >= 3
    )
    assert sample(families, "flaskfleet_cache_requests_total", result="hit") >= 1
    assert sample(families, "flaskfleet_cache_requests_total", result="miss") >= 1
    assert sample(families, "flaskfleet_db_pool_connections_max", pool="replica") == 8
    assert sample(families, "flaskfleet_db_pool_connections_in_use", pool="primary") == 0
    assert client.post("/api/v1/products", json={}, headers=AUTH).status_code == 422
