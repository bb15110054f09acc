"""boto3 clients built from Settings. `AWS_ENDPOINT_URL` points them at moto or LocalStack; unset means AWS."""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config

from sluice.core.settings import Settings

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


def client(service: str, settings: Settings) -> Any:
    """A boto3 client for `service` ("s3", "sqs", "sns")."""
    kwargs: dict[str, Any] = {"region_name": settings.region, "config": _CONFIG}
    if settings.endpoint_url:
        kwargs["endpoint_url"] = settings.endpoint_url
        # Emulators accept any credentials; spare the user from inventing some.
        if not os.environ.get("AWS_ACCESS_KEY_ID") and not os.environ.get("AWS_PROFILE"):
            kwargs.update(aws_access_key_id="test", aws_secret_access_key="test")
    return boto3.client(service, **kwargs)  # type: ignore[call-overload]
