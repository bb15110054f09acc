"""Idempotency records and locks: Redis for real deployments, an in-process twin for the demo and unit tests.

Idempotency follows aws-powertools: the key is `handler#event key`, claimed with `SET NX EX`; a record is
in progress (expires with the handler's time limit, so a crashed worker does not block forever) or completed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

IN_PROGRESS = "in_progress"
COMPLETED = "completed"


@dataclass(frozen=True)
class IdempotencyRecord:
    """What an earlier delivery of the same event left behind."""

    status: str
    result: Any = None


class StateBackend(Protocol):
    """Idempotency records and named locks."""

    def claim(self, key: str, ttl_s: int) -> IdempotencyRecord | None:
        """Claim `key` as in progress; None when claimed, else the record another delivery holds."""

    def complete(self, key: str, result: Any, ttl_s: int) -> None:
        """Mark `key` completed with a JSON-safe result."""

    def release(self, key: str) -> None:
        """Forget an in-progress claim so that a retry can run."""

    def lock(self, name: str, timeout_s: int) -> AbstractContextManager[None]:
        """A mutual-exclusion lock shared by every worker of the deployment."""


class RedisState:
    """Idempotency and locks on Redis (redis-py's Lock: SET NX PX with a token, released by Lua)."""

    def __init__(self, url: str, namespace: str):
        import redis

        self.redis = redis.Redis.from_url(url)
        self.prefix = f"{namespace}:"

    def claim(self, key: str, ttl_s: int) -> IdempotencyRecord | None:
        """Claim with SET NX EX."""
        k = self.prefix + "idem:" + key
        if self.redis.set(k, json.dumps({"status": IN_PROGRESS}), nx=True, ex=ttl_s):
            return None
        raw = self.redis.get(k)
        if raw is None:  # expired between SET and GET: claim again
            return self.claim(key, ttl_s)
        doc = json.loads(raw)
        return IdempotencyRecord(doc["status"], doc.get("result"))

    def complete(self, key: str, result: Any, ttl_s: int) -> None:
        """Store the completed record."""
        doc = json.dumps({"status": COMPLETED, "result": result}, default=str)
        self.redis.set(self.prefix + "idem:" + key, doc, ex=ttl_s)

    def release(self, key: str) -> None:
        """Delete the claim."""
        self.redis.delete(self.prefix + "idem:" + key)

    def lock(self, name: str, timeout_s: int) -> AbstractContextManager[None]:
        """redis-py's Lock; `timeout` bounds how long a dead holder blocks others."""
        lock = self.redis.lock(self.prefix + "lock:" + name, timeout=timeout_s, blocking_timeout=timeout_s)
        return _redis_lock(lock)


@contextmanager
def _redis_lock(lock: Any) -> Iterator[None]:
    from sluice.core.errors import TransientError

    if not lock.acquire():
        raise TransientError(f"could not take lock {lock.name!r}; another worker holds it")
    try:
        yield
    finally:
        lock.release()


class MemoryState:
    """The in-process twin of RedisState, for a single-process worker (demo, unit tests)."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[float, dict[str, Any]]] = {}
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def claim(self, key: str, ttl_s: int) -> IdempotencyRecord | None:
        """Claim unless a live record exists."""
        with self._guard:
            now = time.monotonic()
            found = self._records.get(key)
            if found and found[0] > now:
                return IdempotencyRecord(found[1]["status"], found[1].get("result"))
            self._records[key] = (now + ttl_s, {"status": IN_PROGRESS})
            return None

    def complete(self, key: str, result: Any, ttl_s: int) -> None:
        """Store the completed record."""
        with self._guard:
            self._records[key] = (time.monotonic() + ttl_s, {"status": COMPLETED, "result": result})

    def release(self, key: str) -> None:
        """Drop the claim."""
        with self._guard:
            self._records.pop(key, None)

    @contextmanager
    def lock(self, name: str, timeout_s: int) -> Iterator[None]:
        """A process-local lock per name."""
        from sluice.core.errors import TransientError

        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        if not lock.acquire(timeout=timeout_s):
            raise TransientError(f"could not take lock {name!r} within {timeout_s}s")
        try:
            yield
        finally:
            lock.release()
