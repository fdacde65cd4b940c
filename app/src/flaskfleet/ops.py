"""Operational endpoints: liveness, readiness and Prometheus metrics (never rate-limited)."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, current_app, jsonify

from flaskfleet import db, metrics
from flaskfleet.web import HOSTNAME

ops = Blueprint("ops", __name__)


@ops.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers; dependencies are /readyz's business."""
    settings = current_app.extensions["flaskfleet"].settings
    return jsonify({"status": "ok", "version": settings.release, "host": HOSTNAME})


def _check_redis(client: redis.Redis | None) -> dict:
    if client is None:
        return {"status": "not_configured"}
    try:
        client.ping()
    except redis.RedisError as exc:
        return {"status": "down", "error": str(exc)[:200]}
    return {"status": "ok"}


@ops.get("/readyz")
def readyz() -> Response:
    """Ready while the primary answers; a missing replica or Redis only degrades the service."""
    services = current_app.extensions["flaskfleet"]
    checks = {
        "primary": db.check(services.db.primary),
        "replica": db.check(services.db.replica),
        "redis": _check_redis(services.redis),
    }
    if checks["primary"]["status"] != "ok":
        status, code = "unavailable", 503
    elif any(check["status"] == "down" for check in checks.values()):
        status, code = "degraded", 200
    else:
        status, code = "ready", 200
    response = jsonify({"status": status, "checks": checks})
    response.status_code = code
    response.headers["Cache-Control"] = "no-store"
    return response


@ops.get("/metrics")
def metrics_endpoint() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
