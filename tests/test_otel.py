"""Optional OpenTelemetry export: each stage attempt becomes a span of the drop's trace; nothing needs the SDK."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from sluice.core import tracing
from sluice.events.s3 import ObjectCreated
from tests.chain import DATASET, sample_bytes


def test_each_stage_attempt_is_exported_as_a_span_of_the_drops_trace(runtime: Any) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

    from sluice.infra.otel import OtelSpans
    from sluice.service import _both

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runtime.on_event = _both(OtelSpans(provider), runtime.on_event)

    key = f"incoming/{DATASET}/cancer.csv"
    runtime.store.put(key, sample_bytes())
    info = runtime.store.head(key)
    drop = ObjectCreated(runtime.settings.bucket, key, info.size, info.etag, info.version_id)
    runtime.execute("validate", drop.to_dict())
    [manifest] = [k for k in runtime.store.keys("validated/") if k.endswith("/manifest.json")]
    woken = runtime.store.head(manifest)
    runtime.execute("features", ObjectCreated(runtime.settings.bucket, manifest, woken.size, woken.etag).to_dict())
    bad = f"incoming/{DATASET}/bad.csv"
    runtime.store.put(bad, b"mean_radius;diagnosis\n1;benign\n")
    info = runtime.store.head(bad)
    runtime.execute("validate", ObjectCreated(runtime.settings.bucket, bad, info.size, info.etag).to_dict())

    tid = tracing.trace_id_of(drop.idempotency_key)
    docs = {(d["stage"], d["key"]): d for d in (runtime.store.get_json(k) for k in runtime.store.keys("traces/"))}
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["sluice.validate", "sluice.features", "sluice.validate"]
    for span, stage, woke in zip(spans[:2], ("validate", "features"), (key, manifest), strict=True):
        doc = docs[(stage, woke)]
        # The drop's trace id; the parent is the span id the stage's message carries in `traceparent`.
        assert f"{span.context.trace_id:032x}" == tid and span.parent is not None
        assert f"{span.parent.span_id:016x}" == tracing.span_id(tid, stage, woke) == doc["span_id"]
        assert span.kind == SpanKind.CONSUMER and span.attributes["sluice.outcome"] == "done"
        assert span.attributes["sluice.key"] == woke
        # The same start and end as the span document in the bucket (`sluice trace`), to the millisecond.
        assert span.start_time // 1_000_000 == tracing_ms(doc["started_at"])
        assert span.end_time // 1_000_000 == tracing_ms(doc["ended_at"])
    quarantined = spans[2]
    assert quarantined.attributes["sluice.outcome"] == "quarantined"
    assert f"{quarantined.context.trace_id:032x}" != tid and quarantined.status.status_code == StatusCode.UNSET


def tracing_ms(text: str) -> int:
    from datetime import datetime

    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def test_without_an_endpoint_or_without_the_sdk_nothing_is_exported_and_nothing_is_required() -> None:
    from sluice.infra.otel import from_env

    assert from_env({}) is None
    if _has_sdk():
        exporter = from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
        assert exporter is not None
        exporter.shutdown()
    # A process where OpenTelemetry cannot be imported: the worker's composition and the CLI load, the endpoint is
    # ignored with one line saying how to install it, and nothing imported opentelemetry.
    code = ("import sys; sys.modules['opentelemetry'] = None\n"
            "import sluice.cli, sluice.service\n"
            "from sluice.infra.otel import from_env\n"
            "assert from_env({'OTEL_EXPORTER_OTLP_ENDPOINT': 'http://127.0.0.1:4318'}) is None\n"
            "assert not [m for m in sys.modules if m.startswith('opentelemetry') and sys.modules[m] is not None]\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "pip install 'sluice[otel]'" in out.stderr


def _has_sdk() -> bool:
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        return False
    return True
