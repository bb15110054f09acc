"""Reconcile finds every object whose next step is missing, stage by stage, and re-drives it through the runtime."""

from __future__ import annotations

from typing import Any

import pytest

from sluice.core.runtime import Runtime
from sluice.events.s3 import ObjectCreated
from sluice.ml.reconcile import find_gaps, reconcile
from tests.chain import DATASET, sample_bytes


def run(rt: Runtime, stage: str, key: str) -> dict[str, Any]:
    info = rt.store.head(key)
    assert info is not None
    return rt.execute(stage, ObjectCreated(rt.settings.bucket, key, info.size, info.etag).to_dict())


def gaps(rt: Runtime) -> list[tuple[str, str]]:
    return [(g.stage, g.key) for g in find_gaps(rt.store, rt.state, min_age_s=0)]


def only(rt: Runtime, prefix: str, suffix: str) -> str:
    [key] = [k for k in rt.store.keys(prefix) if k.endswith(suffix)]
    return key


@pytest.mark.slow
def test_each_missing_next_step_is_found_until_the_chain_is_complete(runtime: Runtime) -> None:
    drop = f"incoming/{DATASET}/a.csv"
    runtime.store.put(drop, sample_bytes())
    assert find_gaps(runtime.store, runtime.state) == []  # younger than the default minimum age
    chain = [("validate", lambda: drop), ("features", lambda: only(runtime, "validated/", "manifest.json")),
             ("train", lambda: only(runtime, "features/", "manifest.json")),
             ("benchmark", lambda: only(runtime, "runs/", "run.json")),
             ("register", lambda: only(runtime, "registry/", ".candidate.json"))]
    for stage, key in chain:
        assert gaps(runtime) == [(stage, key())]
        run(runtime, stage, key())
    assert gaps(runtime) == []
    # The event was published and recorded; without its record, register is re-driven (and sends it once).
    [marker] = list(runtime.store.keys("published/"))
    runtime.store.delete(marker)
    candidate = only(runtime, "registry/", ".candidate.json")
    assert gaps(runtime) == [("register", candidate)]
    # A re-drive goes through the broker like any delivery.
    [gap] = reconcile(runtime, min_age_s=0)
    assert (gap.stage, gap.key) == ("register", candidate)
    queued = runtime.broker.queues[runtime.queue_name]  # type: ignore[attr-defined]
    assert queued.qsize() == 1
    # Its completed record names the marker among its outputs, so the re-run is not skipped as a duplicate.
    run(runtime, "register", candidate)
    assert runtime.store.exists(marker) and gaps(runtime) == []


def test_a_quarantined_drop_is_no_gap(runtime: Runtime) -> None:
    drop = f"incoming/{DATASET}/bad.csv"
    runtime.store.put(drop, b"mean_radius;diagnosis\n1;benign\n")
    assert gaps(runtime) == [("validate", drop)]
    assert run(runtime, "validate", drop)["outcome"] == "quarantined"
    assert gaps(runtime) == []


# `sluice models ...` run in a process that SIGKILLs itself just after its history record is written: the change
# holds, and its event was never sent (the tester's `KILL_AT=2 ... models promote wine 3 --force`).
KILLED_COMMAND = """
import os, signal, sys
from sluice.infra.store import S3Store
put = S3Store.put
def put_then_die(self, key, data, **kw):
    done = put(self, key, data, **kw)
    if "/history/" in key:
        os.kill(os.getpid(), signal.SIGKILL)
    return done
S3Store.put = put_then_die
from sluice.cli import main
main(sys.argv[1:])
"""
SIGNING_KEY = "cd" * 32


def _version_doc(n: int) -> dict[str, Any]:
    """A version document as the register stage writes it, without training a model."""
    sha = f"{n:064x}"
    return {"run_id": f"run-{n}", "run_key": f"runs/{DATASET}/run-{n}/run.json", "dataset": DATASET,
            "metric": "roc_auc", "scores": {"candidate": 0.9, "champion": None, "baseline": 0.5},
            "reasons": ["synthetic"],
            "gate": {"reference": "naive baseline", "metric": {
                "higher_is_better": True, "holdout_rows": 100,
                "difference": {"estimate": 0.4, "low": 0.3, "high": 0.5, "confidence": 0.95, "resamples": 1000,
                               "candidate_ci": [0.85, 0.95], "reference_ci": [0.5, 0.5]}}},
            "benchmark": {"rows_per_s": 1e5, "p50_ms": 0.2, "p99_ms": 0.5, "size_bytes": 1234},
            "artifact": {"uri": f"s3://b/runs/{DATASET}/run-{n}/model.txt", "sha256": sha, "format": "lightgbm-text",
                         "bytes": 1234},
            "lineage": {"sources": [{"bucket": "b", "key": f"incoming/{DATASET}/{n}.csv", "sha256": sha}],
                        "data_versions": [sha], "feature_set_version": "fs", "run_id": f"run-{n}",
                        "contract_version": "c"}}


def _received(settings: Any, queue_url: str) -> list[dict[str, Any]]:
    import json

    from sluice.infra.aws import client

    sqs, out = client("sqs", settings), []
    while messages := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
        for m in messages:
            out.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    return out


def test_a_lifecycle_command_killed_before_its_event_is_announced_by_reconcile_once(
        moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal
    import subprocess
    import sys

    import jsonschema
    from click.testing import CliRunner
    from dramatiq.brokers.stub import StubBroker

    from sluice.cli import main
    from sluice.events.model import for_transition, schema
    from sluice.handlers import build_pipeline
    from sluice.infra.state import MemoryState
    from sluice.infra.subscribe import filter_policy, subscribe_queue
    from sluice.ml.reconcile import PUBLISH
    from sluice.ml.registry import ModelRegistry
    from sluice.service import build_runtime
    from tests.chain import prepare
    from tests.conftest import unique_settings

    s = unique_settings(moto_endpoint, signing_key=SIGNING_KEY)
    env = {"AWS_ENDPOINT_URL": moto_endpoint, "SLUICE_BUCKET": s.bucket, "SLUICE_TOPIC": s.topic,
           "SLUICE_EVENTS_QUEUE": s.events_queue, "SLUICE_NAMESPACE": s.namespace, "SLUICE_BROKER_URL": "memory://",
           "SLUICE_SIGNING_KEY": SIGNING_KEY}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    prepare(s)  # the dataset's contract names the model, so reconcile looks at its registry
    rt = build_runtime(s, build_pipeline(), broker=StubBroker(), state=MemoryState())
    registry = ModelRegistry(rt.store, MemoryState())
    for n, outcome in ((1, "promote"), (2, "reject")):
        registry.register(DATASET, _version_doc(n), outcome=outcome, compared_with=1 if n > 1 else None,
                          at=f"2026-01-01T00:00:0{n}.000Z")
    queue, _ = subscribe_queue(s, "deployer", filter_policy(models=[DATASET]))
    assert [g.stage for g in find_gaps(rt.store, rt.state, min_age_s=0)] == []  # the gate's events: the stage's

    done = subprocess.run([sys.executable, "-c", KILLED_COMMAND, "models", "promote", DATASET, "2", "--reason", "t",
                           "--force", "--by", "ana"], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    cold = ModelRegistry(rt.store, MemoryState())
    [record], total = cold.history_tail(DATASET, 1)
    assert (record["action"], record["version"], cold.current(DATASET).champion) == ("promoted", 2, 2)
    assert _received(s, queue) == [] and list(rt.store.keys(f"published/{DATASET}/")) == []
    assert find_gaps(rt.store, rt.state) == []  # younger than the default minimum age: its command may be sending it

    # Before: "0 gaps", and nothing was ever sent. Now: one event, the one the command would have sent.
    [gap] = reconcile(rt, min_age_s=0)
    assert (gap.stage, gap.key) == (PUBLISH, f"registry/{DATASET}/history/{total:08d}.json")
    [event] = _received(s, queue)
    expected = for_transition(cold.version(DATASET, 2), record, f"sluice://{s.bucket}")
    assert event["id"] == expected.id and event["type"] == "sluice.model.promoted"
    assert event["data"]["transition"]["cause"] == "manual, forced past the gate" and event["data"]["champion"] == 2
    jsonschema.validate(event, schema(event["type"]))
    assert list(rt.store.keys(f"published/{DATASET}/")) == [f"published/{DATASET}/{expected.id}.json"]
    # Published and recorded: never again, by a second pass or a command that publishes its own.
    assert reconcile(rt, min_age_s=0) == [] and _received(s, queue) == []
    result = CliRunner().invoke(main, ["models", "rollback", DATASET, "--reason", "undo", "--by", "ana"])
    assert result.exit_code == 0, result.output
    assert [e["type"] for e in _received(s, queue)] == ["sluice.model.rolled_back"]
    assert reconcile(rt, min_age_s=0) == [] and _received(s, queue) == []
