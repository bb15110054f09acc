"""Fixtures: moto (in-process and server), real Redis, LocalStack on the host.

Service fixtures skip when the service is absent, and fail instead when CI is set.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sluice.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
IN_CI = bool(os.environ.get("CI"))
REDIS_URL = os.environ.get("SLUICE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def missing(what: str) -> None:
    """Skip on a laptop without the service; fail under CI, where it must be there."""
    if IN_CI:
        pytest.fail(f"{what} (CI is set, so this fails instead of skipping)")
    pytest.skip(what)


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Never reach real AWS from tests, whatever the developer's shell holds.
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's ThreadedMotoServer on a free loopback port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def unique_settings(endpoint: str | None, **overrides: object) -> Settings:
    """Settings with a bucket, queues and topic of the test's own."""
    tag = uuid.uuid4().hex[:8]
    return replace(
        Settings(), bucket=f"sluice-test-{tag}", events_queue=f"sluice-events-{tag}", topic=f"sluice-models-{tag}",
        namespace=f"sluice-test-{tag}", endpoint_url=endpoint, broker_url="memory://", min_backoff_ms=50,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
def runtime() -> Iterator[Any]:
    """A runtime on moto in-process (`mock_aws`), provisioned, with the sample contract: no broker, no threads."""
    from dramatiq.brokers.stub import StubBroker
    from moto import mock_aws

    from sluice.handlers import build_pipeline
    from sluice.infra.online import MemoryOnline
    from sluice.infra.state import MemoryState
    from sluice.service import build_runtime
    from tests.chain import prepare

    with mock_aws():
        s = replace(Settings(), bucket="sluice-unit", broker_url="memory://")
        prepare(s)
        yield build_runtime(s, build_pipeline(), broker=StubBroker(), state=MemoryState(),
                            online=MemoryOnline())


@pytest.fixture
def moto_settings(moto_endpoint: str) -> Settings:
    """Settings against the moto server, with an in-memory broker."""
    return unique_settings(moto_endpoint)


@pytest.fixture
def redis_url() -> str:
    """The real Redis for integration tests (its own db, keys under a per-test namespace)."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.exceptions.RedisError as exc:
        missing(f"no Redis at {REDIS_URL}: {exc}")
    return REDIS_URL


@pytest.fixture(scope="session")
def localstack_endpoint() -> Iterator[str]:
    """LocalStack on the host, started from its own virtualenv (localstack/localstack_host.py)."""
    sys.path.insert(0, str(ROOT / "localstack"))
    try:
        import localstack_host
    finally:
        sys.path.pop(0)
    try:
        localstack_host.ensure_venv()
        # The default state dir (localstack/.state) keeps LocalStack's service catalog: later starts take ~1.5 s.
        handle = localstack_host.start(port=int(os.environ.get("SLUICE_TEST_LOCALSTACK_PORT", "4566")))
    except Exception as exc:
        missing(f"LocalStack could not be started: {exc}")
    with handle:
        yield handle.endpoint
