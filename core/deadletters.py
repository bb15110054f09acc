"""Dead letters, in both places they collect, and re-driving them into the chain.

    deadletter/<actor>/<message id>.json  a stage message that exhausted its retries (core/middleware.py), or a
                                          queue message the bridge could not parse (actor `bridge`)
    SQS <events queue>-dlq                bucket notifications the bridge could not hand over (e.g. Redis was
                                          down for longer than the queue's redrive policy)

A re-driven record moves to `redriven/<actor>/<message id>.json`, so it leaves the list but not the history.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sluice.core import keys
from sluice.core.ports import ObjectStore
from sluice.events.s3 import ObjectCreated

if TYPE_CHECKING:
    from sluice.core.runtime import Runtime

log = logging.getLogger("sluice")

PREFIX = keys.DEADLETTER
REDRIVEN = "redriven/"


def records(store: ObjectStore) -> list[dict[str, Any]]:
    """Every dead-letter record in the bucket, oldest first, each with its `key`."""
    out = [{**store.get_json(k), "key": k} for k in store.keys(PREFIX) if k.endswith(".json")]
    return sorted(out, key=lambda d: str(d.get("dead_lettered_at", "")))


def find(store: ObjectStore, message_id: str) -> dict[str, Any] | None:
    """The record of a message id (or a unique prefix of one)."""
    hits = [r for r in records(store) if str(r["message_id"]).startswith(message_id)]
    return hits[0] if len(hits) == 1 else None


@dataclass
class Redrive:
    """What a re-drive did."""

    records: list[str] = field(default_factory=list)  # message ids sent back to their stage
    skipped: list[str] = field(default_factory=list)  # records that cannot be re-driven (why, each)
    sqs: int = 0  # SQS dead letters moved back to the events queue

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe."""
        return {"records": self.records, "skipped": self.skipped, "sqs": self.sqs}


def redrive(runtime: Runtime, message_ids: list[str] | None = None, *,
            move_sqs: Callable[[], int] | None = None) -> Redrive:
    """Send dead-lettered stage messages back to their stage (all, or those named) and, with `sqs`, move the SQS
    dead letters back to the events queue, where the bridge picks them up (`move_sqs`: infra/queues.py's
    `move_dead_letters_back`, given by the caller)."""
    store, done = runtime.store, Redrive()
    chosen = records(store)
    if message_ids:
        chosen = [r for r in chosen if any(str(r["message_id"]).startswith(m) for m in message_ids)]
    for rec in chosen:
        stage = str(rec["actor"]).removeprefix(f"{runtime.settings.namespace}.")
        payload = (rec.get("args") or [None])[0]
        if isinstance(payload, dict) and stage not in runtime.actors:
            # A stage of the app this record's worker ran, not of the app loaded here (usually: no --app).
            done.skipped.append(f"{rec['message_id']}: stage {stage!r} is not a stage of the app loaded here "
                                f"(stages: {', '.join(sorted(runtime.actors))}); run the command from the project's "
                                "folder or with `--app module:app`, as the worker runs")
            continue
        if not isinstance(payload, dict):
            done.skipped.append(f"{rec['message_id']}: a {rec['actor']} message cannot be re-driven (not an "
                                "S3 event of a stage); delete it once inspected")
            continue
        runtime.send(stage, ObjectCreated.from_dict(payload))
        store.put_json(REDRIVEN + rec["key"].removeprefix(PREFIX),
                       {**{k: v for k, v in rec.items() if k != "key"},
                        "redriven_at": datetime.now(UTC).isoformat(timespec="milliseconds")})
        store.delete(rec["key"])
        done.records.append(str(rec["message_id"]))
        log.info("redriven %s %s -> %s", rec["actor"], rec["message_id"], payload.get("key"))
    if move_sqs is not None and not message_ids:
        done.sqs = move_sqs()
    return done


def describe(rec: dict[str, Any]) -> str:
    """One line: which stage, which object, how many attempts, the last error."""
    payload = (rec.get("args") or [None])[0]
    what = payload.get("key") if isinstance(payload, dict) else json.dumps(payload)[:60]
    last = (rec.get("traceback") or "").strip().splitlines()[-1:] or [""]
    trace = f"  trace {rec['trace_id'][:16]}" if rec.get("trace_id") else ""  # for `sluice trace`
    return (f"{rec['message_id']}  {rec['actor']}  {what}  after {rec.get('attempts', rec.get('retries'))} attempts"
            f"  {rec.get('dead_lettered_at', '')}: {last[0]}{trace}")
