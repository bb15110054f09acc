"""`sluice trace KEY|ID`: the path of a promoted, a quarantined and a duplicate drop, read from the bucket alone."""

from __future__ import annotations

import json
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
    assert "v1: decision promote" in lines["register"] and "promoted (history 3)" in lines["register"]
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
    # A prefix of the trace id (the ledger id is one) finds the same drop.
    assert json.loads(_cli("trace", trace_id[:16], "--json").output)["trace_id"] == trace_id

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
