"""Operational endpoints: liveness, readiness and Prometheus metrics (never rate-limited).

They say nothing a stranger could use: /healthz only that the process answers (the release
and host are in the X-App-Version and X-Served-By headers, which nginx hides from the public),
/readyz which dependency is down and the class of the error, never its message (addresses,
DSNs); the message goes to the log.
"""

from __future__ import annotations

import logging

import redis
from flask import Blueprint, Response, current_app, jsonify

from flaskfleet import db, metrics

log = logging.getLogger(__name__)

ops = Blueprint("ops", __name__)


@ops.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers; dependencies are /readyz's business."""
    return jsonify({"status": "ok"})


def _down(dependency: str, exc: Exception) -> dict:
    # DatabaseUnavailable wraps the driver's error, whose class says more (OperationalError).
    cause = exc.__cause__ if isinstance(exc, db.DatabaseUnavailable) and exc.__cause__ else exc
    log.warning("readiness check failed", extra={"dependency": dependency, "error": str(exc)})
    return {"status": "down", "error": type(cause).__name__}


def _check_database(pool: db.ConnectionPool | None) -> dict:
    """Up or down, and for a standby its replay lag."""
    if pool is None:
        return {"status": "not_configured"}

    def check(conn) -> tuple:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_is_in_recovery(),"
                " extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float"
            )
            return cur.fetchone()

    # pool.read, not pool.connection: a pooled connection whose server restarted is replaced
    # and the check run again, rather than reporting the node unready once per process.
    try:
        in_recovery, lag = pool.read(check)
    except (db.DatabaseUnavailable, *db.CONNECTION_ERRORS) as exc:
        return _down(pool.name, exc)
    result: dict = {"status": "ok", "in_recovery": in_recovery}
    if in_recovery:
        # Grows while the primary is idle too: it is the age of the last replayed commit.
        result["seconds_since_last_replay"] = lag
    return result


def _check_redis(client: redis.Redis | None) -> dict:
    if client is None:
        return {"status": "not_configured"}
    try:
        client.ping()
    except redis.RedisError as exc:
        return _down("redis", exc)
    return {"status": "ok"}


@ops.get("/readyz")
def readyz() -> Response:
    """Ready while the primary answers; a missing replica or Redis only degrades the service."""
    services = current_app.extensions["flaskfleet"]
    checks = {
        "primary": _check_database(services.db.primary),
        "replica": _check_database(services.db.replica),
        "redis": _check_redis(services.redis),
    }
    # This process's breakers: whether requests use the dependency right now. The check
    # above probes it regardless, so "ok" with an open breaker means it has come back and
    # the breaker will close at its next probe.
    if services.db.replica is not None and services.db.replica_breaker is not None:
        checks["replica"]["breaker"] = services.db.replica_breaker.snapshot()
    if services.redis is not None and services.cache.breaker is not None:
        checks["redis"]["breaker"] = services.cache.breaker.snapshot()
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
