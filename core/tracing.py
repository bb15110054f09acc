"""Correlation: one trace id per dropped object, W3C `traceparent`-compatible, carried by messages and log records.

The trace id of a drop is derived from the drop's identity (bucket, key and ETag: `ObjectCreated.idempotency_key`),
so every delivery, retry and re-drive of the same drop carries the same id without anything stored first; its first
16 hex digits are the drop's ledger id (`core/runtime.object_id`). A stage's Dramatiq message carries it as the
`traceparent` option (`00-<trace id>-<span id>-01`), which Dramatiq keeps across retries and redeliveries.

Each attempt of a stage on a drop's trace is recorded in the bucket as a span, `traces/<trace id>/<span>.json`
(`span_record`): when it started and ended, how it ended (done, quarantined, refused, deferred, failed, duplicate
delivery) and what it wrote. `sluice trace` reads them beside the stages' own documents; with OpenTelemetry
configured, the worker exports the same spans (infra/otel.py).

Log records get `trace_id`, `stage`, `dataset` and `key` from the stage being run (a context variable, so each
worker thread has its own); `JsonFormatter` writes one JSON object per line, `TextFormatter` readable lines.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sluice.core.errors import printable

TRACEPARENT = "traceparent"  # the Dramatiq message option (and the CloudEvents distributed-tracing attribute)
FIELDS = ("trace_id", "stage", "dataset", "key")
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_current: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("sluice_trace", default=None)


def trace_id_of(idempotency_key: str) -> str:
    """The trace id of one drop: 32 hex digits, stable across redeliveries (its first 16 are the ledger id)."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def span_id(trace_id: str, stage: str, key: str) -> str:
    """A stage's span id within a trace: 16 hex digits, the same for every attempt of that stage on that key."""
    return hashlib.sha256(f"{trace_id}|{stage}|{key}".encode()).hexdigest()[:16]


def traceparent(trace_id: str, span: str) -> str:
    """A W3C Trace Context `traceparent` value (version 00, sampled)."""
    return f"00-{trace_id}-{span}-01"


def parse_traceparent(value: object) -> str | None:
    """The trace id of a `traceparent` value, or None when it is not one (all-zero ids are invalid)."""
    match = _TRACEPARENT.match(value) if isinstance(value, str) else None
    if match is None or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return None
    return match.group(1)


# How a stage attempt ended (a span's `outcome`).
DONE, QUARANTINED, REFUSED, DEFERRED, FAILED, DUPLICATE_DELIVERY = (
    "done", "quarantined", "refused", "deferred", "failed", "duplicate-delivery")
# Written when an attempt begins and replaced by its end: one that stays was still running, or its worker died
# (kill -9, a lost machine) with no chance to record anything.
STARTED = "started"


def now() -> str:
    """The current time, ISO 8601 UTC with milliseconds (the format of every timestamp Sluice writes)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def span_name(started_at: str, stage: str, attempt: str) -> str:
    """A span's file name: its start time first (compact, so a listing sorts by it), then the stage and attempt."""
    compact = started_at.replace("-", "").replace(":", "")
    return f"{compact}-{stage}-{attempt}"


def span_record(trace_id: str, stage: str, key: str, *, started_at: str, ended_at: str | None, outcome: str,
                attempt: str, **detail: object) -> dict[str, object]:
    """One attempt of one stage on one object, in a drop's trace: the document under `traces/<trace id>/`
    (`ended_at` None: the attempt has begun, `STARTED`)."""
    started = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    ended = None if ended_at is None else datetime.fromisoformat(ended_at.replace("Z", "+00:00"))
    return {"trace_id": trace_id, "span_id": span_id(trace_id, stage, key), "stage": stage, "key": key,
            "started_at": started_at, "ended_at": ended_at,
            "duration_s": None if ended is None else round((ended - started).total_seconds(), 3),
            "outcome": outcome, "attempt": attempt, **{k: v for k, v in detail.items() if v not in (None, [], {})}}


def current() -> dict[str, str]:
    """The correlation fields of the stage this thread is running (empty outside one)."""
    return dict(_current.get() or {})


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Log records made inside carry these fields (trace_id, stage, dataset, key)."""
    token = _current.set({k: v for k, v in fields.items() if v})
    try:
        yield
    finally:
        _current.reset(token)


class ContextFilter(logging.Filter):
    """Puts the current correlation fields on every record (empty strings outside a stage)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate; never drops a record."""
        fields = _current.get() or {}
        for name in FIELDS:
            if not hasattr(record, name):
                setattr(record, name, fields.get(name, ""))
        return True


class TextFormatter(logging.Formatter):
    """`HH:MM:SS message  [trace 0123456789abcdef]`: the readable default; the short id is the ledger id."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        """The line, with the trace's short id when the record belongs to one."""
        line = printable(super().format(record))  # keys and values in messages are producers' text
        trace = getattr(record, "trace_id", "")
        return f"{line}  [trace {trace[:16]}]" if trace else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the correlation fields, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, "")
            if value:
                doc[name] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


LOG_FORMATS = ("text", "json")


def configure(fmt: str = "text", level: int = logging.INFO) -> None:
    """Root logging for Sluice's processes: readable lines (`text`) or JSON lines (`json`), with correlation."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: use one of {', '.join(LOG_FORMATS)} (SLUICE_LOG_FORMAT, --log-format)")
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
