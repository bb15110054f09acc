"""The CLI fixes of issue 13: --version, `events tail` ending cleanly on SIGTERM and showing each event's cause."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from importlib.metadata import version
from typing import Any

from click.testing import CliRunner

from sluice.cli import main
from sluice.commands.events import describe
from sluice.core.settings import Settings
from sluice.events.model import for_transition
from sluice.infra.aws import client
from tests.chain import prepare


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"sluice, version {version('sluice')}"


def test_events_tail_shows_the_cause_of_each_event() -> None:
    version_doc = {"model": "m", "dataset": "d", "version": 2, "decision": "promote", "metric": "roc_auc",
                   "scores": {"candidate": 0.91}, "artifact": {}, "lineage": {}}
    record = {"action": "promoted", "at": "2026-01-01T00:00:00Z", "sequence": 3, "previous_champion": 1,
              "champion": 2, "changes": [{"version": 2, "from": "challenger", "to": "champion"}], "cause": "manual",
              "by": "ana", "reason": "the new features are live"}
    line = describe(for_transition(version_doc, record, "sluice://b").to_cloudevent())
    assert "v2 roc_auc=0.9100 gate promote champion v2 cause manual by ana: the new features are live" in line
    assert "trace=" not in line  # a transition made by hand has no drop behind it
    gate = {**record, "cause": "gate", "by": "sluice/register"}
    line = describe(for_transition({**version_doc, "trace_id": "ab" * 16}, gate, "sluice://b").to_cloudevent())
    assert line.endswith(f" trace={'ab' * 8}")  # what `sluice trace` takes


def _queues(settings: Settings) -> set[str]:
    return set(client("sqs", settings).list_queues().get("QueueUrls", []))


def _subscriptions(settings: Settings) -> set[str]:
    subs = client("sns", settings).list_subscriptions()["Subscriptions"]
    return {s["SubscriptionArn"] for s in subs if s["TopicArn"].endswith(f":{settings.topic}")}


def test_events_tail_removes_its_queue_and_subscription_on_sigterm(moto_settings: Settings) -> None:
    prepare(moto_settings)
    queues, subs = _queues(moto_settings), _subscriptions(moto_settings)
    env = {**os.environ, "AWS_ENDPOINT_URL": moto_settings.endpoint_url or "", "SLUICE_BUCKET": moto_settings.bucket,
           "SLUICE_EVENTS_QUEUE": moto_settings.events_queue, "SLUICE_TOPIC": moto_settings.topic,
           "SLUICE_BROKER_URL": "memory://"}
    tail = subprocess.Popen([sys.executable, "-m", "sluice.cli", "events", "tail"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert tail.stderr is not None
        listening = tail.stderr.readline()
        assert "listening on" in listening, listening
        assert len(_queues(moto_settings) - queues) == 1 and len(_subscriptions(moto_settings) - subs) == 1
        tail.send_signal(signal.SIGTERM)
        _out, err = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
    assert tail.returncode == 0, err
    assert "removed the queue and its subscription" in err and "Traceback" not in err
    assert _queues(moto_settings) == queues
    assert _subscriptions(moto_settings) == subs


def test_status_says_when_training_starts_during_the_debounce(runtime: Any) -> None:
    from datetime import UTC, datetime

    from sluice.ml.status import waiting
    from tests.chain import DATASET, sample_contract

    contract = sample_contract()
    contract = contract.model_copy(update={"training": contract.training.model_copy(update={"debounce_s": 30.0})})
    runtime.store.put(f"contracts/{DATASET}.yaml", contract.to_yaml().encode())
    fs = [{"feature_set_version": "fs-1", "materialized_at": "2026-01-01T00:00:00Z", "data_versions": ["x"]}]
    at = datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert waiting(runtime.store, DATASET, fs, [], now=at)["starts_in_s"] == 20.0
    assert waiting(runtime.store, DATASET, fs, [], now=datetime(2026, 1, 2, tzinfo=UTC))["starts_in_s"] == 0.0
    assert waiting(runtime.store, DATASET, fs, [{"feature_set_version": "fs-1"}], now=at) is None


def test_a_drop_whose_training_was_quarantined_ends_there_in_status_and_trace(runtime: Any,
                                                                              monkeypatch: Any) -> None:
    """4 valid rows: the train stage quarantines the feature set. Status showed the drop as `featurized` and
    "training ... is due; waiting for a worker" for ever, the quarantine as a line of its own for the feature set's
    manifest, and the trace said only "wrote nothing"."""
    import json

    from sluice.events.s3 import ObjectCreated
    from sluice.infra.state import MemoryState
    from tests.chain import DATASET, sample_rows

    monkeypatch.setenv("SLUICE_BUCKET", runtime.settings.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    key = f"incoming/{DATASET}/tiny2.csv"
    runtime.store.put(key, sample_rows([(0, "malignant"), (1, "malignant"), (19, "benign"), (20, "benign")]))

    def event(k: str) -> dict[str, Any]:
        info = runtime.store.head(k)
        assert info is not None
        return ObjectCreated(runtime.settings.bucket, k, info.size, info.etag, info.version_id).to_dict()

    for stage, prefix in (("validate", key), ("features", "validated/"), ("train", "features/")):
        [k] = [k for k in runtime.store.keys(prefix) if k == key or k.endswith("/manifest.json")]
        for _ in range(2):  # redelivered: the same one outcome
            runtime.state = MemoryState()
            result = runtime.execute(stage, event(k))
    assert result["outcome"] == "quarantined"

    out = CliRunner().invoke(main, ["status"])
    assert out.exit_code == 0, out.output
    assert "waiting for a worker" not in out.output and "waiting " not in out.output
    assert f"  not trained {key}" in out.output
    assert "training refused: dataset 'cancer' has 4 labelled rows" in out.output
    assert "Drop more rows (at least 40" in out.output
    assert "features/" not in out.output  # the feature set's manifest is no drop: no line of its own
    [ds] = json.loads(CliRunner().invoke(main, ["status", "--json"]).output)["datasets"]
    [arrival] = ds["arrivals"]
    assert arrival["stage"] == "not trained" and arrival["training"]["outcome"] == "quarantined"
    assert arrival["training"]["feature_set_version"] == arrival["feature_sets"][0]
    assert runtime.store.get_json(arrival["training"]["key"])["stage"] == "train"
    assert ds["waiting"] is None

    out = CliRunner().invoke(main, ["trace", key])
    assert out.exit_code == 0, out.output
    [train] = [line for line in out.output.splitlines() if line.split()[:1] == ["train"]]
    assert "quarantined" in train and "4 labelled rows" in train and "wrote nothing" not in train
