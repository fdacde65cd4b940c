"""Product cache in Redis through Flask-Caching, bypassed (never fatal) when Redis is down.

Keys: product:<id> for one product; product-list:<generation>:<page spec> for list pages.
A write deletes the product:<id> entries it touched and bumps the list generation, because a
created, deleted or re-stocked product can move or change every list page and its total.
Orphaned list pages expire with the cache timeout.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask
from flask_caching import Cache

from flaskfleet import metrics

log = logging.getLogger(__name__)

LIST_GENERATION_KEY = "product-list-generation"
# Short timeouts: a cache that answers slowly is worse than no cache.
REDIS_OPTIONS = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}


class ProductCache:
    def __init__(self, app: Flask, redis_url: str | None, timeout: int) -> None:
        self.enabled = redis_url is not None
        self._cache = Cache()
        if self.enabled:
            self._cache.init_app(
                app,
                config={
                    "CACHE_TYPE": "RedisCache",
                    "CACHE_REDIS_URL": redis_url,
                    "CACHE_OPTIONS": dict(REDIS_OPTIONS),
                    "CACHE_KEY_PREFIX": "flaskfleet:",
                    "CACHE_DEFAULT_TIMEOUT": timeout,
                },
            )

    def _unreachable(self, exc: Exception) -> None:
        metrics.CACHE_REQUESTS.labels("error").inc()
        log.warning("cache unreachable, bypassing it", extra={"error": str(exc)})

    def get(self, key: str) -> tuple[bool, Any]:
        """(found, value); a Redis failure counts as a miss."""
        if not self.enabled:
            return False, None
        try:
            value = self._cache.get(key)
        except redis.RedisError as exc:
            self._unreachable(exc)
            return False, None
        metrics.CACHE_REQUESTS.labels("miss" if value is None else "hit").inc()
        return value is not None, value

    def set(self, key: str, value: Any) -> None:
        if not self.enabled:
            return
        try:
            self._cache.set(key, value)
        except redis.RedisError as exc:
            self._unreachable(exc)

    def list_key(self, spec: str) -> str | None:
        """Key for a list page, or None when the generation cannot be read (skip the cache)."""
        if not self.enabled:
            return None
        try:
            generation = self._cache.get(LIST_GENERATION_KEY) or 0
        except redis.RedisError as exc:
            self._unreachable(exc)
            return None
        return f"product-list:{generation}:{spec}"

    def invalidate_products(self, product_ids: list[int]) -> None:
        if not self.enabled:
            return
        try:
            self._cache.delete_many(*(f"product:{product_id}" for product_id in product_ids))
            self._cache.cache.inc(LIST_GENERATION_KEY)
        except redis.RedisError as exc:
            self._unreachable(exc)
