"""The whole chain, asynchronously: bucket notifications -> SQS -> bridge -> Dramatiq -> handlers -> SNS.

Runs on moto's server with Dramatiq's StubBroker, on moto's server with the real Redis broker, and on
LocalStack with the real Redis broker.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from sluice.core.app import Pipeline
from sluice.core.errors import TransientError
from sluice.core.settings import Settings
from sluice.handlers import build_pipeline
from sluice.infra.aws import client
from sluice.infra.subscribe import TemporarySubscription
from sluice.service import Service, build_runtime, start
from tests.chain import DATASET, ledger, prepare, sample_bytes, versions, wait_for
from tests.conftest import unique_settings

CHAIN_TIMEOUT_S = 90


@pytest.fixture(params=["moto+stub", pytest.param("moto+redis", marks=pytest.mark.redis),
                        pytest.param("localstack+redis", marks=pytest.mark.localstack)])
def settings(request: pytest.FixtureRequest) -> Iterator[Settings]:
    """One deployment's settings per backend combination."""
    emulator, broker = request.param.split("+")
    endpoint = request.getfixturevalue("moto_endpoint" if emulator == "moto" else "localstack_endpoint")
    s = unique_settings(endpoint)
    if broker == "redis":
        s = replace(s, broker_url=request.getfixturevalue("redis_url"))
    yield s
    if broker == "redis":
        _flush_namespace(s)


def _flush_namespace(s: Settings) -> None:
    import redis

    r = redis.Redis.from_url(s.broker_url)
    for key in r.scan_iter(f"{s.namespace}*"):
        r.delete(key)


class Events:
    """Collects runtime events so a test can wait for a specific one."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, kind: str, detail: dict[str, Any]) -> None:
        with self.lock:
            self.seen.append((kind, detail))

    def count(self, kind: str, key: str | None = None) -> int:
        with self.lock:
            return sum(1 for k, d in self.seen if k == kind and (key is None or d.get("key") == key))


@pytest.fixture
def service(settings: Settings) -> Iterator[tuple[Service, Events]]:
    events = Events()
    prepare(settings)
    svc = start(settings, runtime=build_runtime(settings, build_pipeline(), on_event=events), bridge_wait_s=1)
    yield svc, events
    svc.stop()


def _notification(settings: Settings, key: str) -> str:
    """An S3 notification body for an existing object, as S3 would send it again."""
    from sluice.infra.store import S3Store

    info = S3Store(settings).head(key)
    assert info is not None
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": settings.bucket},
               "object": {"key": key.replace("/", "%2F"), "size": info.size, "eTag": info.etag,
                          "versionId": info.version_id, "sequencer": "0"}}}]})


def test_a_drop_becomes_a_promoted_model_once(settings: Settings, service: tuple[Service, Events]) -> None:
    svc, events = service
    store = svc.runtime.store
    key = f"incoming/{DATASET}/cancer.csv"
    with TemporarySubscription(settings) as subscriber:
        store.put(key, sample_bytes())
        received = wait_for(lambda: subscriber.receive(wait_s=1), CHAIN_TIMEOUT_S, "the promotion event")
    [event] = received
    assert event["type"] == "sluice.model.promoted"
    data = event["data"]
    assert (data["model"], data["version"]) == (DATASET, 1)
    assert data["lineage"]["sources"][0]["key"] == key
    assert data["metric"]["candidate"] > data["metric"]["baseline"]

    # S3 delivers the same notification again: the bridge hands it over, the runtime recognises it.
    sqs = client("sqs", settings)
    url = sqs.get_queue_url(QueueName=settings.events_queue)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=_notification(settings, key))
    wait_for(lambda: events.count("duplicate", key), 30, "the duplicate to be recognised")
    # Identical bytes under a new name: same data version, no retraining.
    store.put(f"incoming/{DATASET}/cancer-copy.csv", sample_bytes())
    wait_for(lambda: ledger(store, f"incoming/{DATASET}/cancer-copy.csv"), 30, "the copy to be validated")
    assert ledger(store, f"incoming/{DATASET}/cancer-copy.csv")["outcome"] == "duplicate"  # type: ignore[index]
    assert len(versions(store)) == 1
    assert len([k for k in store.keys(f"runs/{DATASET}/") if k.endswith("run.json")]) == 1
    assert len([k for k in store.keys(f"validated/{DATASET}/") if k.endswith("manifest.json")]) == 1


def test_bad_input_is_quarantined_and_poison_is_dead_lettered(settings: Settings,
                                                               service: tuple[Service, Events]) -> None:
    svc, events = service
    store = svc.runtime.store
    bad = f"incoming/{DATASET}/bad.csv"
    store.put(bad, b"mean_radius;diagnosis\n1;benign\n")
    entry = wait_for(lambda: ledger(store, bad), 30, "the bad file's outcome")
    assert entry["outcome"] == "quarantined" and "separated by ';'" in entry["message"]
    assert events.count("start", bad) == 1  # validation failures are never retried

    sqs = client("sqs", settings)
    url = sqs.get_queue_url(QueueName=settings.events_queue)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="this is not an S3 notification")
    record = wait_for(lambda: list(store.keys("deadletter/bridge/")), 30, "the poison message's record")
    assert "not JSON" in store.get_json(record[0])["traceback"]
    assert not list(store.keys("validated/"))


def test_transient_faults_are_retried_and_exhausted_ones_dead_lettered(settings: Settings) -> None:
    """A stage defined inline: it fails twice, then succeeds; another always fails."""
    from dramatiq import Worker

    from sluice.events.s3 import ObjectCreated

    prepare(settings)
    settings = replace(settings, max_retries=2)
    attempts: dict[str, int] = {"flaky": 0, "broken": 0}
    pipeline = Pipeline()

    @pipeline.on_object_created("flaky", prefix="flaky/")
    def flaky(event: ObjectCreated, ctx: Any) -> list[Any]:
        attempts["flaky"] += 1
        if attempts["flaky"] < 3:
            raise TransientError("the network blinked")
        ctx.store.put("out/flaky-done", b"ok")
        return []

    @pipeline.on_object_created("broken", prefix="broken/")
    def broken(event: ObjectCreated, ctx: Any) -> list[Any]:
        attempts["broken"] += 1
        raise TransientError("still down")

    runtime = build_runtime(settings, pipeline)
    worker = Worker(runtime.broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        runtime.dispatch(ObjectCreated(settings.bucket, "flaky/x", etag="1"))
        runtime.dispatch(ObjectCreated(settings.bucket, "broken/x", etag="1"))
        wait_for(lambda: runtime.store.exists("out/flaky-done"), 30, "the flaky stage to succeed")
        [dead] = wait_for(lambda: list(runtime.store.keys("deadletter/")), 30, "the dead letter")
    finally:
        worker.stop()
        runtime.broker.close()
    record = runtime.store.get_json(dead)
    assert attempts == {"flaky": 3, "broken": 3}
    # Three attempts: the first run and max_retries=2 retries (the record once said "after 3 retries").
    assert record["actor"].endswith(".broken") and (record["attempts"], record["retries"]) == (3, 2)
    assert record["max_retries"] == 2
    assert "still down" in record["traceback"]


def test_the_worker_polls_redis_at_the_configured_interval(moto_settings: Settings, redis_url: str) -> None:
    """SLUICE_POLL_INTERVAL_MS reaches the Dramatiq worker and each of its consumers (the latency/idle-CPU knob)."""
    assert Settings.from_env({"SLUICE_POLL_INTERVAL_MS": "7"}).poll_interval_ms == 7
    assert Settings.from_env({}).poll_interval_ms == Settings().poll_interval_ms == 50
    settings = replace(moto_settings, broker_url=redis_url, poll_interval_ms=7)
    prepare(settings)
    svc = start(settings, app=build_pipeline(), bridge_wait_s=1)
    try:
        assert svc.worker.worker_timeout == 7
        assert svc.worker.consumers and {c.worker_timeout for c in svc.worker.consumers.values()} == {7}
    finally:
        svc.stop()
