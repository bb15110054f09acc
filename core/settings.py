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
ENV_ENDPOINT_URL = "AWS_ENDPOINT_URL"  # the standard boto3 variable; unset means real AWS
ENV_REGION = "AWS_DEFAULT_REGION"
# The key that signs every document a stage acts on (core/provenance.py). Workers (and operators running lifecycle
# commands) hold it; producers do not. In production, set it from Secrets Manager or SSM (see README).
ENV_SIGNING_KEY = "SLUICE_SIGNING_KEY"


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
            signing_key=env.get(ENV_SIGNING_KEY) or None,
        )
