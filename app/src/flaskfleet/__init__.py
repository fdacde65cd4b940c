"""flaskfleet: a small shop API on Flask, PostgreSQL (primary and replica) and Redis."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import redis
from celery import Celery
from flask import Flask, g
from flask_limiter import Limiter
from werkzeug.middleware.proxy_fix import ProxyFix

from flaskfleet import errors, logs, web
from flaskfleet._version import __version__
from flaskfleet.api import v1, v2
from flaskfleet.breakers import Breaker
from flaskfleet.cache import LIMITS_PREFIX, REDIS_OPTIONS, ProductCache
from flaskfleet.config import Settings, unknown_variables
from flaskfleet.db import CONNECTION_ERRORS, ConnectionPool, Database, DatabaseUnavailable
from flaskfleet.jobs import tasks_cli
from flaskfleet.migrations import db_cli
from flaskfleet.ops import ops
from flaskfleet.tasks import make_celery

__all__ = ["Services", "__version__", "build_services", "create_app"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    """What a request or a task needs: kept on app.extensions["flaskfleet"] and on a worker's
    Celery app (celery.services)."""

    settings: Settings
    db: Database
    cache: ProductCache
    redis: redis.Redis | None
    # Publishes tasks (the web app) or also runs them (a worker); None without a broker.
    celery: Celery | None


def build_services(settings: Settings, *, worker: bool = False) -> Services:
    """Pools and clients from the settings; nothing connects until first used."""
    replica_url = settings.database_replica_url
    database = Database(
        _pool("primary", settings.database_url.get_secret_value(), settings),
        _pool("replica", replica_url.get_secret_value(), settings) if replica_url else None,
        _breaker("replica", settings, (DatabaseUnavailable, *CONNECTION_ERRORS)),
    )
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    redis_client = redis.Redis.from_url(redis_url, **REDIS_OPTIONS) if redis_url else None
    celery = make_celery(settings, worker=worker) if worker or settings.broker_url else None
    services = Services(
        settings=settings,
        db=database,
        cache=ProductCache(
            redis_client,
            settings.cache_timeout,
            settings.cache_missing_timeout,
            _breaker("redis", settings, redis.RedisError),
        ),
        redis=redis_client,
        celery=celery,
    )
    if celery is not None:
        celery.services = services
    return services


def _breaker(name: str, settings: Settings, failures_are) -> Breaker:
    return Breaker(
        name,
        failures=settings.breaker_failures,
        reset_seconds=settings.breaker_reset_seconds,
        max_reset_seconds=settings.breaker_max_reset_seconds,
        expected_exception=failures_are,
    )


def _pool(name: str, dsn: str, settings: Settings) -> ConnectionPool:
    return ConnectionPool(
        name,
        dsn,
        minconn=settings.db_pool_min,
        maxconn=settings.db_pool_max,
        timeout=settings.db_pool_timeout,
        connect_timeout=settings.db_connect_timeout,
        statement_timeout=settings.db_statement_timeout,
    )


def _limiter(settings: Settings, redis_url: str | None) -> Limiter:
    """Requests per authenticated client, all routes together.

    Anonymous requests are not counted here (nginx limits them per address in front), which
    also spares anonymous reads the limiter's Redis round trip.
    """
    limiter = Limiter(
        lambda: g.client.name,
        application_limits=[settings.ratelimit_per_client],
        storage_uri=redis_url or "memory://",
        storage_options={**REDIS_OPTIONS, "key_prefix": LIMITS_PREFIX} if redis_url else {},
        headers_enabled=True,
        # Redis down: count in process memory instead, and never fail a request over it.
        in_memory_fallback_enabled=True,
        swallow_errors=True,
    )
    limiter.request_filter(lambda: g.get("client") is None)
    limiter.exempt(ops)
    return limiter


def create_app(config: Mapping[str, str] | None = None) -> Flask:
    """Build the app from FLASKFLEET_* environment variables, overridden by `config` if given.

    `config` uses the same names as the environment (e.g. {"FLASKFLEET_DATABASE_URL": ...}).
    Raises config.ConfigError, naming the variable, when a value is unusable.
    """
    environ = {**os.environ, **(config or {})}
    settings = Settings.from_env(environ)
    logs.configure()
    for name in unknown_variables(environ):
        log.warning("ignoring unknown configuration variable", extra={"variable": name})
    if settings.read_your_writes_seconds and not settings.read_your_writes_window:
        log.warning("FLASKFLEET_SECRET_KEY is unset: read-your-writes is off")
    if settings.broker_url is None:
        log.warning("FLASKFLEET_BROKER_URL is unset: tasks wait in the outbox for a worker's relay")

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key.get_secret_value() or None,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
    )
    if settings.proxy_count:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.proxy_count, x_proto=settings.proxy_count
        )

    app.extensions["flaskfleet"] = build_services(settings)

    # Hook order matters: web's hooks authenticate the client the limiter then counts.
    web.register(app)
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    _limiter(settings, redis_url).init_app(app)
    errors.register(app)
    app.register_blueprint(ops)
    app.register_blueprint(v1)
    app.register_blueprint(v2)
    app.cli.add_command(db_cli)
    app.cli.add_command(tasks_cli)
    return app
