"""The scheduler of the worker tier: redbeat's, kept alive through an outage of the queue.

redbeat takes its lock once, when beat starts, and extends it on every tick; a tick that cannot
reach Redis raises and beat exits, and a beat restarted while Redis is still down runs without
the lock. Here a tick that cannot reach Redis waits for the next one; a beat that holds no lock
(lost while Redis was away, or never taken) tries to take it, without blocking, before each
tick, and only the holder sends periodic tasks, so several beats still act as one. A queue that
comes back without the schedule (rebuilt, or restored from an older file) gets the static
schedule again instead of leaving beat with nothing to send.
"""

from __future__ import annotations

import logging

import redis
from redbeat import RedBeatScheduler
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, get_redis
from redis.exceptions import LockError

log = logging.getLogger(__name__)


class Scheduler(RedBeatScheduler):
    def tick(self, **kwargs) -> float:
        try:
            if self.lock_key and not self._hold_lock():
                return self.max_interval
            if not get_redis(self.app).exists(self.app.redbeat_conf.schedule_key):
                log.warning("the queue has lost the schedule, installing it again")
                self.setup_schedule()
            return super().tick(**kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("queue unreachable, the scheduler waits", extra={"error": repr(exc)})
        except LockError as exc:
            # The lock expired between the check and its extension: take it again next tick.
            log.warning("scheduler lock lost", extra={"error": repr(exc)})
        return self.max_interval

    def _hold_lock(self) -> bool:
        if self.lock is None:
            client = get_redis(self.app)
            # Built as redbeat builds it, whose script extends the lock to a new timeout.
            self.lock = client.lock(
                self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval
            )
            self.lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        if self.lock.owned():
            return True
        if self.lock.acquire(blocking=False):
            log.info("scheduler lock acquired")
            return True
        return False
