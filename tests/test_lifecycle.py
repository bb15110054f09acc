"""Done means: two drops give v1 as champion and v2 promoted with reasons; filtered subscribers receive exactly
their events, each valid against its JSON Schema; a rollback restores v1 and is announced; `--at` answers before
and after each change; the model card prints. On moto in-process, stage by stage, with a 1 s FLAML budget.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import jsonschema
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from dramatiq.brokers.stub import StubBroker
from moto import mock_aws

from sluice.cli import main
from sluice.core.runtime import Runtime, published_key
from sluice.core.settings import Settings
from sluice.events.model import ModelEvent, schema
from sluice.events.s3 import ObjectCreated
from sluice.handlers import build_pipeline
from sluice.infra.aws import client
from sluice.infra.notify import SnsPublisher
from sluice.infra.provision import provision
from sluice.infra.state import MemoryState
from sluice.infra.subscribe import filter_policy, subscribe_queue
from sluice.ml.contract import PromotionSpec, contract_key, infer_contract
from sluice.ml.registry import ModelRegistry, parse_time
from sluice.service import build_runtime
from tests.chain import BUDGET_S

DATASET = "synth"
STAGES = [("validate", "incoming/", ""), ("features", "validated/", "/manifest.json"),
          ("train", "features/", "/manifest.json"), ("benchmark", "runs/", "/run.json"),
          ("register", "registry/", ".candidate.json")]


def region_rows(region: str, n: int, seed: int) -> pl.DataFrame:
    """The north measures x, the south z (the other is missing); `yes` when the region's measure is above 0.5.
    A model of the north alone cannot rank the south; one of both can, even with FLAML's smallest trees."""
    rng = np.random.default_rng(seed)
    measure = rng.random(n).round(6)
    missing = pl.Series([None] * n, dtype=pl.Float64)
    x, z = (pl.Series(measure), missing) if region == "north" else (missing, pl.Series(measure))
    return pl.DataFrame({"region": [region] * n, "x": x, "z": z, "label": np.where(measure > 0.5, "yes", "no")})


def csv(frame: pl.DataFrame) -> bytes:
    out = io.BytesIO()
    frame.write_csv(out)
    return out.getvalue()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    settings = replace(Settings(), bucket="sluice-lifecycle", topic="sluice-lifecycle-events",
                       broker_url="memory://")
    for name, value in [("SLUICE_BUCKET", settings.bucket), ("SLUICE_TOPIC", settings.topic),
                        ("SLUICE_BROKER_URL", "memory://")]:
        monkeypatch.setenv(name, value)
    with mock_aws():
        provision(settings, build_pipeline().routes)
        yield build_runtime(settings, build_pipeline(), broker=StubBroker(), state=MemoryState())


def run_chain(rt: Runtime, key: str, data: bytes) -> list[str]:
    """Drop `data` at `key` and run every stage on what the previous one wrote; returns the published event ids."""
    before = set(rt.store.keys(""))
    rt.store.put(key, data)
    published: list[str] = []
    new_keys = [key]
    for stage, prefix, suffix in STAGES:
        [target] = [k for k in new_keys if k.startswith(prefix) and k.endswith(suffix)]
        info = rt.store.head(target)
        assert info is not None
        result = rt.execute(stage, ObjectCreated(rt.settings.bucket, target, info.size, info.etag,
                                                 info.version_id).to_dict())
        assert result["outcome"] == "done", (stage, result)
        published += result["published"]
        new_keys = sorted(set(rt.store.keys("")) - before)
        before |= set(new_keys)
    return published


def received(queue_url: str) -> list[dict[str, Any]]:
    sqs = client("sqs", Settings())
    out: list[dict[str, Any]] = []
    while messages := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
        for m in messages:
            out.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    return out


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_two_drops_subscribers_rollback_and_the_champion_at_any_time(env: Runtime) -> None:
    rt, settings = env, env.settings
    north, south = region_rows("north", 300, 1), region_rows("south", 300, 2)
    contract = infer_contract(pl.concat([north, south]), DATASET, "label", BUDGET_S, debounce_s=0)
    contract = contract.model_copy(update={"promotion": PromotionSpec(
        slices=["region"], non_inferiority_margin=0.05, max_model_bytes=5_000_000),
        # The label is a threshold of one measure by construction: the leakage check is right to flag it.
        "training": contract.training.model_copy(update={"leakage": "warn"})})
    rt.store.put(contract_key(DATASET), contract.to_yaml().encode())

    mine, _ = subscribe_queue(settings, "mine", filter_policy(models=[DATASET]))
    rollbacks, _ = subscribe_queue(settings, "rollbacks", filter_policy(types=["sluice.model.rolled_back"]))
    others, _ = subscribe_queue(settings, "others", filter_policy(models=["other"]))
    everything, _ = subscribe_queue(settings, "everything")

    # Drop 1: the north only. v1 is compared with the naive baseline and becomes champion.
    [e1] = run_chain(rt, f"incoming/{DATASET}/north.csv", csv(north))
    registry = ModelRegistry(rt.store, MemoryState())
    v1 = registry.version(DATASET, 1)
    assert v1 is not None and v1["decision"] == "promote" and registry.alias(DATASET)["version"] == 1
    assert v1["gate"]["reference"] == "naive baseline" and v1["gate"]["metric"]["difference"]["low"] > 0

    # Drop 2: the south. v1 cannot rank it; v2 learns both regions. Both are scored on v2's holdout rows.
    [e2] = run_chain(rt, f"incoming/{DATASET}/south.csv", csv(south))
    v2 = registry.version(DATASET, 2)
    assert v2 is not None and v2["decision"] == "promote", v2["reasons"]
    assert v2["reasons"][0] == "promote" and "vs champion v1" in v2["reasons"][1]
    assert "lies above min_improvement 0.0" in v2["reasons"][2]
    diff = v2["gate"]["metric"]["difference"]
    assert diff["low"] > 0.05 and v2["scores"]["champion"] < 0.9 < v2["scores"]["candidate"]
    slices = {s["slice"]: s for s in v2["gate"]["slices"]}
    assert set(slices) == {"region=north", "region=south"} and all(s["status"] == "ok" for s in slices.values())
    # v1 never saw z: it gives every southern row the same score, so it cannot rank them at all.
    assert slices["region=south"]["reference"] == 0.5 and slices["region=south"]["improvement"] > 0.3
    # The model's size: its file, or a blend's document and every member file (the artifact is the document).
    blended = v2["artifact"]["format"] == "sluice-blend-json"
    assert (v2["benchmark"]["size_bytes"] > v2["artifact"]["bytes"] if blended
            else v2["benchmark"]["size_bytes"] == v2["artifact"]["bytes"]) and v2["benchmark"]["p99_ms"] > 0
    assert registry.snapshot(DATASET).stages == {1: "archived", 2: "champion"}

    # Someone else's model on the same topic.
    other = ModelEvent("sluice.model.promoted", "other", "other-ds", 1, "2026-01-01T00:00:00.000Z", "sluice://x")
    SnsPublisher(settings).publish(other)

    # Roll back by hand: v1 again, announced.
    out = cli("models", "rollback", DATASET, "--reason", "south customers complain", "--by", "ana")
    assert "rolled_back v1" in out and "champion now v1" in out
    rollback_id = out.strip().rsplit("id=", 1)[1]
    assert registry.alias(DATASET)["version"] == 1
    # The CLI publishes through the register stage's path (publish_once): its event is recorded like the stage's.
    assert rt.store.get_json(published_key(DATASET, rollback_id))["event"]["id"] == rollback_id

    # Subscribers receive exactly the events their filter matches.
    got = {name: received(url) for name, url in
           [("mine", mine), ("rollbacks", rollbacks), ("others", others), ("everything", everything)]}
    assert [e["id"] for e in got["mine"]] == [e1, e2, rollback_id]
    assert [e["type"] for e in got["mine"]] == ["sluice.model.promoted", "sluice.model.promoted",
                                                 "sluice.model.rolled_back"]
    assert [e["id"] for e in got["rollbacks"]] == [rollback_id]
    assert [e["id"] for e in got["others"]] == [other.id]
    assert sorted(e["id"] for e in got["everything"]) == sorted([e1, e2, rollback_id, other.id])

    # Every Sluice event is valid against its type's schema; the schema is strict enough to catch a bad one.
    for event in got["mine"]:
        jsonschema.Draft202012Validator(schema(event["type"]),
                                        format_checker=jsonschema.FormatChecker()).validate(event)
    promoted, rolled_back = got["mine"][1], got["mine"][2]
    assert promoted["data"]["previous_version"] == 1 and promoted["data"]["version"] == 2
    assert promoted["data"]["metric"]["difference"] == diff
    assert promoted["data"]["artifact"]["sha256"] == v2["artifact"]["sha256"]
    assert rolled_back["data"]["version"] == 1 and rolled_back["data"]["previous_version"] == 2
    assert rolled_back["data"]["transition"]["by"] == "ana"
    broken = json.loads(json.dumps(promoted))
    broken["data"]["artifact"]["sha256"] = "not-a-digest"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema("sluice.model.promoted"))
    with pytest.raises(jsonschema.ValidationError):  # a promotion is not a valid rollback: no previous version
        jsonschema.validate({**got["mine"][0], "type": "sluice.model.rolled_back",
                             "dataschema": schema("sluice.model.rolled_back")["$id"]},
                            schema("sluice.model.rolled_back"))

    # A redelivery (the register stage run again, its idempotency record lost) names the same event id, and
    # does not send it again: its publication is recorded in the bucket.
    rt.state = MemoryState()
    candidate = next(k for k in rt.store.keys(f"registry/{DATASET}/candidates/") if v2["run_id"] in k)
    info = rt.store.head(candidate)
    assert info is not None
    again = rt.execute("register", ObjectCreated(settings.bucket, candidate, info.size, info.etag).to_dict())
    assert again["published"] == [e2] and received(mine) == []

    # --at, a millisecond before and at each change of champion.
    history = registry.history(DATASET)
    changes = [r for r in history if r["champion"] != r["previous_champion"]]
    assert [(r["action"], r["previous_champion"], r["champion"]) for r in changes] == [
        ("promoted", None, 1), ("promoted", 1, 2), ("rolled_back", 2, 1)]
    for r in changes:
        at = parse_time(r["at"])
        before = (at - timedelta(milliseconds=1)).isoformat()
        shown = json.loads(cli("models", "show", DATASET, "--at", before, "--json"))
        assert shown["champion"] == r["previous_champion"], (r, shown)
        shown = json.loads(cli("models", "show", DATASET, "--at", r["at"], "--json"))
        assert shown["champion"] == r["champion"] and shown["since"]["sequence"] == r["sequence"]
    assert "champion v2, since" in cli("models", "show", DATASET, "--at", changes[1]["at"])

    shown = cli("models", "show", DATASET)
    assert shown.startswith(f"model {DATASET}: champion v1\n")
    assert " *v1  champion   gate promote" in shown and "  v2  archived   gate promote" in shown
    assert f"improvement [{diff['low']:+.4f}, {diff['high']:+.4f}]" in shown and "rows/s, single row p50" in shown

    # The history, as a person reads it.
    text = cli("models", "history", DATASET)
    assert "rolled_back v1" in text and "by ana (rollback): south customers complain" in text
    assert text.count("by sluice/register (gate)") == 4  # challenger and promoted, for v1 and for v2

    # The card of v2 covers data, training, metrics with intervals, slices, the comparison, lineage.
    card = cli("models", "card", DATASET, "2")
    for heading in ("## Data", "## Training", "## Metrics", "## Slices", "## Comparison with the previous champion",
                    "## Gate decision", "## Inference benchmark", "## Lineage"):
        assert heading in card
    assert f"| region=south | {slices['region=south']['rows']} |" in card
    assert "Compared with champion v1" in card and v2["artifact"]["sha256"] in card
    assert all(dv in card for dv in v2["lineage"]["data_versions"]) and len(v2["lineage"]["data_versions"]) == 2


def test_manual_promotion_of_a_rejected_version_needs_force(env: Runtime) -> None:
    registry = ModelRegistry(env.store, MemoryState())
    for i, outcome in enumerate(["promote", "reject", "insufficient_evidence"], 1):
        registry.register(DATASET, _version_doc(env, i), outcome=outcome, compared_with=1 if i > 1 else None,
                          at=f"2026-01-01T00:00:0{i}.000Z")
    queue, _ = subscribe_queue(env.settings, "q", filter_policy(models=[DATASET]))
    result = CliRunner().invoke(main, ["models", "promote", DATASET, "2", "--reason", "hunch"])
    assert result.exit_code == 1 and "Pass --force" in result.output and "Traceback" not in result.output
    assert received(queue) == [] and registry.alias(DATASET)["version"] == 1
    out = cli("models", "promote", DATASET, "2", "--reason", "hunch", "--force", "--by", "bob")
    assert "champion now v2" in out
    [event] = received(queue)
    assert event["type"] == "sluice.model.promoted" and event["data"]["transition"]["cause"] == (
        "manual, forced past the gate")
    jsonschema.validate(event, schema(event["type"]))
    cli("models", "archive", DATASET, "3", "--reason", "not needed", "--by", "bob")
    [archived] = received(queue)
    assert archived["type"] == "sluice.model.archived" and archived["data"]["stage"] == "archived"
    assert archived["data"]["outcome"] == "insufficient_evidence" and archived["data"]["previous_version"] == 2
    jsonschema.validate(archived, schema(archived["type"]))
    # The same kind of transition again is a new event, not a duplicate: its id differs.
    cli("models", "rollback", DATASET, "--reason", "undo", "--by", "bob")
    cli("models", "promote", DATASET, "2", "--reason", "redo", "--force", "--by", "bob")
    ids = [e["id"] for e in received(queue) if e["type"] == "sluice.model.promoted"]
    assert len(ids) == 1 and ids[0] != event["id"]


def test_subscribe_command_sets_the_filter_policy(env: Runtime) -> None:
    sns = client("sns", env.settings)
    out = cli("subscribe", "--sqs-queue", "deployer", "--model", DATASET, "--type", "sluice.model.promoted",
              "--type", "sluice.model.rolled_back")
    arn = out.split(": ")[1].split()[0]
    attrs = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
    assert json.loads(attrs["FilterPolicy"]) == {"model": [DATASET],
                                                 "type": ["sluice.model.promoted", "sluice.model.rolled_back"]}
    assert attrs["RawMessageDelivery"] == "true"
    cli("subscribe", "--http", "http://127.0.0.1:9/hook", "--dataset", DATASET)
    subs = sns.list_subscriptions()["Subscriptions"]
    assert {(s["Protocol"], s["Endpoint"].rsplit(":", 1)[-1] if s["Protocol"] == "sqs" else s["Endpoint"])
            for s in subs} == {("sqs", "deployer"), ("http", "http://127.0.0.1:9/hook")}
    result = CliRunner().invoke(main, ["subscribe", "--model", DATASET])
    assert result.exit_code == 2 and "exactly one of --sqs-queue NAME or --http URL" in result.output


def _version_doc(rt: Runtime, i: int) -> dict[str, Any]:
    """A version document as the register stage writes it, without training a model."""
    sha = f"{i:064x}"
    return {"run_id": f"run-{i}", "run_key": f"runs/{DATASET}/run-{i}/run.json", "dataset": DATASET,
            "metric": "roc_auc", "scores": {"candidate": 0.9, "champion": None, "baseline": 0.5},
            "reasons": ["synthetic"],
            "gate": {"reference": "naive baseline", "metric": {"higher_is_better": True, "holdout_rows": 100,
                                                               "difference": {"estimate": 0.4, "low": 0.3,
                                                                              "high": 0.5, "confidence": 0.95,
                                                                              "resamples": 1000,
                                                                              "candidate_ci": [0.85, 0.95],
                                                                              "reference_ci": [0.5, 0.5]}}},
            "benchmark": {"rows_per_s": 1e5, "p50_ms": 0.2, "p99_ms": 0.5, "size_bytes": 1234},
            "artifact": {"uri": rt.store.uri(f"runs/{DATASET}/run-{i}/model.txt"), "sha256": sha,
                         "format": "lightgbm-text", "bytes": 1234},
            "lineage": {"sources": [{"bucket": rt.settings.bucket, "key": f"incoming/{DATASET}/{i}.csv",
                                     "sha256": sha}],
                        "data_versions": [sha], "feature_set_version": "fs-1", "run_id": f"run-{i}",
                        "contract_version": "c"}}


def test_a_first_versions_card_names_the_naive_baseline_once(env: Runtime) -> None:
    # The card of every first version listed `| naive baseline |` twice: as the reference and again below.
    from sluice.ml.card import render_card

    doc = _version_doc(env, 1)
    doc["gate"]["metric"].update({"name": "roc_auc", "candidate": 0.9, "reference": 0.5, "baseline": 0.5})
    doc.update({"model": DATASET, "version": 1, "registered_at": "2026-01-01T00:00:01.000Z", "decision": "promote",
                "benchmark": {}})
    card = render_card(doc)
    assert card.count("| naive baseline |") == 1 and "| naive baseline | 0.5000 | [0.5000, 0.5000] |" in card
    doc["gate"]["reference"] = "champion v1"
    assert render_card(doc).count("| naive baseline | 0.5000 | |") == 1  # a later version still shows it


def test_models_show_says_why_the_gate_could_not_decide_and_what_to_do(env: Runtime) -> None:
    # A 120-row dataset: a holdout of 23 rows, under promotion.min_holdout_rows; the reason said only "too few".
    from sluice.ml.contract import PromotionSpec, TrainingSpec
    from sluice.ml.gate import _more_holdout

    why = ("the holdout has 23 rows, fewer than promotion.min_holdout_rows 30: too few to decide. "
           + _more_holdout(PromotionSpec().min_holdout_rows, TrainingSpec().holdout_fraction))
    doc = {**_version_doc(env, 1), "reasons": ["insufficient_evidence", "roc_auc 0.9 vs naive baseline 0.5", why],
           "registered_at": "2026-01-01T00:00:01.000Z"}
    doc["lineage"]["sources"][0].update(etag="e", version_id="1")
    ModelRegistry(env.store, MemoryState()).register(DATASET, doc, outcome="insufficient_evidence",
                                                     compared_with=None, at="2026-01-01T00:00:01.000Z")
    shown = cli("models", "show", DATASET)
    assert f"      {why}\n" in shown and "roc_auc 0.9 vs" not in shown
    assert "lower promotion.min_holdout_rows in the contract" in why and "about 150 labelled rows" in why


def test_loading_a_champion_that_is_not_there_says_why_and_what_to_load(env: Runtime) -> None:
    # vega's la-riots (50 rows): the gate found the evidence insufficient, and `load_model("riots@champion")` said
    # only "riots has no champion (versions: v1)".
    import sluice
    from sluice.core.errors import ModelInputError

    doc = {**_version_doc(env, 1), "reasons": ["6 holdout rows, fewer than min_holdout_rows 30"]}
    ModelRegistry(env.store, MemoryState()).register(DATASET, doc, outcome="insufficient_evidence",
                                                     compared_with=None, at="2026-01-01T00:00:01.000Z")
    with pytest.raises(ModelInputError) as info:
        sluice.load_model(f"{DATASET}@champion", settings=env.settings, store=env.store)
    text = str(info.value)
    assert "no champion (versions: v1)" in text and "insufficient_evidence (6 holdout rows" in text
    assert f"'{DATASET}:1'" in text and f"sluice models show {DATASET}" in text
