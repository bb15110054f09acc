"""One frozen settings object, built from the environment. Every variable name is a constant here."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

# Environment variable names: the only place they are spelled.
ENV_BUCKET = "SLUICE_BUCKET"
ENV_BROKER_URL = "SLUICE_BROKER_URL"
ENV_EVENTS_QUEUE = "SLUICE_EVENTS_QUEUE"
ENV_TOPIC = "SLUICE_TOPIC"
ENV_NAMESPACE = "SLUICE_NAMESPACE"
ENV_MAX_RETRIES = "SLUICE_MAX_RETRIES"
ENV_MIN_BACKOFF_MS = "SLUICE_MIN_BACKOFF_MS"
ENV_WORKER_THREADS = "SLUICE_WORKER_THREADS"
ENV_LEASE_TTL_S = "SLUICE_LEASE_TTL_S"
ENV_RECONCILE_INTERVAL_S = "SLUICE_RECONCILE_INTERVAL_S"
ENV_BROKER_HEARTBEAT_TIMEOUT_MS = "SLUICE_BROKER_HEARTBEAT_TIMEOUT_MS"
ENV_BROKER_MAINTENANCE_CHANCE = "SLUICE_BROKER_MAINTENANCE_CHANCE"
ENV_FAULT_DELAY = "SLUICE_FAULT_DELAY"  # fault injection only: "stage=seconds,..."
ENV_POLL_INTERVAL_MS = "SLUICE_POLL_INTERVAL_MS"
ENV_TRACE_RETENTION_DAYS = "SLUICE_TRACE_RETENTION_DAYS"
# Which app a worker runs (`module:attribute`); `--app` wins over it, and it over `[tool.sluice] app` in pyproject.toml.
ENV_APP = "SLUICE_APP"
ENV_ENDPOINT_URL = "AWS_ENDPOINT_URL"  # the standard boto3 variable; unset means real AWS
ENV_REGION = "AWS_DEFAULT_REGION"
# The key that signs every document a stage acts on (core/provenance.py). Workers (and operators running lifecycle
# commands) hold it; producers do not. In production, set it from Secrets Manager or SSM (see README).
ENV_SIGNING_KEY = "SLUICE_SIGNING_KEY"
# OpenTelemetry's own variables (read by its SDK too): with an endpoint set and `sluice[otel]` installed, workers
# export each stage attempt as a span of the drop's trace (infra/otel.py).
ENV_OTEL_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
ENV_OTEL_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
ENV_OTEL_SERVICE_NAME = "OTEL_SERVICE_NAME"


@dataclass(frozen=True)
class Settings:
    """Where Sluice keeps its state and how it reaches its services."""

    bucket: str = "sluice"
    broker_url: str = "redis://127.0.0.1:6379/0"
    events_queue: str = "sluice-bucket-events"
    topic: str = "sluice-model-events"
    # Prefix for Redis keys and Dramatiq queue names, so several deployments (or tests) share one Redis.
    namespace: str = "sluice"
    endpoint_url: str | None = None
    region: str = "us-east-1"
    max_retries: int = 5
    min_backoff_ms: int = 1000
    worker_threads: int = 2
    # A running stage's claim lives this long unless its worker's heartbeat renews it: a killed worker's
    # claims lapse within it.
    lease_ttl_s: float = 30.0
    # How often each worker re-drives objects whose next step is missing (`sluice reconcile`); 0 turns it off.
    reconcile_interval_s: float = 60.0
    # Dramatiq's Redis broker: a worker silent this long is dead and its unacknowledged messages are
    # redelivered, checked on about `maintenance_chance` of every million broker commands.
    broker_heartbeat_timeout_ms: int = 60_000
    broker_maintenance_chance: int = 1000
    # Fault injection: "stage=seconds,..." holds each named stage that long after its claim, before its handler,
    # so a test can kill the worker in the middle of any stage. Empty in every real deployment.
    fault_delay: str = ""

    def fault_delay_s(self, stage: str) -> float:
        """The injected pause of `stage` (0 when none)."""
        for item in filter(None, self.fault_delay.split(",")):
            name, _, seconds = item.partition("=")
            if name.strip() == stage:
                return float(seconds)
        return 0.0
    # How long an idle worker sleeps between polls of its Redis queues (Dramatiq's `worker_timeout`): the most a
    # drop waits for a worker that has nothing to do, against the CPU that worker burns doing nothing. Measured
    # by benchmarks/latency.py (drop -> first handler p50; idle CPU of one worker process, % of a core; shared
    # 2-core machine at load 9): 100 ms 129 ms, 2.0 %; 50 ms 62 ms, 3.4 %; 20 ms 71 ms, 9.3 %; 10 ms 66 ms, 12.7 %.
    # Below 50 ms the latency did not improve there and the idle cost tripled; set 10 for the lowest latency.
    poll_interval_ms: int = 50
    # Spans under traces/ (one small object per stage attempt) expire after this many days, by a bucket lifecycle
    # rule `sluice up` keeps; 0 keeps them forever. `sluice trace` of an older drop then shows what the ledger,
    # runs and registry still say.
    trace_retention_days: int = 90
    # Hex or text, at least 32 bytes. None: a key that lives only in this process (demo, in-process tests).
    signing_key: str | None = field(default=None, repr=False)

    @property
    def dead_letter_queue(self) -> str:
        """The SQS queue that receives bucket notifications the bridge could not hand over."""
        return f"{self.events_queue}-dlq"

    @property
    def broker_is_memory(self) -> bool:
        """True when the broker is Dramatiq's in-process StubBroker (demo and fast tests)."""
        return self.broker_url.startswith("memory:")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from the environment, falling back to the defaults above."""
        env = os.environ if environ is None else environ
        base = cls()
        return replace(
            base,
            bucket=env.get(ENV_BUCKET, base.bucket),
            broker_url=env.get(ENV_BROKER_URL, base.broker_url),
            events_queue=env.get(ENV_EVENTS_QUEUE, base.events_queue),
            topic=env.get(ENV_TOPIC, base.topic),
            namespace=env.get(ENV_NAMESPACE, base.namespace),
            endpoint_url=env.get(ENV_ENDPOINT_URL) or None,
            region=env.get(ENV_REGION, base.region),
            max_retries=int(env.get(ENV_MAX_RETRIES, base.max_retries)),
            min_backoff_ms=int(env.get(ENV_MIN_BACKOFF_MS, base.min_backoff_ms)),
            worker_threads=int(env.get(ENV_WORKER_THREADS, base.worker_threads)),
            lease_ttl_s=float(env.get(ENV_LEASE_TTL_S, base.lease_ttl_s)),
            reconcile_interval_s=float(env.get(ENV_RECONCILE_INTERVAL_S, base.reconcile_interval_s)),
            broker_heartbeat_timeout_ms=int(env.get(ENV_BROKER_HEARTBEAT_TIMEOUT_MS,
                                                    base.broker_heartbeat_timeout_ms)),
            broker_maintenance_chance=int(env.get(ENV_BROKER_MAINTENANCE_CHANCE, base.broker_maintenance_chance)),
            fault_delay=env.get(ENV_FAULT_DELAY, base.fault_delay),
            poll_interval_ms=int(env.get(ENV_POLL_INTERVAL_MS, base.poll_interval_ms)),
            trace_retention_days=int(env.get(ENV_TRACE_RETENTION_DAYS, base.trace_retention_days)),
            signing_key=env.get(ENV_SIGNING_KEY) or None,
        )
