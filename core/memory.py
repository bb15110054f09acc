"""The in-process twins of the ports (core/ports.py), for a single-process worker (demo, unit tests) and
read-only views: the same rules as the Redis implementations in infra/."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sluice.core.ports import COMPLETED, IN_PROGRESS, IdempotencyRecord
from sluice.core.ports import state_doc as _doc


class MemoryState:
    """The in-process twin of RedisState, for a single-process worker (demo, unit tests): the same lease rules."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[float, str]] = {}  # key -> (monotonic expiry, stored JSON)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._began: dict[str, tuple[float, int]] = {}  # key -> (monotonic expiry, count)
        self._notes: dict[str, tuple[float, str]] = {}  # key -> (monotonic expiry, value)

    def _live(self, key: str) -> IdempotencyRecord | None:
        found = self._records.get(key)
        now = time.monotonic()
        if found is None or found[0] <= now:
            self._records.pop(key, None)
            return None
        return IdempotencyRecord.parse(found[1], int((found[0] - now) * 1000))

    def _owned(self, key: str, owner: str) -> bool:
        rec = self._live(key)
        return rec is not None and rec.status == IN_PROGRESS and rec.owner == owner

    def claim(self, key: str, owner: str, ttl_s: float) -> IdempotencyRecord | None:
        """Claim unless a live record exists."""
        with self._guard:
            found = self._live(key)
            if found is not None:
                return found
            self._records[key] = (time.monotonic() + ttl_s, _doc(IN_PROGRESS, owner))
            return None

    def renew(self, key: str, owner: str, ttl_s: float) -> bool:
        """Extend the lease if it is still `owner`'s."""
        with self._guard:
            if not self._owned(key, owner):
                return False
            self._records[key] = (time.monotonic() + ttl_s, self._records[key][1])
            return True

    def complete(self, key: str, owner: str, result: Any, ttl_s: float) -> bool:
        """Store the completed record if the lease is still `owner`'s."""
        with self._guard:
            if not self._owned(key, owner):
                return False
            self._records[key] = (time.monotonic() + ttl_s, _doc(COMPLETED, owner, result))
            return True

    def release(self, key: str, owner: str) -> bool:
        """Drop the lease if it is `owner`'s."""
        with self._guard:
            if not self._owned(key, owner):
                return False
            del self._records[key]
            return True

    def record(self, key: str) -> IdempotencyRecord | None:
        """The live record."""
        with self._guard:
            return self._live(key)

    def forget(self, key: str) -> None:
        """Drop a completed record."""
        with self._guard:
            rec = self._live(key)
            if rec is not None and rec.status == COMPLETED:
                del self._records[key]

    def began(self, key: str, ttl_s: float) -> int:
        """Count one more beginning (the count expires `ttl_s` after the last)."""
        with self._guard:
            expiry, count = self._began.get(key, (0.0, 0))
            count = count + 1 if expiry > time.monotonic() else 1
            self._began[key] = (time.monotonic() + ttl_s, count)
            return count

    def ended(self, key: str) -> None:
        """Forget the beginnings."""
        with self._guard:
            self._began.pop(key, None)

    def note(self, key: str, value: str, ttl_s: float) -> None:
        """Leave a note (it expires `ttl_s` from now)."""
        with self._guard:
            self._notes[key] = (time.monotonic() + ttl_s, value)

    def take_note(self, key: str) -> str | None:
        """The live note, removed."""
        with self._guard:
            found = self._notes.pop(key, None)
            return found[1] if found is not None and found[0] > time.monotonic() else None

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


class MemoryOnline:
    """The in-process twin, for the demo and unit tests."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.lock = threading.Lock()

    def put_many(self, dataset: str, feature_set: str, vectors: dict[str, dict[str, Any]], time_field: str) -> int:
        """Same rule as the Lua script."""
        written = 0
        with self.lock:
            for entity, vector in vectors.items():
                current = self.rows.get((dataset, entity))
                if current and current["event_time"] > str(vector[time_field]):
                    continue
                self.rows[(dataset, entity)] = {"entity": entity, "event_time": str(vector[time_field]),
                                                "feature_set": feature_set, "features": dict(vector)}
                written += 1
        return written

    def get(self, dataset: str, entity: str) -> dict[str, Any] | None:
        """The stored vector."""
        with self.lock:
            found = self.rows.get((dataset, entity))
            return dict(found) if found else None
