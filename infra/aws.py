"""boto3 clients built from Settings. `AWS_ENDPOINT_URL` points them at moto or LocalStack; unset means AWS."""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config
from botocore.utils import determine_content_length

from sluice.core.settings import Settings

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)
# botocore sends every PUT with `Expect: 100-continue`, so the body waits a round trip for the server's go-ahead.
# That saves re-sending a large upload the server refuses; a small document costs less to send than to wait for
# (one round trip of a registration's four, every PUT of a signed document). Larger bodies keep it.
CONTINUE_ABOVE_BYTES = 1 << 20
# One client serves every thread of the process that made it (a worker's stages share its S3 client). urllib3 keeps
# `max_pool_connections` connections per host and closes each one past that when it is handed back, logging
# "Connection pool is full, discarding connection": botocore's default of 10 is fewer than a worker has in flight.
# Each of its `worker_threads` stages issues requests from its own thread, training's side threads (4) and its
# uploads (8, handlers/train.py); the registry's threads (8, ml/registry.py) are shared by the process.
STAGE_REQUEST_THREADS = 1 + 4 + 8
PROCESS_REQUEST_THREADS = 8


def max_pool_connections(settings: Settings) -> int:
    """Connections a client keeps open: one for each thread that may use it at once (never below botocore's 10)."""
    return max(10, settings.worker_threads * STAGE_REQUEST_THREADS + PROCESS_REQUEST_THREADS)


def _continue_only_when_large(params: dict[str, Any], **_: Any) -> None:
    """Drop `Expect: 100-continue` from a request whose body is small (registered after botocore adds it)."""
    headers = params.get("headers") or {}
    if "Expect" not in headers:
        return
    size = determine_content_length(params.get("body"))
    if size is not None and size <= CONTINUE_ABOVE_BYTES:
        del headers["Expect"]


def client(service: str, settings: Settings) -> Any:
    """A boto3 client for `service` ("s3", "sqs", "sns")."""
    config = _CONFIG.merge(Config(max_pool_connections=max_pool_connections(settings)))
    kwargs: dict[str, Any] = {"region_name": settings.region, "config": config}
    if settings.endpoint_url:
        kwargs["endpoint_url"] = settings.endpoint_url
        # Emulators accept any credentials; spare the user from inventing some.
        if not os.environ.get("AWS_ACCESS_KEY_ID") and not os.environ.get("AWS_PROFILE"):
            kwargs.update(aws_access_key_id="test", aws_secret_access_key="test")
    made = boto3.client(service, **kwargs)  # type: ignore[call-overload]
    if service == "s3":
        made.meta.events.register_last("before-call.s3", _continue_only_when_large)
    return made
