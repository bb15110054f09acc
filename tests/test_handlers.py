"""Handlers and the runtime on moto in-process (`mock_aws`): no broker, no worker threads."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from sluice.core.runtime import Runtime
from sluice.events.s3 import ObjectCreated
from sluice.infra.state import MemoryState, RedisState, StateBackend
from sluice.infra.store import S3Store
from sluice.ml.registry import ModelRegistry
from sluice.ml.registry_index import steps
from tests.chain import DATASET, sample_bytes, sample_rows, versions


def drop(rt: Runtime, key: str, data: bytes) -> ObjectCreated:
    rt.store.put(key, data)
    info = rt.store.head(key)
    assert info is not None
    return ObjectCreated(rt.settings.bucket, key, info.size, info.etag, info.version_id)


def created(rt: Runtime, key: str) -> ObjectCreated:
    info = rt.store.head(key)
    assert info is not None
    return ObjectCreated(rt.settings.bucket, key, info.size, info.etag, info.version_id)


def only(store: S3Store, prefix: str, suffix: str) -> str:
    [key] = [k for k in store.keys(prefix) if k.endswith(suffix)]
    return key


def test_validate_writes_a_content_addressed_version_once(runtime: Runtime) -> None:
    import hashlib

    event = drop(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    runtime.execute("validate", event.to_dict())
    dv = hashlib.sha256(sample_bytes()).hexdigest()
    manifest = runtime.store.get_json(f"validated/{DATASET}/{dv}/manifest.json")
    assert manifest["rows"] == 569 and manifest["source"]["key"] == event.key
    assert manifest["source"]["version_id"] == event.version_id
    def outputs() -> list[str]:
        return sorted(k for k in runtime.store.keys("") if not k.startswith("traces/"))

    before = outputs()
    # The same delivery again: nothing changes; only the drop's trace records that it came again.
    runtime.execute("validate", event.to_dict())
    assert outputs() == before
    spans = [runtime.store.get_json(k) for k in runtime.store.keys("traces/")]
    assert [s["outcome"] for s in spans] == ["done", "duplicate-delivery"]
    # The same bytes under another name: the same data version, nothing downstream.
    again = drop(runtime, f"incoming/{DATASET}/b.csv", sample_bytes())
    runtime.execute("validate", again.to_dict())
    assert [k for k in runtime.store.keys("validated/") if k.endswith("manifest.json")] == [
        f"validated/{DATASET}/{dv}/manifest.json"]
    outcomes = sorted(runtime.store.get_json(k)["outcome"] for k in runtime.store.keys(f"ledger/{DATASET}/"))
    assert outcomes == ["duplicate", "validated"]


def test_a_drop_without_contract_is_quarantined_with_the_command_to_fix_it(runtime: Runtime) -> None:
    event = drop(runtime, "incoming/unknown/a.csv", b"a,b\n1,2\n")
    result = runtime.execute("validate", event.to_dict())
    assert result["outcome"] == "quarantined"
    report = runtime.store.get_json(result["report"])
    assert report["reason"] == "no-contract"
    assert "sluice contract infer" in report["what_to_do"] and "--dataset unknown" in report["what_to_do"]
    assert runtime.store.get(result["report"].replace("report.json", "a.csv")) == b"a,b\n1,2\n"
    assert not list(runtime.store.keys("validated/"))


def test_a_bad_file_is_quarantined_with_rows_and_never_raises(runtime: Runtime) -> None:
    data = sample_bytes().replace(b"\n17.99,", b"\nbanana,", 1)
    event = drop(runtime, f"incoming/{DATASET}/bad.csv", data)
    result = runtime.execute("validate", event.to_dict())
    report = runtime.store.get_json(result["report"])
    assert report["reason"] == "contract-violation"
    assert report["summary"][0] == {"column": "mean_radius", "check": "dtype float", "rows": 1, "example_row": 1,
                                    "example_value": "banana"}
    ledger = [runtime.store.get_json(k) for k in runtime.store.keys(f"ledger/{DATASET}/")]
    assert [e["outcome"] for e in ledger] == ["quarantined"]


@pytest.mark.slow
def test_the_chain_stage_by_stage_and_each_stage_twice(runtime: Runtime) -> None:
    event = drop(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    for stage, prefix, suffix in [("validate", None, None), ("features", "validated/", "manifest.json"),
                                  ("train", "features/", "manifest.json"), ("benchmark", "runs/", "run.json"),
                                  ("register", "registry/", ".candidate.json")]:
        if prefix:
            event = created(runtime, only(runtime.store, prefix, suffix))
        first = runtime.execute(stage, event.to_dict())
        snapshot = sorted(k for k in runtime.store.keys("") if not k.startswith("traces/"))
        spans = set(runtime.store.keys("traces/"))
        # A second delivery that bypasses the idempotency record still changes nothing in the bucket
        # but the drop's trace, which records the second run of the stage.
        runtime.state = MemoryState()
        runtime.execute(stage, event.to_dict())
        assert sorted(k for k in runtime.store.keys("") if not k.startswith("traces/")) == snapshot, stage
        [again] = set(runtime.store.keys("traces/")) - spans
        assert runtime.store.get_json(again)["stage"] == stage
        assert first["outcome"] == "done"
    [v1] = versions(runtime.store)
    assert v1["decision"] == "promote" and v1["version"] == 1
    registry = ModelRegistry(runtime.store, MemoryState())
    assert registry.alias(DATASET)["version"] == 1
    assert [s["action"] for h in registry.history(DATASET) for s in steps(h)] == ["registered", "challenger",
                                                                                  "promoted"]
    assert v1["lineage"]["sources"][0]["key"] == f"incoming/{DATASET}/a.csv"
    assert v1["scores"]["candidate"] > v1["scores"]["baseline"]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def lock_state(request: pytest.FixtureRequest) -> Iterator[StateBackend]:
    """The registry lock in-process, and on the real Redis (redis-py's Lock), as workers share it."""
    if request.param == "memory":
        yield MemoryState()
        return
    import uuid

    import redis

    url = request.getfixturevalue("redis_url")
    namespace = f"sluice-test-{uuid.uuid4().hex[:8]}"
    yield RedisState(url, namespace)
    r = redis.Redis.from_url(url)
    for key in r.scan_iter(f"{namespace}*"):
        r.delete(key)


def test_twenty_concurrent_registrations_get_twenty_distinct_numbers(runtime: Runtime,
                                                                      lock_state: StateBackend) -> None:
    # One registry per thread, like separate workers: nothing shared but the bucket and the lock backend.
    results: list[int] = []
    errors: list[BaseException] = []

    def register(i: int) -> None:
        try:
            registry = ModelRegistry(runtime.store, lock_state)
            reg = registry.register("m", {"run_id": f"run-{i}"}, outcome="promote" if i % 2 == 0 else "reject",
                                    compared_with=None, at=f"2026-01-01T00:00:{i:02d}Z")
            results.append(reg.version["version"])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == list(range(1, 21))
    registry = ModelRegistry(runtime.store, lock_state)
    assert sorted(v["run_id"] for v in registry.versions("m")) == sorted(f"run-{i}" for i in range(20))
    # The history is one gap-free sequence; every version was registered once and decided once.
    history = registry.history("m")
    assert [r["sequence"] for r in history] == list(range(1, len(history) + 1))
    taken = [s for r in history for s in steps(r)]
    assert sorted(s["version"] for s in taken if s["action"] == "registered") == list(range(1, 21))
    assert sorted(s["version"] for s in taken if s["cause"] == "gate" and s["action"] != "promoted") == list(
        range(1, 21))
    snap = registry.snapshot("m")
    assert list(snap.stages.values()).count("champion") == 1 and registry.alias("m")["version"] == snap.champion
    # Registering a run again returns its version and writes nothing.
    again = registry.register("m", {"run_id": "run-3"}, outcome="reject", compared_with=None,
                              at="2026-01-01T00:01:00Z")
    assert not again.created and len(registry.versions("m")) == 20 and again.version["run_id"] == "run-3"
    assert len(registry.history("m")) == len(history)


def test_the_drops_trace_id_is_in_the_validated_and_features_manifests(runtime: Runtime) -> None:
    from sluice.core import tracing

    event = drop(runtime, f"incoming/{DATASET}/traced.csv", sample_bytes())
    runtime.execute("validate", event.to_dict())
    validated = created(runtime, only(runtime.store, "validated/", "manifest.json"))
    runtime.execute("features", validated.to_dict())
    tid = tracing.trace_id_of(event.idempotency_key)
    assert runtime.store.get_json(validated.key)["trace_id"] == tid
    features = only(runtime.store, "features/", "manifest.json")
    assert runtime.store.get_json(features)["trace_id"] == tid
    runtime.execute("train", created(runtime, features).to_dict())
    run = only(runtime.store, "runs/", "run.json")
    assert (runtime.store.get_json(run)["trace_id"], runtime.store.get_json(run)["trace_links"]) == (tid, [tid])
    runtime.execute("benchmark", created(runtime, run).to_dict())
    candidate = only(runtime.store, "registry/", ".candidate.json")
    assert runtime.store.get_json(candidate)["trace_id"] == tid
    runtime.execute("register", created(runtime, candidate).to_dict())
    [v1] = versions(runtime.store)
    assert (v1["trace_id"], v1["trace_links"]) == (tid, [tid])
    [published] = [runtime.store.get_json(k) for k in runtime.store.keys("published/")]
    assert tracing.parse_traceparent(published["event"]["traceparent"]) == tid


def test_an_event_no_stage_of_the_worker_takes_stays_on_the_queue(runtime: Runtime,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A worker started before a stage was added (`sluice up --app` provisioned its notification) used to take the
    event off the queue and drop it without a word. It now stays there for a worker with the stage (and goes to the
    dead-letter queue after its receive limit); an event a stage takes is still handed over and deleted."""
    import boto3

    from sluice.core.runtime import SqsBridge

    sqs = boto3.client("sqs", region_name=runtime.settings.region)
    bridge = SqsBridge(runtime, sqs, wait_s=0)
    url = bridge.queue_url

    def notify(key: str) -> None:
        body = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {
            "bucket": {"name": runtime.settings.bucket}, "object": {"key": key, "size": 3, "eTag": "abc"}}}]}
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))

    notify("custom/cancer/a.txt")  # a prefix only a newer app's stage takes
    assert bridge.poll_once() == 0
    assert "no stage of this worker takes custom/cancer/a.txt" in caplog.text
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    assert attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"  # still there, in flight
    sqs.purge_queue(QueueUrl=url)
    notify(f"incoming/{DATASET}/a.csv")
    assert bridge.poll_once() == 1
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                                                          "ApproximateNumberOfMessagesNotVisible"])
    assert set(attributes["Attributes"].values()) == {"0"}


def test_redriving_a_dead_letter_of_a_stage_the_loaded_app_lacks_says_to_load_the_app(runtime: Runtime) -> None:
    """Run without `--app` (or outside the project's folder), `sluice deadletter redrive` said a custom stage's
    message "cannot be re-driven ... delete it": the one advice that loses it. It now names the stage and `--app`."""
    from sluice.core.deadletters import redrive

    runtime._record_dead_letter({"message_id": "m-custom", "actor": f"{runtime.settings.namespace}.tsv_to_csv",
                                 "queue": "default", "retries": 3, "traceback": "boom",
                                 "args": [{"bucket": runtime.settings.bucket, "key": "raw/cancer/a.tsv"}]})
    done = redrive(runtime, ["m-custom"])
    [why] = done.skipped
    assert "stage 'tsv_to_csv' is not a stage of the app loaded here" in why and "--app module:app" in why
    assert "delete it" not in why and not done.records


def test_too_few_rows_to_hold_out_says_when_identical_rows_are_the_cause(runtime: Runtime) -> None:
    """60 rows, every feature set to one row's values: the holdout keeps identical rows together (it hashes a row's
    contents), so nothing was held out, and the message asked for "at least 40" rows from a user who had 60."""
    data = sample_rows([(0, "benign")] * 47 + [(0, "malignant")] * 13)
    event = drop(runtime, f"incoming/{DATASET}/const2.csv", data)
    assert runtime.execute("validate", event.to_dict())["outcome"] == "done"
    runtime.execute("features", created(runtime, only(runtime.store, "validated/", "manifest.json")).to_dict())
    result = runtime.execute("train", created(runtime, only(runtime.store, "features/", "manifest.json")).to_dict())
    report = runtime.store.get_json(result["report"])
    assert "60 labelled rows but only 2 distinct (1 distinct row of features)" in report["message"]
    assert "the holdout keeps identical rows together" in report["message"]
    assert report["what_to_do"].startswith("Drop rows that differ (at least 40 distinct rows")
    assert report["distinct_rows"] == 2 and report["feature_set_version"].startswith("fs-")
