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


def test_a_worker_with_an_otlp_endpoint_exports_its_stage_spans_over_http(
        moto_settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sluice worker` as it starts with OTEL_EXPORTER_OTLP_ENDPOINT set: the stage spans of a drop reach an OTLP/HTTP
    receiver (a local HTTP server standing in for the collector, decoding what it gets with OpenTelemetry's own
    protobuf types)."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the otel extra is not installed")
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from sluice import App
    from sluice.service import start
    from tests.chain import wait_for

    received: list[Any] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            received.append((self.path, request))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "sluice-test-worker")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")

    app = App("otel")

    @app.on_object_created(prefix="incoming/")
    def look(event: ObjectCreated, ctx: Any) -> None:
        ctx.log.info("looked at %s", event.key)

    from sluice.infra.provision import provision

    provision(moto_settings, app.routes)
    svc = start(moto_settings, app=app, bridge_wait_s=1)
    try:
        assert svc.otel is not None
        svc.runtime.store.put("incoming/shop/orders.csv", b"when,amount\n2026-01-02,3\n")
        info = svc.runtime.store.head("incoming/shop/orders.csv")
        assert info is not None
        tid = tracing.trace_id_of(ObjectCreated(moto_settings.bucket, "incoming/shop/orders.csv",
                                                etag=info.etag).idempotency_key)
        wait_for(lambda: list(svc.runtime.store.keys(f"traces/{tid}/")), 60, "the stage's span in the bucket")
    finally:
        svc.stop()  # flushes the batch
        server.shutdown()
    spans = [(path, rs.resource, span) for path, request in received for rs in request.resource_spans
             for ss in rs.scope_spans for span in ss.spans]
    [(path, resource, span)] = spans
    assert path == "/v1/traces" and span.name == "sluice.look" and span.trace_id.hex() == tid
    assert span.parent_span_id.hex() == tracing.span_id(tid, "look", "incoming/shop/orders.csv")
    attributes = {a.key: a.value.string_value for a in span.attributes}
    assert attributes["sluice.outcome"] == "done" and attributes["sluice.key"] == "incoming/shop/orders.csv"
    assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "sluice-test-worker"
