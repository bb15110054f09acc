"""OpenTelemetry export of a drop's spans: optional (`pip install 'sluice[otel]'`), never a hard dependency.

The runtime records each stage attempt as a span document in the bucket (core/tracing.py, `traces/<trace id>/`)
and hands it to its `on_event` hook as ("span", doc). `OtelSpans` turns that document into an OpenTelemetry span
with the drop's trace id, the attempt's own start and end times, and as its parent the span id the stage's
Dramatiq message carried in `traceparent` (W3C propagation: the message names its sender, the attempt is a child).

`from_env` builds one only when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set and the SDK imports;
opentelemetry is imported nowhere else, so the core install and `sluice --help` never load it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sluice.core.settings import ENV_OTEL_ENDPOINT, ENV_OTEL_SERVICE_NAME, ENV_OTEL_TRACES_ENDPOINT

log = logging.getLogger("sluice")

ERROR_OUTCOMES = ("failed", "refused")  # an attempt that did not do its job (quarantine is a verdict on the data)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ns(text: str) -> int:
    """Nanoseconds since the epoch of an ISO time, exactly (a float timestamp loses the last digits)."""
    return (datetime.fromisoformat(text.replace("Z", "+00:00")) - _EPOCH) // timedelta(microseconds=1) * 1000


class OtelSpans:
    """An `on_event` hook that exports the runtime's span documents through an OpenTelemetry tracer provider."""

    def __init__(self, provider: Any):
        self.provider = provider
        self.tracer = provider.get_tracer("sluice")

    def __call__(self, kind: str, detail: dict[str, Any]) -> None:
        """Export span documents; ignore every other runtime event."""
        if kind == "span":
            self.export(detail)

    def export(self, doc: dict[str, Any]) -> None:
        """One span document as one ended OpenTelemetry span."""
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

        parent = SpanContext(trace_id=int(doc["trace_id"], 16), span_id=int(doc["span_id"], 16), is_remote=True,
                             trace_flags=TraceFlags(TraceFlags.SAMPLED))
        attributes = {"sluice.stage": doc["stage"], "sluice.key": doc["key"], "sluice.outcome": doc["outcome"],
                      "sluice.attempt": doc["attempt"], "sluice.trace_id": doc["trace_id"]}
        if doc.get("message_id"):
            attributes["messaging.message.id"] = doc["message_id"]
        if doc.get("worker"):
            attributes["sluice.worker"] = doc["worker"]
        span = self.tracer.start_span(f"sluice.{doc['stage']}", context=trace.set_span_in_context(
            NonRecordingSpan(parent)), kind=SpanKind.CONSUMER, attributes=attributes,
            start_time=_ns(doc["started_at"]))
        if doc["outcome"] in ERROR_OUTCOMES:
            span.set_status(Status(StatusCode.ERROR, str(doc.get("error") or doc.get("message") or doc["outcome"])))
        span.end(end_time=_ns(doc["ended_at"]))

    def shutdown(self) -> None:
        """Flush what is still batched and stop exporting."""
        self.provider.shutdown()


def from_env(environ: Mapping[str, str] | None = None) -> OtelSpans | None:
    """The OTLP exporter when an endpoint is configured and the SDK is installed; None (and one line why) else."""
    env = os.environ if environ is None else environ
    if not (env.get(ENV_OTEL_ENDPOINT) or env.get(ENV_OTEL_TRACES_ENDPOINT)):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("%s is set but OpenTelemetry is not installed (%s): `pip install 'sluice[otel]'`; spans are "
                    "recorded in the bucket only (`sluice trace`)", ENV_OTEL_ENDPOINT, exc)
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": env.get(ENV_OTEL_SERVICE_NAME)
                                                        or "sluice-worker"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("exporting stage spans to %s (OpenTelemetry)", env.get(ENV_OTEL_TRACES_ENDPOINT)
             or env.get(ENV_OTEL_ENDPOINT))
    return OtelSpans(provider)
