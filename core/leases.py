"""The heartbeat that keeps a running stage's claim alive, and only while it may still be running.

A claim is a lease of `ttl_s` seconds. One daemon thread per runtime renews the leases of the stages running in
this process every `ttl_s / 3`, until each stage's deadline (its message time limit: past it, Dramatiq's
TimeLimit has interrupted the stage, or the thread is wedged and should not block a retry). A process killed
with `kill -9` stops renewing, so its claims lapse within `ttl_s` and a redelivered message runs the stage.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sluice.core.ports import StateBackend

log = logging.getLogger("sluice")

# This process, as a lease owner sees it: host and pid say where to look for a holder.
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Held:
    owner: str
    deadline: float  # monotonic
    warned: bool = False


class Heartbeat:
    """Renews the leases held by this process."""

    def __init__(self, state: StateBackend, ttl_s: float):
        self.state = state
        self.ttl_s = ttl_s
        self._held: dict[str, _Held] = {}
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failing = False

    @contextmanager
    def hold(self, key: str, owner: str, limit_s: float) -> Iterator[None]:
        """Keep `owner`'s lease on `key` alive for at most `limit_s` seconds, while the block runs."""
        with self._guard:
            self._held[key] = _Held(owner, time.monotonic() + limit_s)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sluice-lease-heartbeat", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._guard:
                self._held.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(max(0.05, self.ttl_s / 3))
            with self._guard:
                held = list(self._held.items())
            for key, h in held:
                self._renew(key, h)

    def _renew(self, key: str, h: _Held) -> None:
        if time.monotonic() > h.deadline:
            if not h.warned:
                h.warned = True
                log.warning("lease %s: past its time limit, no longer renewed; a redelivery may run it", key)
            return
        try:
            if not self.state.renew(key, h.owner, self.ttl_s):
                # Lost: Redis restarted empty, or the lease lapsed during a pause. Take it back if nobody has.
                other = self.state.claim(key, h.owner, self.ttl_s)
                if other is not None and other.owner != h.owner:
                    log.warning("lease %s: lost to %s while running; outputs are content-addressed, so both "
                                "runs converge", key, other.owner)
            if self._failing:
                self._failing = False
                log.info("lease heartbeat: state store reachable again")
        except Exception as exc:  # Redis down: keep trying; one line per outage
            if not self._failing:
                self._failing = True
                log.warning("lease heartbeat: cannot renew (%s); retrying every %.0fs", exc, self.ttl_s / 3)
