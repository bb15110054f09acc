"""What a handler is given: settings, the object store, shared state and a clock. Never the broker."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sluice.core.app import Extensions
from sluice.core.memory import MemoryOnline
from sluice.core.ports import ObjectStore, OnlineStore, StateBackend
from sluice.core.settings import Settings


def utcnow() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


@dataclass
class Context:
    """Per-invocation handles. Handlers are stateless: everything durable goes through `store`."""

    settings: Settings
    store: ObjectStore
    state: StateBackend
    online: OnlineStore = field(default_factory=MemoryOnline)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("sluice"))
    now: Callable[[], datetime] = utcnow
    # The app's checks, feature functions and learners: what the contract may name beyond the built-ins.
    extensions: Extensions = field(default_factory=Extensions)

    @property
    def source(self) -> str:
        """The CloudEvents source of everything this deployment emits."""
        return f"sluice://{self.settings.bucket}"

    def timestamp(self) -> str:
        """The current time as ISO 8601, UTC."""
        return self.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")
