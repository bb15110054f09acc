"""The Dramatiq broker named by SLUICE_BROKER_URL: redis:// or memory:// (Dramatiq's StubBroker)."""

from __future__ import annotations

from dramatiq import Broker
from dramatiq.brokers.stub import StubBroker

from sluice.core.settings import Settings
from sluice.infra.state import MemoryState, RedisState, StateBackend


def make_broker(settings: Settings) -> Broker:
    """A broker with Dramatiq's default middleware (retries with backoff, time limits, age limits)."""
    url = settings.broker_url
    if settings.broker_is_memory:
        broker: Broker = StubBroker()
        broker.emit_after("process_boot")
        return broker
    if url.startswith(("redis://", "rediss://", "unix://")):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(  # type: ignore[no-untyped-call]
            url=url, namespace=f"{settings.namespace}-dramatiq",
            heartbeat_timeout=settings.broker_heartbeat_timeout_ms,
            maintenance_chance=settings.broker_maintenance_chance,
        )
    raise ValueError(f"{url!r}: SLUICE_BROKER_URL must start with redis:// or memory://")


def make_state(settings: Settings) -> StateBackend:
    """Idempotency and locks that every worker of this deployment shares."""
    if settings.broker_is_memory:
        return MemoryState()
    return RedisState(settings.broker_url, settings.namespace)
