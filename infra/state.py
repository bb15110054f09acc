"""Idempotency records and locks: Redis for real deployments, an in-process twin for the demo and unit tests.

Idempotency follows aws-powertools, with one change: an in-progress record is a *lease*. It names its owner
(a token unique to one execution), lives `ttl_s` seconds and is renewed by the owner's heartbeat while the stage
runs, so the claim of a worker killed with `kill -9` lapses within one TTL and a redelivery runs the stage.
Renewing, completing and releasing are compare-and-set on the owner (a Lua script, like redis-py's Lock), so an
execution that lost its lease can never complete or delete someone else's.

    (none) --claim--> in_progress(owner, renewed) --complete--> completed(result, short TTL)
                            |  lapses when the owner dies            (a duplicate checks its outputs)
                            +--release--> (none)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sluice.core.memory import MemoryState
from sluice.core.ports import COMPLETED, IN_PROGRESS, IdempotencyRecord, StateBackend
from sluice.core.ports import state_doc as _doc

__all__ = ["COMPLETED", "IN_PROGRESS", "IdempotencyRecord", "MemoryState", "RedisState", "StateBackend"]


# KEYS[1] the record; ARGV[1] the owner. The owner is compared inside Redis, so check-and-act is atomic.
_OWNED = """
local raw = redis.call('get', KEYS[1])
if not raw then return 0 end
local doc = cjson.decode(raw)
if doc['status'] ~= 'in_progress' or doc['owner'] ~= ARGV[1] then return 0 end
"""
_RENEW = _OWNED + "redis.call('pexpire', KEYS[1], ARGV[2]) return 1"
_COMPLETE = _OWNED + "redis.call('set', KEYS[1], ARGV[3], 'PX', ARGV[2]) return 1"
_RELEASE = _OWNED + "redis.call('del', KEYS[1]) return 1"
_FORGET = """
local raw = redis.call('get', KEYS[1])
if raw and cjson.decode(raw)['status'] == 'completed' then redis.call('del', KEYS[1]) return 1 end
return 0
"""


class RedisState:
    """Idempotency leases and locks on Redis (SET NX PX with an owner, checked and changed by Lua)."""

    def __init__(self, url: str, namespace: str):
        import redis

        self.redis = redis.Redis.from_url(url)
        self.prefix = f"{namespace}:"
        self._renew = self.redis.register_script(_RENEW)
        self._complete = self.redis.register_script(_COMPLETE)
        self._release = self.redis.register_script(_RELEASE)
        self._forget = self.redis.register_script(_FORGET)

    def _key(self, key: str) -> str:
        return self.prefix + "idem:" + key

    def claim(self, key: str, owner: str, ttl_s: float) -> IdempotencyRecord | None:
        """SET NX PX; on a collision, the record that is there."""
        k = self._key(key)
        for _ in range(3):
            if self.redis.set(k, _doc(IN_PROGRESS, owner), nx=True, px=_ms(ttl_s)):
                return None
            found = self.record(key)
            if found is not None:
                return found
        raise RuntimeError(f"claim {key!r}: the record kept vanishing between SET and GET")

    def renew(self, key: str, owner: str, ttl_s: float) -> bool:
        """Compare-and-expire."""
        return bool(self._renew(keys=[self._key(key)], args=[owner, _ms(ttl_s)]))

    def complete(self, key: str, owner: str, result: Any, ttl_s: float) -> bool:
        """Compare-and-set."""
        return bool(self._complete(keys=[self._key(key)], args=[owner, _ms(ttl_s), _doc(COMPLETED, owner, result)]))

    def release(self, key: str, owner: str) -> bool:
        """Compare-and-delete."""
        return bool(self._release(keys=[self._key(key)], args=[owner]))

    def record(self, key: str) -> IdempotencyRecord | None:
        """GET with the time it has left."""
        pipe = self.redis.pipeline()
        pipe.get(self._key(key))
        pipe.pttl(self._key(key))
        raw, ttl = pipe.execute()
        return None if raw is None else IdempotencyRecord.parse(raw, ttl if ttl and ttl > 0 else None)

    def forget(self, key: str) -> None:
        """Delete a completed record (never a lease)."""
        self._forget(keys=[self._key(key)])

    def began(self, key: str, ttl_s: float) -> int:
        """INCR and PEXPIRE, in one round trip."""
        pipe = self.redis.pipeline()
        pipe.incr(self.prefix + "began:" + key)
        pipe.pexpire(self.prefix + "began:" + key, _ms(ttl_s))
        return int(pipe.execute()[0])

    def ended(self, key: str) -> None:
        """DEL."""
        self.redis.delete(self.prefix + "began:" + key)

    def note(self, key: str, value: str, ttl_s: float) -> None:
        """SET PX."""
        self.redis.set(self.prefix + "note:" + key, value, px=_ms(ttl_s))

    def take_note(self, key: str) -> str | None:
        """GET and DEL in one transaction (one round trip)."""
        pipe = self.redis.pipeline()
        pipe.get(self.prefix + "note:" + key)
        pipe.delete(self.prefix + "note:" + key)
        raw = pipe.execute()[0]
        return None if raw is None else bytes(raw).decode()

    def lock(self, name: str, timeout_s: int) -> AbstractContextManager[None]:
        """redis-py's Lock; `timeout` bounds how long a dead holder blocks others."""
        lock = self.redis.lock(self.prefix + "lock:" + name, timeout=timeout_s, blocking_timeout=timeout_s)
        return _redis_lock(lock)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


@contextmanager
def _redis_lock(lock: Any) -> Iterator[None]:
    from sluice.core.errors import TransientError

    if not lock.acquire():
        raise TransientError(f"could not take lock {lock.name!r}; another worker holds it")
    try:
        yield
    finally:
        lock.release()
