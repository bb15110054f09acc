"""Correlation ids and structured logs: the JSON log format, the trace id of a drop, and a stage run's records."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from sluice.core import tracing
from sluice.core.runtime import object_id
from sluice.events.s3 import ObjectCreated


def test_trace_id_is_w3c_compatible_stable_and_starts_with_the_ledger_id() -> None:
    drop = ObjectCreated("sluice", "incoming/shop/orders.csv", etag="0a1b2c")
    other = ObjectCreated("sluice", "incoming/shop/orders.csv", etag="ffffff")
    tid = tracing.trace_id_of(drop.idempotency_key)
    assert tid == tracing.trace_id_of(ObjectCreated.from_dict(drop.to_dict()).idempotency_key)
    assert tid != tracing.trace_id_of(other.idempotency_key)
    assert tid.startswith(object_id(drop))
    header = tracing.traceparent(tid, tracing.span_id(tid, "validate", drop.key))
    assert tracing.parse_traceparent(header) == tid
    for bad in ("", "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "01-xyz", None, "00-" + tid + "-" + "0" * 16 + "-01"):
        assert tracing.parse_traceparent(bad) is None


def _record(logger: logging.Logger, message: str) -> logging.LogRecord:
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, message, (), None)
    tracing.ContextFilter().filter(record)
    return record


def test_json_log_lines_carry_the_correlation_fields_inside_a_stage_only() -> None:
    logger = logging.getLogger("sluice")
    fmt = tracing.JsonFormatter()
    tid = tracing.trace_id_of("sluice/incoming/shop/a.csv@e1")
    with tracing.bound(trace_id=tid, stage="validate", dataset="shop", key="incoming/shop/a.csv"):
        inside = json.loads(fmt.format(_record(logger, "wrote validate")))
    outside = json.loads(fmt.format(_record(logger, "worker started")))
    assert inside["trace_id"] == tid and inside["stage"] == "validate"
    assert inside["dataset"] == "shop" and inside["key"] == "incoming/shop/a.csv"
    assert inside["message"] == "wrote validate" and inside["level"] == "info" and inside["time"].endswith("Z")
    assert not {"trace_id", "stage", "dataset", "key"} & set(outside)
    text = tracing.TextFormatter()
    with tracing.bound(trace_id=tid, stage="validate"):
        assert text.format(_record(logger, "x")).endswith(f"x  [trace {tid[:16]}]")


def test_sluice_log_format_json_in_a_real_process() -> None:
    code = ("from sluice.cli import setup_logging; import logging; from sluice.core import tracing\n"
            "setup_logging()\n"
            "with tracing.bound(trace_id='ab'*16, stage='train', dataset='d', key='features/d/x/manifest.json'):\n"
            "    logging.getLogger('sluice').warning('coalescing %d drops', 2)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"SLUICE_LOG_FORMAT": "json", "PATH": "/usr/bin:/bin"})
    line = json.loads(out.stderr.strip().splitlines()[-1])
    assert line == {**line, "message": "coalescing 2 drops", "level": "warning", "trace_id": "ab" * 16,
                    "stage": "train", "dataset": "d", "key": "features/d/x/manifest.json"}
    bad = subprocess.run([sys.executable, "-m", "sluice.cli", "status"], capture_output=True, text=True,
                         env={"SLUICE_LOG_FORMAT": "yaml", "PATH": "/usr/bin:/bin"})
    assert bad.returncode != 0 and "log format 'yaml'" in bad.stderr


def test_a_stage_run_by_a_worker_logs_with_the_drops_trace_and_its_message_keeps_the_traceparent(
        caplog: object) -> None:
    import pytest
    from dramatiq import Worker

    from sluice import App
    from sluice.testing import local_runtime

    assert isinstance(caplog, pytest.LogCaptureFixture)
    app = App("t")
    seen: list[dict[str, str]] = []
    headers: list[object] = []

    @app.on_object_created(prefix="incoming/")
    def look(event: ObjectCreated, ctx: object) -> None:
        seen.append(tracing.current())
        processing = rt.inflight.current()
        headers.append(processing.options.get(tracing.TRACEPARENT) if processing is not None else None)
        logging.getLogger("sluice").info("looked at %s", event.key)

    with local_runtime(app) as rt:
        rt.store.put("incoming/shop/a.csv", b"x,y\n1,2\n")
        info = rt.store.head("incoming/shop/a.csv")
        assert info is not None
        drop = ObjectCreated(rt.settings.bucket, "incoming/shop/a.csv", info.size, info.etag, info.version_id)
        caplog.handler.addFilter(tracing.ContextFilter())
        worker = Worker(rt.broker, worker_threads=1)
        worker.start()
        try:
            with caplog.at_level(logging.INFO, logger="sluice"):
                rt.actors["look"].send(drop.to_dict())
                rt.broker.join(rt.queue_name)
                worker.join()
        finally:
            worker.stop()
    tid = tracing.trace_id_of(drop.idempotency_key)
    assert seen == [{"trace_id": tid, "stage": "look", "dataset": "shop", "key": "incoming/shop/a.csv"}]
    mine = [r for r in caplog.records if r.getMessage() == "looked at incoming/shop/a.csv"]
    assert [getattr(r, "trace_id", None) for r in mine] == [tid]
    # The option is set on the message being processed: a retry re-enqueues that message with its options.
    assert [tracing.parse_traceparent(h) for h in headers] == [tid]
