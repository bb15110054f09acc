"""Dramatiq middleware for Sluice's cross-cutting concerns."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dramatiq import Broker, Middleware
from dramatiq.broker import MessageProxy

log = logging.getLogger("sluice.deadletter")


class DeadLetters(Middleware):
    """Records every message that exhausted its retries, wherever the broker keeps its own dead letters.

    Redis keeps them in `<namespace>:<queue>.XQ` for a week, the stub broker in memory; a record in the
    bucket (`deadletter/`) is what `sluice status` shows and what outlives both.
    """

    def __init__(self, record: Callable[[dict[str, Any]], None]):
        self.record = record

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        """Write the dead-letter record; never let a failure here take the worker down."""
        doc = {
            "message_id": message.message_id,
            "actor": message.actor_name,
            "queue": message.queue_name,
            "args": list(message.args),
            "retries": message.options.get("retries", 0),
            "traceback": message.options.get("traceback", ""),
        }
        try:
            self.record(doc)
        except Exception:  # the broker still holds the message; log and move on
            log.exception("could not record dead letter %s", message.message_id)
        log.error("dead-lettered %s %s after %s retries", message.actor_name, message.message_id, doc["retries"])
