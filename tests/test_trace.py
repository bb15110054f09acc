"""`sluice trace KEY|ID`: the path of a promoted, a quarantined and a duplicate drop, read from the bucket alone."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from click.testing import CliRunner

from sluice.cli import main
from sluice.core import tracing
from sluice.events.s3 import ObjectCreated
from tests.chain import DATASET, ledger, run_chain, sample_bytes

CHAIN = ["validate", "features", "train", "benchmark", "register", "event"]


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def _drop(rt: Any, key: str, data: bytes) -> ObjectCreated:
    rt.store.put(key, data)
    info = rt.store.head(key)
    assert info is not None
    event = ObjectCreated(rt.settings.bucket, key, info.size, info.etag, info.version_id)
    rt.execute("validate", event.to_dict())
    return event


def _bad_bytes() -> bytes:
    """The sample with one row whose diagnosis is no known class: a contract violation in row 4."""
    lines = sample_bytes().decode().splitlines()
    header = lines[0].split(",")
    col = header.index("diagnosis")
    row = lines[4].split(",")
    row[col] = "maybe"
    lines[4] = ",".join(row)
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.slow
def test_trace_of_a_promoted_a_quarantined_and_a_duplicate_drop(runtime: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_BUCKET", runtime.settings.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    key = f"incoming/{DATASET}/cancer.csv"
    run = run_chain(runtime, key, sample_bytes())
    entry = ledger(runtime.store, key)
    assert entry is not None and entry["outcome"] == "validated"
    trace_id = entry["trace_id"]
    info = runtime.store.head(key)
    assert info is not None
    assert trace_id == tracing.trace_id_of(ObjectCreated(runtime.settings.bucket, key, etag=info.etag).idempotency_key)

    # The promoted drop, by key: every stage, in order, each with its start and end, down to the model event.
    out = _cli("trace", key)
    assert out.exit_code == 0, out.output
    text = out.output
    assert f"trace {trace_id}" in text and f"drop  {key}" in text
    lines = {line.split()[0]: line for line in text.splitlines()[2:] if line.startswith("  ")}
    assert "validated: data version " + entry["data_version"][:12] in lines["validate"]
    assert "materialized: feature set " + run["feature_set_version"] in lines["features"]
    assert f"trained: run {run['run_id']}" in lines["train"]
    assert lines["benchmark"].split()[4].startswith("promote")
    assert "v1: decision promote" in lines["register"]
    assert "registered+challenger+promoted (history 1)" in lines["register"]
    [published] = list(runtime.store.keys(f"published/{DATASET}/"))
    event = runtime.store.get_json(published)["event"]
    assert event["type"] == "sluice.model.promoted" and f"event id {event['id']}" in lines["event"]

    doc = json.loads(_cli("trace", trace_id, "--json").output)
    assert [s["stage"] for s in doc["steps"]] == CHAIN
    for step in doc["steps"][:-1]:  # the stages ran: their spans say when each started and ended
        assert step["started_at"] <= step["ended_at"] and step["duration_s"] >= 0, step
        assert step["attempts"][-1]["outcome"] == "done"
    assert doc["steps"][-1]["ended_at"] and doc["steps"][-1]["started_at"] is None  # an event has only a time
    starts = [s["started_at"] for s in doc["steps"][:-1]]
    assert starts == sorted(starts)
    # The train span is the attempt that wrote the run: it began before the run document says it finished.
    assert doc["steps"][2]["started_at"] < run["finished_at"] <= doc["steps"][2]["ended_at"]
    # A prefix of the trace id (the ledger id is one), and the key with its version id, find the same drop.
    assert json.loads(_cli("trace", trace_id[:16], "--json").output)["trace_id"] == trace_id
    assert json.loads(_cli("trace", f"{key}@{info.version_id}", "--json").output)["trace_id"] == trace_id

    # The same bytes under another name: a duplicate, which names the drop that made the data version.
    copy = _drop(runtime, f"incoming/{DATASET}/cancer-copy.csv", sample_bytes())
    out = _cli("trace", copy.key)
    assert out.exit_code == 0, out.output
    assert f"duplicate: same bytes as data version {entry['data_version'][:12]}, first dropped as {key} " \
           f"(trace {trace_id[:16]})" in out.output
    dup = json.loads(_cli("trace", f"{copy.key}@{copy.etag}", "--json").output)
    assert [s["stage"] for s in dup["steps"]] == ["validate"]
    assert dup["trace_id"] == tracing.trace_id_of(copy.idempotency_key) != trace_id

    # A file with one row of an unknown class: quarantined whole (the contract allows no invalid rows).
    bad = _drop(runtime, f"incoming/{DATASET}/bad.csv", _bad_bytes())
    bad_trace = tracing.trace_id_of(bad.idempotency_key)
    out = _cli("trace", bad.key)
    assert out.exit_code == 0, out.output
    [line] = [line for line in out.output.splitlines() if line.startswith("  validate")]
    assert "quarantined: contract-violation: " in line and "diagnosis" in line
    report_key = ledger(runtime.store, bad.key)["report"]  # type: ignore[index]
    assert runtime.store.get_json(report_key)["trace_id"] == bad_trace
    assert report_key in out.output
    doc = json.loads(_cli("trace", bad.key, "--json").output)
    assert [s["stage"] for s in doc["steps"]] == ["validate"]
    assert doc["steps"][0]["attempts"][0]["outcome"] == "quarantined"

    # Unknown keys and ids: one line saying so, exit 1.
    for ref, said in [(f"incoming/{DATASET}/never.csv", "no drop of"), ("0123456789abcdef", "no drop has the trace"),
                      ("runs/cancer/x", "neither a dropped object's key")]:
        out = _cli("trace", ref)
        assert out.exit_code == 1 and said in out.output and "Traceback" not in out.output, out.output


@pytest.mark.redis
@pytest.mark.slow
def test_one_correlation_id_from_the_drop_to_the_model_event_through_every_document(
        moto_settings: Any, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The real chain: moto's server, the SQS bridge and Dramatiq on Redis. One id, every document, every log line."""
    import logging
    from dataclasses import replace

    from sluice.core.memory import MemoryState
    from sluice.handlers import build_pipeline
    from sluice.infra.subscribe import TemporarySubscription
    from sluice.ml.registry import ModelRegistry
    from sluice.ml.registry_index import steps
    from sluice.ml.trace import trace
    from sluice.service import build_runtime, start
    from tests.chain import prepare, wait_for
    from tests.test_chain import _flush_namespace

    settings = replace(moto_settings, broker_url=redis_url)
    prepare(settings)
    caplog.handler.addFilter(tracing.ContextFilter())
    svc = start(settings, runtime=build_runtime(settings, build_pipeline()), bridge_wait_s=1)
    store = svc.runtime.store
    key = f"incoming/{DATASET}/cancer.csv"
    try:
        with caplog.at_level(logging.INFO, logger="sluice"), TemporarySubscription(settings) as subscriber:
            store.put(key, sample_bytes())
            [received] = wait_for(lambda: subscriber.receive(wait_s=1), 120, "the model event")
    finally:
        svc.stop()
        _flush_namespace(settings)
    info = store.head(key)
    assert info is not None
    tid = tracing.trace_id_of(ObjectCreated(settings.bucket, key, etag=info.etag).idempotency_key)

    # The subscriber's event carries it as the CloudEvents traceparent.
    assert received["type"] == "sluice.model.promoted"
    assert tracing.parse_traceparent(received["traceparent"]) == tid

    # Every document the path wrote names it.
    entry = ledger(store, key)
    assert entry is not None and entry["trace_id"] == tid and entry["outcome"] == "validated"
    dv = entry["data_version"]
    assert store.get_json(f"validated/{DATASET}/{dv}/manifest.json")["trace_id"] == tid
    [features] = [store.get_json(k) for k in store.keys(f"features/{DATASET}/") if k.endswith("manifest.json")]
    assert features["trace_id"] == tid
    [run_key] = [k for k in store.keys(f"runs/{DATASET}/") if k.endswith("/run.json")]
    run = store.get_json(run_key)
    assert (run["trace_id"], run["trace_links"]) == (tid, [tid])
    candidate = store.get_json(f"registry/{DATASET}/candidates/{run['run_id']}.candidate.json")
    assert candidate["trace_id"] == tid
    registry = ModelRegistry(store, MemoryState())
    [version] = registry.versions(DATASET)
    assert version["trace_id"] == tid
    history = registry.history(DATASET)
    assert [(s["action"], s.get("trace_id")) for r in history for s in steps(r)] == [
        ("registered", tid), ("challenger", tid), ("promoted", tid)]
    assert [r.get("trace_id") for r in history] == [tid]
    [published] = [store.get_json(k) for k in store.keys(f"published/{DATASET}/")]
    assert published["event"]["id"] == received["id"]
    assert tracing.parse_traceparent(published["event"]["traceparent"]) == tid

    # Each stage's attempts are spans of the trace, each run by a worker from a Dramatiq message.
    spans = [store.get_json(k) for k in store.keys(f"traces/{tid}/")]
    assert {s["trace_id"] for s in spans} == {tid}
    done = [s["stage"] for s in spans if s["outcome"] == "done"]
    assert done == ["validate", "features", "train", "benchmark", "register"]
    assert all(s["message_id"] and s["started_at"] <= s["ended_at"] for s in spans)
    assert not list(store.keys("traces/")) or {k.split("/")[1] for k in store.keys("traces/")} == {tid}

    # What `sluice trace` reads back from those documents.
    path = trace(store, MemoryState(), key)
    assert [s.stage for s in path.steps] == ["validate", "features", "train", "benchmark", "register", "event"]
    assert path.steps[-1].outcome == "sluice.model.promoted" and received["id"] in path.steps[-1].detail

    # Every log line a stage wrote on this drop's path carries the id.
    staged = [r for r in caplog.records if getattr(r, "stage", "")]
    assert {r.stage for r in staged} >= {"validate", "features", "train", "benchmark", "register"}  # type: ignore[attr-defined]
    assert {getattr(r, "trace_id", None) for r in staged} == {tid}


def test_dead_letters_and_refusals_of_a_drop_carry_its_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drop whose stage keeps failing is dead-lettered; one a stage refuses is recorded: both name the drop's
    trace, and `sluice trace` tells both."""
    from dramatiq import Worker

    from sluice import App
    from sluice.core.errors import IntegrityError, TransientError
    from sluice.core.memory import MemoryState
    from sluice.ml.trace import trace
    from sluice.testing import local_runtime
    from tests.chain import wait_for

    app = App("t")

    @app.on_object_created(prefix="incoming/")
    def validate(event: ObjectCreated, ctx: Any) -> None:  # an arrival stage: its outcome goes to the ledger
        if event.key.endswith("refuse.csv"):
            raise IntegrityError(f"{event.key} changed after it was checked")
        raise TransientError("the database is down")

    with local_runtime(app, max_retries=1, min_backoff_ms=10) as rt:
        drops = {}
        for name in ("fail.csv", "refuse.csv"):
            key = f"incoming/shop/{name}"
            rt.store.put(key, b"when,amount\n2026-01-01,3\n")
            info = rt.store.head(key)
            assert info is not None
            drops[name] = ObjectCreated(rt.settings.bucket, key, info.size, info.etag, info.version_id)
        worker = Worker(rt.broker, worker_threads=1, worker_timeout=50)
        worker.start()
        try:
            for event in drops.values():
                rt.actors["validate"].send(event.to_dict())
            [dead] = wait_for(lambda: list(rt.store.keys("deadletter/")), 30, "the dead letter")
            wait_for(lambda: list(rt.store.keys("refused/")), 30, "the refusal")
        finally:
            worker.stop()
        failed = tracing.trace_id_of(drops["fail.csv"].idempotency_key)
        refused = tracing.trace_id_of(drops["refuse.csv"].idempotency_key)
        assert rt.store.get_json(dead)["trace_id"] == failed
        from sluice.core import deadletters

        assert deadletters.describe(rt.store.get_json(dead)).endswith(f"trace {failed[:16]}")
        [refusal] = [rt.store.get_json(k) for k in rt.store.keys("refused/")]
        assert refusal["trace_id"] == refused
        ledgers = {e["key"]: e for e in (rt.store.get_json(k) for k in rt.store.keys("ledger/"))}
        assert ledgers[drops["fail.csv"].key]["trace_id"] == failed
        assert ledgers[drops["refuse.csv"].key]["trace_id"] == refused

        [step] = trace(rt.store, MemoryState(), drops["fail.csv"].key).steps
        assert step.outcome == "dead-lettered" and "the database is down" in step.detail
        assert [a["outcome"] for a in step.attempts] == ["failed", "failed"] and dead in step.documents
        [step] = trace(rt.store, MemoryState(), refused).steps
        assert step.outcome == "refused" and "changed after it was checked" in step.detail
        assert [a["outcome"] for a in step.attempts] == ["refused"]


@pytest.mark.slow
def test_a_coalesced_drop_goes_on_through_the_run_that_trained_it(runtime: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Two drops validated before the feature set is made: one run trains on both. The second drop has no run of
    its own; its path goes on through the run (and the trace) that coalesced it."""
    monkeypatch.setenv("SLUICE_BUCKET", runtime.settings.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    from sluice.core.memory import MemoryState
    from sluice.ml.trace import trace
    from tests.test_training import parts

    a, b = parts(2)
    first = _drop(runtime, f"incoming/{DATASET}/a.csv", a)
    second = _drop(runtime, f"incoming/{DATASET}/b.csv", b)
    manifests = sorted(k for k in runtime.store.keys("validated/") if k.endswith("/manifest.json"))
    mine = {runtime.store.get_json(k)["trace_id"]: k for k in manifests}
    ta, tb = tracing.trace_id_of(first.idempotency_key), tracing.trace_id_of(second.idempotency_key)
    assert set(mine) == {ta, tb}

    def run(stage: str, key: str) -> None:
        info = runtime.store.head(key)
        assert info is not None
        runtime.execute(stage, ObjectCreated(runtime.settings.bucket, key, info.size, info.etag).to_dict())

    run("features", mine[ta])  # the snapshot: both data versions, in a's trace
    run("features", mine[tb])  # the same feature set: it exists, nothing is written
    [fs] = [k for k in runtime.store.keys("features/") if k.endswith("/manifest.json")]
    run("train", fs)
    [run_key] = [k for k in runtime.store.keys("runs/") if k.endswith("/run.json")]
    doc = runtime.store.get_json(run_key)
    assert doc["trace_id"] == ta and sorted(doc["trace_links"]) == sorted([ta, tb])
    run("benchmark", run_key)
    [candidate] = [k for k in runtime.store.keys("registry/") if k.endswith(".candidate.json")]
    run("register", candidate)

    path = trace(runtime.store, MemoryState(), second.key)
    assert path.trace_id == tb and path.linked == [ta]
    assert [(s.stage, s.outcome, s.trace_id) for s in path.steps] == [
        ("validate", "validated", None), ("features", "skipped", None), ("train", "trained", ta),
        ("benchmark", "promote", ta), ("register", "v1", ta), ("event", "sluice.model.promoted", ta)]
    assert doc["run_id"] in path.steps[2].detail and "coalesced 2 drops" in path.steps[2].detail
    # The steps from the coalescing run keep their own times, from a's trace.
    own = trace(runtime.store, MemoryState(), ta)
    assert [s.started_at for s in own.steps[2:5]] == [s.started_at for s in path.steps[2:5]]
    out = _cli("trace", tb)
    assert out.exit_code == 0 and f"[trace {ta[:16]}]" in out.output and f"trace {ta}" in out.output


@pytest.mark.slow
def test_labels_that_wake_training_carry_the_run_and_the_event(runtime: Any) -> None:
    """Features and labels dropped separately: the label file's arrival makes the run, so its trace goes on to the
    model event; the feature drop's path goes on through that run."""
    from sluice.core.memory import MemoryState
    from sluice.ml.contract import parse_contract
    from sluice.ml.trace import trace
    from sluice.ml.transforms import apply_transforms
    from tests.test_features import CONTRACT, csv, events, labels_for, only, run_stage

    runtime.store.put("contracts/tx.yaml", parse_contract(CONTRACT).to_yaml().encode())
    raw = events(n_customers=120)
    runtime.store.put("incoming/tx/events.csv", csv(raw))
    run_stage(runtime, "validate", "incoming/tx/events.csv")
    run_stage(runtime, "features", only(runtime, "validated/tx/", "manifest.json"))
    run_stage(runtime, "train", only(runtime, "features/tx/", "manifest.json"))  # no labels yet: nothing
    runtime.store.put("labels/tx/batch1.csv", csv(labels_for(apply_transforms(raw, parse_contract(CONTRACT)))))
    run_stage(runtime, "labels", "labels/tx/batch1.csv")
    run_stage(runtime, "train-labels", only(runtime, "validated-labels/tx/", "manifest.json"))
    run_stage(runtime, "benchmark", only(runtime, "runs/tx/", "run.json"))
    run_stage(runtime, "register", only(runtime, "registry/tx/candidates/", ".candidate.json"))

    entries = {e["key"]: e for e in (runtime.store.get_json(k) for k in runtime.store.keys("ledger/tx/"))}
    t_events, t_labels = (entries[k]["trace_id"] for k in ("incoming/tx/events.csv", "labels/tx/batch1.csv"))
    run = runtime.store.get_json(only(runtime, "runs/tx/", "run.json"))
    assert run["trace_id"] == t_labels and set(run["trace_links"]) == {t_events, t_labels}
    [published] = [runtime.store.get_json(k)["event"] for k in runtime.store.keys("published/tx/")]
    assert tracing.parse_traceparent(published["traceparent"]) == t_labels

    labels = trace(runtime.store, MemoryState(), "labels/tx/batch1.csv")
    assert [(s.stage, s.outcome, s.trace_id) for s in labels.steps] == [
        ("labels", "validated", None), ("train", "trained", None), ("benchmark", labels.steps[2].outcome, None),
        ("register", "v1", None), ("event", published["type"], None)]
    assert labels.steps[1].started_at and labels.steps[1].ended_at  # the train-labels attempt's span
    drop = trace(runtime.store, MemoryState(), "incoming/tx/events.csv")
    assert drop.linked == [t_labels]
    # Its own train attempt found no labels and wrote nothing; the run the labels made goes on in their trace.
    assert [(s.stage, s.trace_id) for s in drop.steps] == [
        ("validate", None), ("features", None), ("train", None), ("train", t_labels), ("benchmark", t_labels),
        ("register", t_labels), ("event", t_labels)]
    assert drop.steps[2].outcome == "skipped" and run["run_id"] in drop.steps[2].detail


def test_a_drop_recorded_before_correlation_ids_is_traced_from_its_documents(runtime: Any) -> None:
    """A ledger entry and manifests without `trace_id`, and no spans (as written before them): the drop is still
    found by key, its id derived from the drop, and each step shows only the end its document records."""
    from sluice.core.memory import MemoryState
    from sluice.ml.trace import trace

    event = _drop(runtime, f"incoming/{DATASET}/old.csv", sample_bytes())
    [ledger_key] = list(runtime.store.keys(f"ledger/{DATASET}/"))
    for key in [ledger_key, *(k for k in runtime.store.keys("validated/") if k.endswith("/manifest.json"))]:
        doc = runtime.store.get_json(key)
        doc.pop("trace_id")
        runtime.store.put_json(key, doc)
    for key in list(runtime.store.keys("traces/")):
        runtime.store.delete(key)
    path = trace(runtime.store, MemoryState(), event.key)
    assert path.trace_id == tracing.trace_id_of(event.idempotency_key)
    [step] = path.steps
    entry = runtime.store.get_json(ledger_key)
    assert (step.stage, step.outcome, step.started_at, step.ended_at) == ("validate", "validated", None, entry["at"])
    assert step.duration_s is None and not step.attempts
    assert trace(runtime.store, MemoryState(), path.trace_id[:12]).trace_id == path.trace_id


_KILLED_WORKER = """
import sys
from dramatiq.brokers.stub import StubBroker
from sluice.core.settings import Settings
from sluice.events.s3 import ObjectCreated
from sluice.handlers import build_pipeline
from sluice.infra.online import MemoryOnline
from sluice.infra.state import MemoryState
from sluice.service import build_runtime

settings = Settings.from_env()
rt = build_runtime(settings, build_pipeline(), broker=StubBroker(), state=MemoryState(), online=MemoryOnline())
info = rt.store.head(sys.argv[1])
rt.execute("validate", ObjectCreated(settings.bucket, sys.argv[1], info.size, info.etag, info.version_id).to_dict())
"""


def test_an_attempt_killed_mid_stage_shows_in_the_trace(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Any) -> None:
    """A worker killed with SIGKILL records nothing at its end: the attempt's beginning is recorded when it starts,
    so `sluice trace` shows that it began and never finished, beside the attempt that then ran it."""
    import os
    import signal
    import subprocess
    import sys
    from dataclasses import replace

    from dramatiq.brokers.stub import StubBroker

    from sluice.handlers import build_pipeline
    from sluice.infra.online import MemoryOnline
    from sluice.infra.state import MemoryState
    from sluice.service import build_runtime
    from tests.chain import prepare, wait_for
    from tests.conftest import ROOT, unique_settings

    settings = replace(unique_settings(moto_endpoint), signing_key="7ace" * 16)
    _, store = prepare(settings)
    key = f"incoming/{DATASET}/killed.csv"
    store.put(key, sample_bytes())
    env = {**os.environ, "AWS_ENDPOINT_URL": moto_endpoint, "SLUICE_BUCKET": settings.bucket,
           "SLUICE_SIGNING_KEY": "7ace" * 16, "SLUICE_BROKER_URL": "memory://",
           "SLUICE_FAULT_DELAY": "validate=60", "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen([sys.executable, "-c", _KILLED_WORKER, key], env=env, cwd=tmp_path)
    try:
        wait_for(lambda: list(store.keys("traces/")) or worker.poll() is not None, 60, "the attempt to begin")
        assert worker.poll() is None, "the worker ended before it could be killed"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    for name, value in env.items():
        if name.startswith(("SLUICE_", "AWS_ENDPOINT")) and name != "SLUICE_FAULT_DELAY":
            monkeypatch.setenv(name, value)
    out = _cli("trace", key)
    assert out.exit_code == 0, out.output
    assert "validate" in out.output and "started: no end recorded: still running, or its worker died" \
        in out.output, out.output

    rt = build_runtime(settings, build_pipeline(), broker=StubBroker(), state=MemoryState(), online=MemoryOnline())
    info = store.head(key)
    assert info is not None
    rt.execute("validate", ObjectCreated(settings.bucket, key, info.size, info.etag, info.version_id).to_dict())
    out = _cli("trace", key)
    assert out.exit_code == 0, out.output
    assert "validated: data version" in out.output and "after 1 earlier attempts (never finished (its worker " \
        "died" in out.output, out.output
    found = _cli("trace", key, "--json")
    [step] = [s for s in json.loads(found.output)["steps"] if s["stage"] == "validate"]
    assert [a["outcome"] for a in step["attempts"]] == ["started", "done"]


def test_a_run_finds_the_drops_it_is_first_to_train_on_in_the_same_requests_at_any_number_of_runs(
        runtime: Any) -> None:
    # The train stage read every earlier run of the dataset (two GETs each) to find the newest one's data versions:
    # each run slower than the one before, outside the stage's measured time.
    from sluice.core.context import Context
    from sluice.events.pipeline import FeaturesMaterialized
    from sluice.handlers.train import _trace_links

    run_chain(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    [run_key] = [k for k in runtime.store.keys(f"runs/{DATASET}/") if k.endswith("/run.json")]
    [fs_key] = [k for k in runtime.store.keys(f"features/{DATASET}/") if k.endswith("/manifest.json")]
    features = FeaturesMaterialized.from_dict(runtime.store.get_json(fs_key))
    ctx = Context(runtime.settings, runtime.store, runtime.state)
    run = runtime.store.get_json(run_key)
    assert run["data_versions"] == list(features.data_versions)

    def gets() -> tuple[list[str], int]:
        calls: list[str] = []
        hook = lambda model, **_: calls.append(model.name)  # noqa: E731
        runtime.store.s3.meta.events.register("before-call.s3", hook)
        try:
            links = _trace_links(ctx, DATASET, features)
        finally:
            runtime.store.s3.meta.events.unregister("before-call.s3", hook)
        return links, calls.count("GetObject")

    assert gets() == ([], 1)  # the only run trained on this data version already
    def put_run(name: str, data_versions: list[str]) -> None:
        runtime.store.put_json(f"runs/{DATASET}/{name}/run.json",
                               {**run, "run_id": name, "data_versions": data_versions})

    for i in range(12):  # older runs, one of them on this data version
        put_run(f"run-old{i:02d}", [f"{i:064x}", *(run["data_versions"] if i == 5 else [])])
    time.sleep(1.1)  # S3 lists times to the second: runs written within one are all read
    put_run("run-newest", ["f" * 64])  # the newest, on none of this feature set's data versions
    links, n = gets()
    assert n <= 3 and links == [run["trace_id"]], (links, n)  # the newest run, and this data version's manifest


def test_the_latest_feature_set_is_found_in_the_same_requests_at_any_number_of_sets(runtime: Any) -> None:
    # Every train stage read every feature set's manifest of the dataset to find the newest.
    from sluice.ml.features import latest_feature_set

    run_chain(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    [fs_key] = [k for k in runtime.store.keys(f"features/{DATASET}/") if k.endswith("/manifest.json")]
    manifest = runtime.store.get_json(fs_key)
    for i in range(12):
        runtime.store.put_json(f"features/{DATASET}/fs-old{i:02d}/manifest.json",
                               {**manifest, "feature_set_version": f"fs-old{i:02d}"})
    time.sleep(1.1)
    runtime.store.put_json(f"features/{DATASET}/fs-newest/manifest.json",
                           {**manifest, "feature_set_version": "fs-newest", "materialized_at": "2999-01-01T00:00:00Z"})
    calls: list[str] = []
    hook = lambda model, **_: calls.append(model.name)  # noqa: E731
    runtime.store.s3.meta.events.register("before-call.s3", hook)
    try:
        latest = latest_feature_set(runtime.store, DATASET)
    finally:
        runtime.store.s3.meta.events.unregister("before-call.s3", hook)
    assert latest is not None and latest.feature_set_version == "fs-newest"
    assert calls.count("GetObject") == 1, calls
