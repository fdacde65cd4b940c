"""Product cache in Redis, stored as JSON and bypassed (never fatal) when Redis is down.

Keys: ff:cache:product:<id> for one product; ff:cache:product-list:<generation>:<page spec>
for list pages. A write deletes the product entries it touched and bumps the list generation,
because a created, deleted or re-stocked product can move or change every list page and its
total. Orphaned list pages expire with the cache timeout.

A product that does not exist is cached too, as JSON null, for a shorter time (the seeds'
negative caching): a client asking again and again for a missing id must not reach the
database each time. Creating the product deletes that entry like any other write.

Reads of the cache pass a circuit breaker (flaskfleet.breakers): with Redis dropping packets
they stop paying its timeout after a few failures. Invalidations do not: a skipped one would
leave a stale entry behind, so they always try.

Values are JSON, never pickle: whoever can write to Redis must not be able to run code in the
app. A value that does not parse counts as a miss, and the read that follows overwrites it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from flaskfleet import metrics
from flaskfleet.breakers import Breaker, BreakerOpen

log = logging.getLogger(__name__)

# Every key the app writes starts with ff: (the Redis ACL user may touch nothing else).
KEY_PREFIX = "ff:"
CACHE_PREFIX = KEY_PREFIX + "cache:"
LIMITS_PREFIX = KEY_PREFIX + "limits"
LIST_GENERATION_KEY = CACHE_PREFIX + "product-list-generation"
# Short timeouts: a cache that answers slowly is worse than no cache.
REDIS_OPTIONS = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}


def product_key(product_id: int) -> str:
    return f"{CACHE_PREFIX}product:{product_id}"


class ProductCache:
    def __init__(
        self,
        client: redis.Redis | None,
        timeout: int,
        missing_timeout: int,
        breaker: Breaker | None = None,
    ) -> None:
        self._redis = client
        self._timeout = timeout
        self._missing_timeout = missing_timeout
        self._breaker = breaker

    @property
    def breaker(self) -> Breaker | None:
        return self._breaker

    def _unreachable(self, exc: Exception) -> None:
        if isinstance(exc, BreakerOpen):
            metrics.CACHE_REQUESTS.labels("skipped").inc()
            return
        metrics.CACHE_REQUESTS.labels("error").inc()
        log.warning("cache unreachable, bypassing it", extra={"error": str(exc)})

    def _call(self, command, *args, **kwargs):
        if self._breaker is None:
            return command(*args, **kwargs)
        return self._breaker.call(command, *args, **kwargs)

    def get(self, key: str) -> tuple[bool, Any]:
        """(found, value); a Redis failure or a value that is not JSON counts as a miss.

        A found value of None is a cached "does not exist".
        """
        if self._redis is None:
            return False, None
        try:
            raw = self._call(self._redis.get, key)
        except (redis.RedisError, BreakerOpen) as exc:
            self._unreachable(exc)
            return False, None
        if raw is None:
            metrics.CACHE_REQUESTS.labels("miss").inc()
            return False, None
        try:
            value = json.loads(raw)
        except ValueError:
            metrics.CACHE_REQUESTS.labels("miss").inc()
            log.warning("ignoring a cache entry that is not JSON", extra={"key": key})
            return False, None
        metrics.CACHE_REQUESTS.labels("hit").inc()
        return True, value

    def set(self, key: str, value: Any) -> None:
        """Store a value; None (the thing does not exist) for the shorter missing timeout."""
        if self._redis is None:
            return
        timeout = self._missing_timeout if value is None else self._timeout
        try:
            self._call(self._redis.set, key, json.dumps(value, separators=(",", ":")), ex=timeout)
        except (redis.RedisError, BreakerOpen) as exc:
            self._unreachable(exc)

    def list_key(self, spec: str) -> str | None:
        """Key for a list page, or None when the generation cannot be read (skip the cache)."""
        if self._redis is None:
            return None
        try:
            generation = int(self._call(self._redis.get, LIST_GENERATION_KEY) or 0)
        except (redis.RedisError, BreakerOpen) as exc:
            self._unreachable(exc)
            return None
        except ValueError:
            log.warning("list generation is not an integer", extra={"key": LIST_GENERATION_KEY})
            return None
        return f"{CACHE_PREFIX}product-list:{generation}:{spec}"

    def invalidate_products(self, product_ids: list[int]) -> None:
        if self._redis is None:
            return
        # One round trip; no MULTI needed, since each command is atomic on its own.
        pipeline = self._redis.pipeline(transaction=False)
        pipeline.delete(*(product_key(product_id) for product_id in product_ids))
        pipeline.incr(LIST_GENERATION_KEY)
        try:
            pipeline.execute()
        except redis.RedisError as exc:
            # Not a look-up: logged, not counted in flaskfleet_cache_requests_total.
            log.warning("cache invalidation failed", extra={"error": str(exc)})
