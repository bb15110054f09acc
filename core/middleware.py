"""Dramatiq middleware for Sluice's cross-cutting concerns."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from dramatiq import Broker, Middleware
from dramatiq.broker import MessageProxy

from sluice.core import tracing

log = logging.getLogger("sluice.deadletter")

# A message option counting control-flow retries (a deferral, or a duplicate waiting for a live holder):
# they are not failures, so they do not count against `max_retries`.
DEFERRALS = "sluice_deferrals"


class InFlight(Middleware):
    """Which message this worker thread is processing, for the runtime (lease owner, time limit, deferrals).

    It is not cleared after processing, so Retries' `retry_when`, which runs after the actor returns, still
    sees it; the next message replaces it.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        """Remember the message for this thread."""
        self._local.message = message

    def current(self) -> MessageProxy | None:
        """The message this thread is processing (or last processed); None outside a worker."""
        return getattr(self._local, "message", None)


def attempts(message: MessageProxy) -> tuple[int, int]:
    """(failed attempts, deferrals) of a message so far, as counted by Retries and the runtime."""
    deferrals = int(message.options.get(DEFERRALS, 0))
    return int(message.options.get("retries", 0)) - deferrals, deferrals


class DeadLetters(Middleware):
    """Records every message that exhausted its retries, wherever the broker keeps its own dead letters.

    Redis keeps them in `<namespace>:<queue>.XQ` for a week, the stub broker in memory; a record in the
    bucket (`deadletter/`) is what `sluice status` and `sluice deadletter` show and what outlives both.
    """

    def __init__(self, record: Callable[[dict[str, Any]], None]):
        self.record = record

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        """Write the dead-letter record; never let a failure here take the worker down."""
        failed, deferrals = attempts(message)
        try:
            limit = message.options.get("max_retries", broker.get_actor(message.actor_name).options["max_retries"])
        except Exception:  # an actor this worker does not declare
            limit = None
        doc = {
            "message_id": message.message_id,
            "actor": message.actor_name,
            "queue": message.queue_name,
            "args": list(message.args),
            # Retries counts the attempt that failed last too: N failed attempts are the first run and N-1 retries.
            "attempts": failed,
            "retries": max(0, failed - 1),
            "max_retries": limit,
            "deferrals": deferrals,
            "traceback": message.options.get("traceback", ""),
        }
        trace_id = tracing.parse_traceparent(message.options.get(tracing.TRACEPARENT))
        if trace_id is not None:  # the drop it belongs to (absent in records written before correlation ids)
            doc["trace_id"] = trace_id
        last = (doc["traceback"] or "").strip().splitlines()[-1:] or ["no traceback"]
        log.error("dead-lettered %s %s after %d attempts (%d retries, limit %s): %s", message.actor_name,
                  message.message_id, failed, doc["retries"], limit, last[0])
        try:
            self.record(doc)
        except Exception:  # the broker still holds the message; log and move on
            log.exception("could not record dead letter %s", message.message_id)
