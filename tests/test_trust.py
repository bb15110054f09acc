"""Trust boundaries, as an attacker with write access to parts of the bucket would try them (moto in-process).

An attacker holds bucket credentials, not the workers' signing key: planted or edited documents are written with
plain boto3. Each attack must end refused, with a record of the refusal, and nothing acted on.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import polars as pl
import pytest
from moto import mock_aws

from sluice.core.errors import IntegrityError, ModelInputError
from sluice.core.provenance import Signer
from sluice.core.runtime import Runtime
from sluice.core.settings import Settings
from sluice.events.s3 import ObjectCreated
from sluice.infra.provision import provision
from sluice.infra.state import MemoryState
from sluice.infra.store import S3Store
from sluice.ml.registry import ModelRegistry
from sluice.ml.registry_index import steps
from sluice.service import build_runtime
from tests.chain import DATASET, sample_bytes


def plant(rt: Runtime, key: str, data: bytes | dict[str, Any]) -> ObjectCreated:
    """Write as an attacker does (boto3, no signing key) and return the event the write causes."""
    body = json.dumps(data).encode() if isinstance(data, dict) else data
    rt.store.s3.put_object(Bucket=rt.settings.bucket, Key=key, Body=body)
    info = rt.store.head(key)
    assert info is not None
    return ObjectCreated(rt.settings.bucket, key, info.size, info.etag, info.version_id)


def refusals(rt: Runtime) -> list[dict[str, Any]]:
    return [json.loads(rt.store.get(k)) for k in rt.store.keys("refused/")]


class _Payload:
    """Unpickling this creates the marker file: the code execution a planted pickle would get."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (self.marker, "w")


def test_a_planted_run_is_refused_and_never_benchmarked(runtime: Runtime, tmp_path: Any) -> None:
    import hashlib
    import pickle

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker)))
    plant(runtime, "runs/cancer/run-evil/model.pkl", payload)
    run = {"run_id": "run-evil", "dataset": DATASET, "model": DATASET, "model_format": "flaml-pickle",
           "artifacts": {"model": {"key": "runs/cancer/run-evil/model.pkl",
                                   "sha256": hashlib.sha256(payload).hexdigest(), "format": "flaml-pickle"},
                         "holdout": {"key": "runs/cancer/run-evil/holdout.parquet", "sha256": "0" * 64}}}
    event = plant(runtime, "runs/cancer/run-evil/run.json", run)
    result = runtime.execute("benchmark", event.to_dict())
    assert result["outcome"] == "refused"
    [record] = refusals(runtime)
    assert record["stage"] == "benchmark" and record["event"]["key"] == event.key
    assert "not written by a Sluice stage (it has no signature)" in record["message"]
    assert not list(runtime.store.keys("registry/"))
    assert not marker.exists()
    # A second delivery is a duplicate of the refusal, not a retry.
    assert runtime.execute("benchmark", event.to_dict()) == result


def test_a_planted_candidate_saying_promote_registers_nothing(runtime: Runtime) -> None:
    candidate = {"run_id": "run-evil", "run_key": "runs/cancer/run-evil/run.json", "dataset": DATASET,
                 "model": DATASET, "metric": "roc_auc", "higher_is_better": True, "promote": True,
                 "outcome": "promote", "scores": {"candidate": 1.0}, "compared_with": None, "holdout_rows": 1,
                 "reasons": ["promote"], "benchmarked_at": "2026-01-01T00:00:00Z"}
    event = plant(runtime, "registry/cancer/candidates/run-evil.candidate.json", candidate)
    seen: list[str] = []
    runtime.on_event = lambda kind, detail: seen.append(kind)
    assert runtime.execute("register", event.to_dict())["outcome"] == "refused"
    assert "published" not in seen and "refused" in seen
    assert [r["stage"] for r in refusals(runtime)] == ["register"]
    assert [k for k in runtime.store.keys("registry/") if "/candidates/" not in k] == []
    # Reconcile sees a candidate with no version, but a refusal is never retried on its own: it is left for the
    # operator (`sluice refused redrive`), not re-driven on every pass. Restored (other bytes), it is re-driven.
    from sluice.ml.reconcile import reconcile

    sent: list[tuple[str, str]] = []
    runtime.send = lambda stage, ev: sent.append((stage, ev.key))  # type: ignore[method-assign]
    gaps = reconcile(runtime, min_age_s=0)
    assert [g.key for g in gaps] == [event.key] and sent == []
    plant(runtime, event.key, {**candidate, "reasons": ["restored, say"]})
    reconcile(runtime, min_age_s=0)
    assert sent == [("register", event.key)]


def _flipped_sample() -> bytes:
    frame = pl.read_csv(io.BytesIO(sample_bytes()))
    flipped = frame.with_columns(pl.when(pl.col("diagnosis") == "malignant").then(pl.lit("benign"))
                                 .otherwise(pl.lit("malignant")).alias("diagnosis"))
    buffer = io.BytesIO()
    flipped.write_parquet(buffer)
    return buffer.getvalue()


def test_a_planted_data_version_is_never_materialized_or_trained_on(runtime: Runtime) -> None:
    fake = "f" * 64
    plant(runtime, f"validated/{DATASET}/{fake}/data.parquet", _flipped_sample())
    event = plant(runtime, f"validated/{DATASET}/{fake}/manifest.json", {
        "dataset": DATASET, "data_version": fake, "rows": 569, "retrain": True, "kind": "data"})
    assert runtime.execute("features", event.to_dict())["outcome"] == "refused"
    assert not list(runtime.store.keys("features/"))

    # A planted manifest under a future drop's data version does not pass that drop off as a duplicate.
    import hashlib

    ahead = hashlib.sha256(sample_bytes()).hexdigest()
    plant(runtime, f"validated/{DATASET}/{ahead}/manifest.json", {"dataset": DATASET, "data_version": ahead})
    early = plant(runtime, f"incoming/{DATASET}/early.csv", sample_bytes())
    assert runtime.execute("validate", early.to_dict())["outcome"] == "refused"
    [refusal] = [r for r in refusals(runtime) if r["stage"] == "validate"]
    assert json.loads(runtime.store.get(f"ledger/{DATASET}/{refusal['id']}.json"))["outcome"] == "refused"
    runtime.store.s3.delete_object(Bucket=runtime.settings.bucket, Key=f"validated/{DATASET}/{ahead}/manifest.json")

    # Beside a real data version, the planted one still poisons nothing: the stage that lists it refuses.
    dropped = plant(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    assert runtime.execute("validate", dropped.to_dict())["outcome"] == "done"
    [real] = [k for k in runtime.store.keys("validated/") if k.endswith("manifest.json") and fake not in k]
    info = runtime.store.head(real)
    assert info is not None
    result = runtime.execute("features", ObjectCreated(runtime.settings.bucket, real, info.size, info.etag).to_dict())
    assert result["outcome"] == "refused"
    assert "manifest.json: not written by a Sluice stage" in refusals(runtime)[-1]["message"]
    assert not list(runtime.store.keys("features/"))


def test_signed_documents_do_not_verify_under_another_key_or_with_other_bytes(runtime: Runtime) -> None:
    store = runtime.store
    store.put_json("runs/cancer/run-a/run.json", {"run_id": "run-a"})
    assert store.get_json("runs/cancer/run-a/run.json") == {"run_id": "run-a"}
    # A server-side copy keeps the signature metadata, but the signature names the key it was written at.
    store.s3.copy_object(Bucket=store.bucket, Key="runs/cancer/run-b/run.json",
                         CopySource={"Bucket": store.bucket, "Key": "runs/cancer/run-a/run.json"})
    with pytest.raises(IntegrityError, match="signature does not match"):
        store.get_json("runs/cancer/run-b/run.json")
    # Other bytes under the original metadata.
    meta = store.s3.head_object(Bucket=store.bucket, Key="runs/cancer/run-a/run.json")["Metadata"]
    store.s3.put_object(Bucket=store.bucket, Key="runs/cancer/run-a/run.json", Body=b'{"run_id": "evil"}',
                        Metadata=meta)
    with pytest.raises(IntegrityError):
        store.get_json("runs/cancer/run-a/run.json")
    # Another key signs differently: a store with the wrong key refuses what the workers wrote.
    store.put_json("runs/cancer/run-c/run.json", {"run_id": "run-c"})
    outsider = S3Store(runtime.settings, s3=store.s3, signer=Signer(b"k" * 32))
    with pytest.raises(IntegrityError):
        outsider.get_json("runs/cancer/run-c/run.json")
    # Outside the signed prefixes (a producer's drop), nothing is required.
    store.s3.put_object(Bucket=store.bucket, Key="incoming/cancer/x.csv", Body=b"a\n1\n")
    assert store.get("incoming/cancer/x.csv") == b"a\n1\n"


def test_a_stored_contract_that_does_not_parse_quarantines_the_drop(runtime: Runtime) -> None:
    runtime.store.put("contracts/cancer.yaml", b"dataset: cancer\ncolumns: [unclosed\n")
    event = plant(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    result = runtime.execute("validate", event.to_dict())
    assert result["outcome"] == "quarantined"
    report = runtime.store.get_json(result["report"])
    assert report["reason"] == "broken-contract" and "not valid YAML" in report["message"]
    assert "sluice contract put" in report["what_to_do"]


def test_permanent_errors_are_not_retried_and_transient_ones_are() -> None:
    from dramatiq.brokers.stub import StubBroker

    from sluice.core.app import Pipeline
    from sluice.core.errors import TransientError
    from tests.chain import drain

    calls: dict[str, int] = {"permanent": 0, "transient": 0}

    def permanent(event: ObjectCreated, ctx: Any) -> list[Any]:
        calls["permanent"] += 1
        raise ModelInputError("cannot score this at all")

    def transient(event: ObjectCreated, ctx: Any) -> list[Any]:
        calls["transient"] += 1
        raise TransientError("flaky")

    pipeline = Pipeline()
    pipeline.on_object_created("permanent", prefix="incoming/p/")(permanent)
    pipeline.on_object_created("transient", prefix="incoming/t/")(transient)
    with mock_aws():
        settings = replace(Settings(), bucket="sluice-retry", broker_url="memory://", max_retries=2,
                           min_backoff_ms=10)
        provision(settings, [])
        broker = StubBroker()
        broker.emit_after("process_boot")
        rt = build_runtime(settings, pipeline, broker=broker, state=MemoryState())
        for key in ("incoming/p/a.csv", "incoming/t/a.csv"):
            rt.dispatch(ObjectCreated(settings.bucket, key, 1, "etag"))
        drain(broker, settings.namespace)
        dead = sorted(json.loads(rt.store.get(k))["actor"] for k in rt.store.keys("deadletter/"))
    assert calls == {"permanent": 1, "transient": 3}  # the first attempt and two retries
    assert dead == [f"{settings.namespace}.permanent", f"{settings.namespace}.transient"]


# -- the registry: tamper-evident history ---------------------------------------------------------------------


@pytest.fixture
def registry() -> Iterator[ModelRegistry]:
    with mock_aws():
        settings = replace(Settings(), bucket="sluice-trust-registry", broker_url="memory://")
        provision(settings, [])
        reg = ModelRegistry(S3Store(settings), MemoryState())
        reg.register("m", {"run_id": "r1"}, outcome="promote", compared_with=None, at="2026-03-01T10:00:01Z")
        reg.register("m", {"run_id": "r2"}, outcome="promote", compared_with=1, at="2026-03-01T10:00:02Z")
        reg.register("m", {"run_id": "r3"}, outcome="reject", compared_with=2, at="2026-03-01T10:00:03Z")
        yield reg


def fresh(reg: ModelRegistry) -> ModelRegistry:
    """A reader with no cache, as a new worker or CLI process is."""
    return ModelRegistry(reg.store, reg.state)


def raw_put(reg: ModelRegistry, key: str, doc: dict[str, Any]) -> None:
    reg.store.s3.put_object(Bucket=reg.store.bucket, Key=key, Body=json.dumps(doc).encode())


def raw_get(reg: ModelRegistry, key: str) -> dict[str, Any]:
    doc: dict[str, Any] = reg.store.get_json_unverified(key)
    return doc


H = "registry/m/history/{:08d}.json"


def test_an_untouched_registry_verifies(registry: ModelRegistry) -> None:
    assert registry.verify("m", artifacts=False) == []
    records = registry.history("m")
    assert records[0]["prev"] is None and all(r["prev"] for r in records[1:])


def test_a_forged_history_record_is_refused_and_reported(registry: ModelRegistry) -> None:
    last = registry.history("m")[-1]
    forged = {**last, "sequence": last["sequence"] + 1, "action": "promoted", "version": 3, "champion": 3,
              "changes": [{"version": 3, "from": "rejected", "to": "champion"}], "by": "mallory"}
    raw_put(registry, H.format(forged["sequence"]), forged)
    problems = registry.verify("m", artifacts=False)
    assert any(H.format(forged["sequence"]) in p and "not written by a Sluice stage" in p for p in problems)
    assert any("aliases/champion.json: says v2, the history says v3" in p for p in problems)
    with pytest.raises(IntegrityError):
        fresh(registry).snapshot("m")
    with pytest.raises(IntegrityError):  # nothing is registered on top of a forged history
        fresh(registry).register("m", {"run_id": "r4"}, outcome="promote", compared_with=2, at="2026-03-01T11:00:00Z")


def test_an_edited_history_record_breaks_the_chain_even_when_re_signed(registry: ModelRegistry) -> None:
    record = raw_get(registry, H.format(2))
    # Someone holding the key rewrites who made a transition: the signature holds, the chain does not.
    registry.store.put_json(H.format(2), {**record, "by": "somebody else"})
    problems = registry.verify("m", artifacts=False)
    assert problems == ["history record 3 does not follow record 2: one of them was edited, or it was forged"]
    with pytest.raises(IntegrityError, match="history of m is broken"):
        fresh(registry).history("m")


def test_a_deleted_history_record_is_detected(registry: ModelRegistry) -> None:
    s3, bucket = registry.store.s3, registry.store.bucket
    saved = s3.get_object(Bucket=bucket, Key=H.format(2))
    registry.store.delete(H.format(2))
    assert registry.verify("m", artifacts=False)[0].startswith("history record 2 is missing")
    s3.put_object(Bucket=bucket, Key=H.format(2), Body=saved["Body"].read(), Metadata=saved["Metadata"])
    assert registry.verify("m", artifacts=False) == []
    # Deleting the newest records shortens the chain without breaking it; the versions and aliases give it away.
    for n in range(3, 1, -1):  # one record per registration
        registry.store.delete(H.format(n))
    problems = registry.verify("m", artifacts=False)
    assert "registry/m/versions/000002.json: v2 has no `registered` record in the history" in problems
    assert "registry/m/aliases/champion.json: says v2, the history says v1" in problems


def test_an_edited_alias_is_refused_and_reported(registry: ModelRegistry, caplog: pytest.LogCaptureFixture) -> None:
    raw_put(registry, "registry/m/aliases/champion.json", {"version": 3, "since": "2026-03-01T10:00:03Z"})
    # Not acted on: the champion comes from the signed index (what the history says); the file read alone is
    # refused with a warning naming it.
    champion = fresh(registry).champion("m")
    assert champion is not None and champion["version"] == 2
    alias_file = fresh(registry).alias_file("m")
    assert alias_file is not None and alias_file["version"] == 2
    assert "aliases/champion.json: not written by a Sluice stage" in caplog.text and "models reindex m" in caplog.text
    problems = registry.verify("m", artifacts=False)
    assert "registry/m/aliases/champion.json: says v3, the history says v2" in problems
    fresh(registry).reindex("m")  # rewrites the alias from the history
    assert registry.verify("m", artifacts=False) == []
    raw_put(registry, "registry/m/aliases/champion.json", {"version": 3, "since": "2026-03-01T10:00:03Z"})
    # Re-signed by someone with the key: still not what the history says.
    registry.store.put_json("registry/m/aliases/champion.json", {"version": 3})
    assert registry.verify("m", artifacts=False) == ["registry/m/aliases/champion.json: says v3, the history says v2"]


def test_an_earlier_signed_alias_copied_back_rolls_nothing_back(registry: ModelRegistry) -> None:
    """The alias file of an earlier state verifies (a stage signed it then). Copied back over the current one by
    someone with write access, it used to be what the gate judged against, what `sluice serve` swapped to and what
    `load_model('m@champion')` loaded. Readers take the alias from the signed index, so nothing follows it, and
    `models verify` reports it."""
    s3, bucket, key = registry.store.s3, registry.store.bucket, "registry/m/aliases/champion.json"
    assert fresh(registry).alias("m") == fresh(registry).alias_file("m")
    earlier = s3.get_object(Bucket=bucket, Key=key)  # v2's file, signed when v2 became the champion
    body, metadata = earlier["Body"].read(), earlier["Metadata"]
    fresh(registry).promote("m", 3, reason="by hand", by="ops", at="2026-03-01T10:00:04Z", force=True)
    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata)  # copied back
    assert fresh(registry).alias_file("m")["version"] == 2  # type: ignore[index]
    assert fresh(registry).alias("m")["version"] == 3  # type: ignore[index]
    champion = fresh(registry).champion("m")
    assert champion is not None and champion["version"] == 3
    assert "registry/m/aliases/champion.json: says v2, the history says v3" in fresh(registry).verify(
        "m", artifacts=False)
    # The index head of that state copied back too: readers fold the newer record in; verify names the head.
    head = "registry/m/index/head.json"
    versions = s3.list_object_versions(Bucket=bucket, Prefix=head).get("Versions", [])
    older = [v for v in versions if not v["IsLatest"]]  # the bucket is versioned (sluice up): earlier heads stay
    earlier_head = s3.get_object(Bucket=bucket, Key=head, VersionId=older[0]["VersionId"])
    s3.put_object(Bucket=bucket, Key=head, Body=earlier_head["Body"].read(), Metadata=earlier_head["Metadata"])
    assert fresh(registry).alias("m")["version"] == 3  # type: ignore[index]
    assert any(p.startswith(f"{head}: the index covers 3 of the 4 history records")
               for p in fresh(registry).verify("m", artifacts=False))


def test_an_edited_version_is_refused_and_reported(registry: ModelRegistry) -> None:
    key = "registry/m/versions/000002.json"
    version = raw_get(registry, key)
    raw_put(registry, key, {**version, "artifact": {"uri": "s3://elsewhere/model.txt", "sha256": "0" * 64}})
    with pytest.raises(IntegrityError):
        fresh(registry).version("m", 2)
    assert any(p.startswith(f"{key}: not written by a Sluice stage") for p in registry.verify("m", artifacts=False))
    registry.store.put_json(key, {**version, "decision": "promote", "reasons": ["trust me"]})
    assert registry.verify("m", artifacts=False) == [
        f"{key}: v2 was edited after history record 2 registered it"]


def test_a_version_document_the_history_holds_is_checked_against_the_digest_it_registered(
        registry: ModelRegistry) -> None:
    last = registry.history("m")[-1]
    held = {**last["version_document"], "decision": "promote"}
    registry.store.put_json(H.format(last["sequence"]), {**last, "version_document": held})  # by a key holder
    problems = registry.verify("m", artifacts=False)
    assert f"{H.format(3)}: the version document it holds is not the one it registered (its sha256 differs)" in problems


@pytest.mark.slow
def test_models_verify_checks_artifacts_and_a_tampered_model_is_never_loaded(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from sluice.cli import main
    from sluice.ml import bundle
    from tests.test_training import run_chain

    monkeypatch.setenv("SLUICE_BUCKET", runtime.settings.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    run_chain(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    verified = CliRunner().invoke(main, ["models", "verify", DATASET])
    assert verified.exit_code == 0 and "registry verified" in verified.output, verified.output

    registry = ModelRegistry(runtime.store, MemoryState())
    [version] = registry.versions(DATASET)
    model_key = version["artifact"]["uri"].split("/", 3)[3]
    original = runtime.store.get(model_key)
    # Someone with the signing key swaps the model (and signs it): the registry's own sha256 gives it away.
    # (A trailing newline: still a loadable model in every stored format, LightGBM text or JSON, yet not the bytes.)
    runtime.store.put(model_key, original + b"\n")
    problems = registry.verify(DATASET)
    assert len(problems) == 1 and problems[0].startswith(f"v1: artifact {version['artifact']['uri']} has sha256")
    with pytest.raises(IntegrityError):
        bundle.load_version(runtime.store, version)
    # Without the key, the swap does not even verify as a Sluice object.
    runtime.store.s3.put_object(Bucket=runtime.store.bucket, Key=model_key, Body=original)
    failed = CliRunner().invoke(main, ["models", "verify", DATASET, "--json"])
    assert failed.exit_code == 1
    report = json.loads(failed.output)
    assert not report["ok"] and "not written by a Sluice stage" in report["problems"][0]


@pytest.mark.parametrize("command", [["drop", "{file}", "--dataset", "{name}"],
                                     ["contract", "infer", "{file}", "--dataset", "{name}", "--target", "diagnosis"]])
def test_drop_and_infer_check_the_dataset_name_with_a_message(command: list[str], tmp_path: Any) -> None:
    from click.testing import CliRunner

    from sluice.cli import main

    sample = tmp_path / "cancer.csv"
    sample.write_bytes(sample_bytes())
    for name in ("Bad Name", "../registry/m", "x" * 100):
        args = [a.format(file=sample, name=name) for a in command]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and result.exception is not None and isinstance(result.exception, SystemExit)
        assert "a dataset name is lowercase letters, digits" in result.output, result.output


def test_a_refusal_is_re_driven_once_the_object_is_restored(runtime: Runtime) -> None:
    from sluice.core.refusals import find, redrive

    dropped = plant(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    runtime.execute("validate", dropped.to_dict())
    [manifest] = [k for k in runtime.store.keys("validated/") if k.endswith("manifest.json")]
    data_key = manifest.replace("manifest.json", "data.parquet")
    s3, bucket = runtime.store.s3, runtime.store.bucket
    saved = s3.get_object(Bucket=bucket, Key=data_key)
    original, metadata = saved["Body"].read(), saved["Metadata"]
    s3.put_object(Bucket=bucket, Key=data_key, Body=_flipped_sample())  # label-flipped rows, swapped in
    info = runtime.store.head(manifest)
    assert info is not None
    event = ObjectCreated(bucket, manifest, info.size, info.etag)
    assert runtime.execute("features", event.to_dict())["outcome"] == "refused"
    assert not list(runtime.store.keys("features/"))

    s3.put_object(Bucket=bucket, Key=data_key, Body=original, Metadata=metadata)  # restored from version history
    [record] = refusals(runtime)
    assert "data.parquet: not written by a Sluice stage" in record["message"]
    key, found = find(runtime.store, record["id"][:8])
    redrive(runtime, key, found, by="ops", at="2026-03-01T12:00:00Z")
    assert runtime.broker.queues[runtime.queue_name].qsize() == 1
    assert runtime.execute("features", event.to_dict())["outcome"] == "done"
    assert any(k.endswith("manifest.json") for k in runtime.store.keys("features/"))
    assert refusals(runtime)[0]["redriven"] == [{"by": "ops", "at": "2026-03-01T12:00:00Z"}]


def test_the_cli_names_a_forged_document_instead_of_a_traceback(registry: ModelRegistry,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from sluice.cli import main

    monkeypatch.setenv("SLUICE_BUCKET", registry.store.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    raw_put(registry, H.format(4), {**raw_get(registry, H.format(3)), "sequence": 4, "by": "mallory"})
    result = CliRunner().invoke(main, ["models", "history", "m"])
    assert result.exit_code == 1 and result.exception is not None and isinstance(result.exception, SystemExit)
    assert f"{H.format(4)}: not written by a Sluice stage" in result.output



PLANTED = [f"runs/{DATASET}/run-evil/run.json", f"ledger/{DATASET}/0123456789abcdef.json",
           f"validated/{DATASET}/{'e' * 64}/manifest.json", f"validated/other/{'e' * 64}/manifest.json",
           f"registry/{DATASET}/aliases/champion.json"]


def _quarantined_waiting_and_planted(rt: Runtime) -> str:
    """A quarantined drop, a drop with no outcome yet (returned), and an unsigned document under each prefix."""
    bad = plant(rt, f"incoming/{DATASET}/bad.csv", b"mean_radius;diagnosis\n1;benign\n")
    assert rt.execute("validate", bad.to_dict())["outcome"] == "quarantined"
    waiting = f"incoming/{DATASET}/later.csv"
    rt.store.put(waiting, sample_bytes())
    for key in PLANTED:
        plant(rt, key, {"dataset": DATASET, "run_id": "run-evil", "model": DATASET, "data_version": "e" * 64,
                        "version": 7})
    return waiting


def test_reconcile_goes_on_past_a_planted_document(runtime: Runtime) -> None:
    from sluice.ml.reconcile import find_gaps

    waiting = _quarantined_waiting_and_planted(runtime)
    # One planted object used to fail the whole pass, for every dataset, on every worker, every minute.
    assert ("validate", waiting) in [(g.stage, g.key) for g in find_gaps(runtime.store, runtime.state, min_age_s=0)]


def test_reconcile_finds_a_training_gap_beside_a_planted_run(runtime: Runtime) -> None:
    """A feature set whose training never came is a gap; a planted run document beside it used to stop the look
    for the dataset's training gap altogether (and the warning read as if the training itself was skipped)."""
    from sluice.ml.reconcile import find_gaps

    dropped = plant(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    assert runtime.execute("validate", dropped.to_dict())["outcome"] == "done"
    [manifest] = [k for k in runtime.store.keys("validated/") if k.endswith("manifest.json")]
    info = runtime.store.head(manifest)
    assert info is not None
    runtime.execute("features", ObjectCreated(runtime.settings.bucket, manifest, info.size, info.etag).to_dict())
    [features] = [k for k in runtime.store.keys("features/") if k.endswith("manifest.json")]
    plant(runtime, f"runs/{DATASET}/run-evil/run.json", {"run_id": "run-evil", "dataset": DATASET})
    assert ("train", features) in [(g.stage, g.key) for g in find_gaps(runtime.store, runtime.state, min_age_s=0)]


def test_status_names_a_planted_document_and_reports_the_rest(runtime: Runtime,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from sluice.cli import main

    waiting = _quarantined_waiting_and_planted(runtime)
    monkeypatch.setenv("SLUICE_BUCKET", runtime.settings.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 0, result.output
    assert f"quarantined incoming/{DATASET}/bad.csv" in result.output
    assert f"waiting     {waiting}" in result.output
    for key in [*PLANTED[:2], PLANTED[-1]]:  # status reads no data version without a drop of its own
        assert f"untrusted   {key}" in result.output, key
    assert "not written by a Sluice stage (it has no signature)" in result.output


def test_status_says_why_a_drop_was_refused_and_how_to_run_it_again(runtime: Runtime,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A drop that validation refused (here: a planted manifest under its data version) showed in `status` as a bare
    `refused` line, where a quarantine or a failure says what happened and what to do."""
    import hashlib

    from click.testing import CliRunner

    from sluice.cli import main
    from sluice.core.refusals import refusals as records

    ahead = hashlib.sha256(sample_bytes()).hexdigest()
    plant(runtime, f"validated/{DATASET}/{ahead}/manifest.json", {"dataset": DATASET, "data_version": ahead})
    early = plant(runtime, f"incoming/{DATASET}/early.csv", sample_bytes())
    assert runtime.execute("validate", early.to_dict())["outcome"] == "refused"
    monkeypatch.setenv("SLUICE_BUCKET", runtime.settings.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    shown = CliRunner().invoke(main, ["status"]).output
    [(_, record)] = records(runtime.store)
    assert f"refused     incoming/{DATASET}/early.csv" in shown, shown
    assert f"validated/{DATASET}/{ahead}/manifest.json: not written by a Sluice stage" in shown, shown
    assert f"`sluice refused redrive {record['id']}`" in shown, shown


def test_status_shows_work_a_later_stage_refused_until_it_is_re_driven(runtime: Runtime,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from sluice.cli import main
    from sluice.core.refusals import redrive
    from sluice.core.refusals import refusals as records

    fake = "f" * 64
    plant(runtime, f"validated/{DATASET}/{fake}/manifest.json", {"dataset": DATASET, "data_version": fake})
    dropped = plant(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    assert runtime.execute("validate", dropped.to_dict())["outcome"] == "done"
    [real] = [k for k in runtime.store.keys("validated/") if k.endswith("manifest.json") and fake not in k]
    info = runtime.store.head(real)
    assert info is not None
    event = ObjectCreated(runtime.settings.bucket, real, info.size, info.etag)
    assert runtime.execute("features", event.to_dict())["outcome"] == "refused"

    monkeypatch.setenv("SLUICE_BUCKET", runtime.settings.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    shown = CliRunner().invoke(main, ["status"]).output
    [(key, record)] = records(runtime.store)
    # The drop alone read "validated", as if its features were on their way.
    assert f"refused     features {real}: validated/{DATASET}/{fake}/manifest.json: not written" in shown, shown
    assert f"`sluice refused redrive {record['id']}`" in shown
    runtime.store.s3.delete_object(Bucket=runtime.settings.bucket, Key=f"validated/{DATASET}/{fake}/manifest.json")
    redrive(runtime, key, record, by="ops", at="2026-03-01T12:00:00Z")
    assert "refused     features" not in CliRunner().invoke(main, ["status"]).output


def test_a_planted_champion_alias_does_not_stop_the_datasets_next_drop(runtime: Runtime) -> None:
    """Validation compares a drop with the champion's profile: an alias no stage wrote is not acted on (the
    champion comes from the signed index), and the dataset's next drop goes on through the chain."""
    from tests.chain import run_chain

    frame = pl.read_csv(io.BytesIO(sample_bytes()))
    first, second = io.BytesIO(), io.BytesIO()
    frame.head(400).write_csv(first)
    frame.tail(300).write_csv(second)
    run_chain(runtime, f"incoming/{DATASET}/a.csv", first.getvalue())
    plant(runtime, f"registry/{DATASET}/aliases/champion.json", {"version": 7, "since": "2026-01-01T00:00:00Z"})
    run = run_chain(runtime, f"incoming/{DATASET}/b.csv", second.getvalue())
    assert len(run["data_versions"]) == 2 and not refusals(runtime)
    registry = ModelRegistry(runtime.store, MemoryState())
    assert [v["version"] for v in registry.versions(DATASET)] == [1, 2]
    champion = registry.champion(DATASET)
    assert champion is not None and champion["version"] in (1, 2)  # what the history says, never the planted v7


def test_the_newest_history_records_are_read_alone_and_checked_against_the_head(
        registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """`models history` reads the newest N records in one round (not the whole history): they equal the tail of a
    full replay, and an edited or deleted record in the window, or a window that is not what the head recorded,
    is refused like the full read refuses it."""
    from click.testing import CliRunner

    from sluice.cli import main

    # One record per registration: a fourth, so that a window of three is not the whole history.
    registry.register("m", {"run_id": "r4"}, outcome="reject", compared_with=2, at="2026-03-01T10:00:04Z")
    every = fresh(registry).history("m")
    reader = fresh(registry)
    gets: list[str] = []
    heads: list[str] = []
    real_get, real_exists = reader.store.get_json_or_none, reader.store.exists
    monkeypatch.setattr(reader.store, "get_json_or_none", lambda key: gets.append(key) or real_get(key))
    monkeypatch.setattr(reader.store, "exists", lambda key: heads.append(key) or real_exists(key))
    tail, total = reader.history_tail("m", 3)
    assert (tail, total) == (every[-3:], len(every)) and total > 3
    assert sum("/history/" in k for k in gets) == 3  # the window
    assert sum("/history/" in k for k in heads) == 1  # and the look for a newer record: whether it exists
    monkeypatch.setenv("SLUICE_BUCKET", registry.store.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    out = CliRunner().invoke(main, ["models", "history", "m", "--last", "2"]).output
    # A line per transition: a registration's record holds two or three.
    assert f"the newest 2 of {total} records" in out and out.count(" by ") == sum(len(steps(r)) for r in every[-2:])
    assert CliRunner().invoke(main, ["models", "history", "m", "--all"]).output.count(" by ") == sum(
        len(steps(r)) for r in every)
    # Edited in the window (and re-signed by someone holding the key): the chain breaks at the next record.
    key = H.format(total - 1)
    registry.store.put_json(key, {**raw_get(registry, key), "reason": "rewritten"})
    with pytest.raises(IntegrityError, match="does not follow"):
        fresh(registry).history_tail("m", 3)
    # The newest record re-signed with other content: not the one the head recorded.
    registry.store.put_json(key, every[-2])
    registry.store.put_json(H.format(total), {**every[-1], "reason": "rewritten"})
    with pytest.raises(IntegrityError, match="not the one its index recorded"):
        fresh(registry).history_tail("m", 3)
    registry.store.put_json(H.format(total), every[-1])
    assert fresh(registry).history_tail("m", 3)[0] == every[-3:]
    registry.store.delete(H.format(total - 2))
    with pytest.raises(IntegrityError, match="is gone"):
        fresh(registry).history_tail("m", 3)


def test_reindex_leaves_out_planted_and_forged_version_documents_and_says_so(
        registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted version document (a new number, a forged registered one, a name no stage writes) used to fail
    the rebuild, so `models reindex` and every reader whose index head was refused stopped on it."""
    from click.testing import CliRunner

    from sluice.cli import main

    v2 = raw_get(registry, "registry/m/versions/000002.json")
    raw_put(registry, "registry/m/versions/000009.json", {**v2, "version": 9})
    raw_put(registry, "registry/m/versions/000002.json", {**v2, "reasons": ["trust me"]})
    registry.store.s3.put_object(Bucket=registry.store.bucket, Key="registry/m/versions/evil.json", Body=b"{")
    registry.store.s3.put_object(Bucket=registry.store.bucket, Key="registry/m/index/head.json", Body=b"{}")
    reader = fresh(registry).current("m")  # the head refused: rebuilt in memory from the signed history
    assert (reader.champion, reader.head["versions"], reader.sequence) == (2, 3, registry.current("m").sequence)
    assert reader.doc(1) == registry.version("m", 1) and reader.doc(9) is None
    # v2's file is refused; the history's record of its registration holds the document, which is indexed instead.
    assert reader.doc(2) == v2 == registry.history("m")[1]["version_document"]
    monkeypatch.setenv("SLUICE_BUCKET", registry.store.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    result = CliRunner().invoke(main, ["models", "reindex", "m"])
    assert result.exit_code == 0, result.output
    assert "index rebuilt from 3 history records and 3 versions" in result.output
    assert "registry/m/versions/000009.json: not written by a Sluice stage" in result.output
    assert "registry/m/versions/000002.json: not written by a Sluice stage" in result.output
    problems = registry.verify("m", artifacts=False)  # names all three, and does not stop on the unparseable one
    assert "registry/m/versions/evil.json: not a JSON document" in problems
    assert "registry/m/versions/000009.json: v9 has no `registered` record in the history" in problems
    # Re-signed by someone holding the key: still not the version the history registered, so still left out.
    registry.store.put_json("registry/m/versions/000002.json", {**v2, "reasons": ["trust me"]})
    idx = fresh(registry).reindex("m")
    assert sorted(idx.skipped) == [
        "registry/m/versions/000002.json: v2 was edited after history record 2 registered it",
        "registry/m/versions/000009.json: not written by a Sluice stage (it has no signature)"]
    registry.store.put_json("registry/m/versions/000002.json", v2)
    registry.store.delete("registry/m/versions/000009.json")
    registry.store.delete("registry/m/versions/evil.json")
    assert fresh(registry).reindex("m").skipped == [] and registry.verify("m", artifacts=False) == []


def test_a_refusal_leaves_status_once_its_object_is_restored_and_re_driven_by_reconcile(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """The object a stage refused, restored from the bucket's version history (other bytes than the refused
    ones), is re-driven by reconcile, not by `sluice refused redrive`: its refusal used to stay in `sluice status`
    after the stage had run."""
    from click.testing import CliRunner

    from sluice.cli import main
    from sluice.ml.reconcile import reconcile

    dropped = plant(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    assert runtime.execute("validate", dropped.to_dict())["outcome"] == "done"
    [manifest] = [k for k in runtime.store.keys("validated/") if k.endswith("manifest.json")]
    s3, bucket = runtime.store.s3, runtime.store.bucket
    saved = s3.get_object(Bucket=bucket, Key=manifest)
    original, metadata = saved["Body"].read(), saved["Metadata"]
    edited = plant(runtime, manifest, {**json.loads(original), "rows": 1})
    assert runtime.execute("features", edited.to_dict())["outcome"] == "refused"
    monkeypatch.setenv("SLUICE_BUCKET", bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    assert f"refused     features {manifest}" in CliRunner().invoke(main, ["status"]).output

    s3.put_object(Bucket=bucket, Key=manifest, Body=original, Metadata=metadata)  # restored
    sent: list[tuple[str, str]] = []
    runtime.send = lambda stage, ev: sent.append((stage, ev.key))  # type: ignore[method-assign]
    reconcile(runtime, min_age_s=0)
    assert sent == [("features", manifest)]
    info = runtime.store.head(manifest)
    assert info is not None
    restored = ObjectCreated(bucket, manifest, info.size, info.etag, info.version_id)
    assert runtime.execute("features", restored.to_dict())["outcome"] == "done"
    shown = CliRunner().invoke(main, ["status"]).output
    assert "refused     features" not in shown and f"featurized  incoming/{DATASET}/a.csv" in shown, shown


def test_a_bundle_named_by_an_event_outside_runs_is_never_loaded(runtime: Runtime) -> None:
    """A CloudEvent (or s3:// URI) names a bundle and its sha256: both come from whoever sent it. A bundle planted
    where producers write (incoming/) carries no signature check on read, so it used to load and score."""
    import hashlib

    from sluice import load_model
    from tests import mixed

    manifest, files = mixed.trained_bundle(300, 0.5)
    name = json.loads(manifest)["files"]["model"]["path"]
    for key, body in [("incoming/shop/bundle/manifest.json", manifest),
                      *((f"incoming/shop/bundle/{path}", data) for path, data in files.items())]:
        plant(runtime, key, body)
    uri = f"s3://{runtime.settings.bucket}/incoming/shop/bundle/manifest.json"
    event = {"type": "sluice.model.promoted", "data": {"model": "shop", "version": 1,
                                                       "bundle": {"uri": uri, "sha256": hashlib.sha256(manifest)
                                                                  .hexdigest()}}}
    for ref in (event, uri):
        with pytest.raises(IntegrityError, match="loaded only from runs/"):
            load_model(ref, settings=runtime.settings, store=runtime.store)
    # Under runs/, the same planted bytes fail their signature.
    for path, data in [("manifest.json", manifest), *files.items()]:
        plant(runtime, f"runs/shop/run-evil/bundle/{path}", data)
    assert name in files
    with pytest.raises(IntegrityError, match="not written by a Sluice stage"):
        load_model(f"s3://{runtime.settings.bucket}/runs/shop/run-evil/bundle/manifest.json",
                   settings=runtime.settings, store=runtime.store)


def test_an_event_pointing_at_a_forged_downloaded_bundle_is_refused(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """`sluice models download cancer:1 b1`, every float of b1's model negated, its sha256 updated in the manifest,
    version.json removed: an event naming b1 and the edited manifest's sha256 loaded the forgery, which scored
    every row 1.0. An event is acted on only through the registry's signed record of the bundle it names."""
    import hashlib
    import re

    from click.testing import CliRunner

    from sluice import load_model
    from sluice.cli import main
    from sluice.ml.bundle import VERSION_RECORD
    from tests.chain import run_chain

    monkeypatch.setenv("SLUICE_BUCKET", runtime.settings.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    published: list[dict[str, Any]] = []
    runtime.on_event = lambda kind, doc: published.append(doc) if kind == "published" else None
    run_chain(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    [event] = [e for e in published if e["type"] == "sluice.model.promoted"]
    rows = pl.read_csv(io.BytesIO(sample_bytes())).drop("diagnosis").head(50)
    genuine = load_model(event, settings=runtime.settings, store=runtime.store)
    assert genuine.version == 1

    b1 = tmp_path / "b1"
    got = CliRunner().invoke(main, ["models", "download", f"{DATASET}:1", str(b1)])
    assert got.exit_code == 0, got.output
    [manifest_path] = b1.glob("manifest*.json")
    manifest = json.loads(manifest_path.read_bytes())
    files = manifest["files"]

    def negated(text: str, fmt: str) -> str:
        if fmt == "lightgbm-text":  # every leaf value negated; the trees' byte sizes, which LightGBM trusts, dropped
            text = re.sub(r"(?m)^(leaf_value=)(.*)$",
                          lambda m: m.group(1) + " ".join(str(-float(v)) for v in m.group(2).split()), text)
            return re.sub(r"(?m)^tree_sizes=.*\n", "", text)
        doc = json.loads(text)  # a linear model: every weight and the intercept negated

        def minus(v: Any) -> Any:
            return [minus(x) for x in v] if isinstance(v, list) else -v

        doc["coef"], doc["intercept"] = minus(doc["coef"]), minus(doc["intercept"])
        return json.dumps(doc)

    edited: dict[str, str] = {}  # old sha256 -> new, for a blend document naming its members
    for role in sorted((r for r in files if r == "model" or r.startswith("member-")), key=lambda r: r == "model"):
        path = b1 / files[role]["path"]
        text = path.read_text()
        if files[role]["format"] == "sluice-blend-json":
            for old, new in edited.items():
                text = text.replace(old, new)
        else:
            text = negated(text, files[role]["format"])
        path.write_text(text)
        sha = hashlib.sha256(text.encode()).hexdigest()
        edited[files[role]["sha256"]], files[role]["sha256"] = sha, sha
    manifest_path.write_text(json.dumps(manifest))
    forged_sha = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
    record = (b1 / VERSION_RECORD).read_text()
    (b1 / VERSION_RECORD).unlink()
    forged = load_model(str(b1))  # the user's own folder, by their own call: what they chose to trust
    assert forged.predict(rows).scores.tolist() != genuine.predict(rows).scores.tolist()

    attacks = {
        "a local folder": (str(b1), forged_sha),
        "a local manifest": (str(manifest_path), forged_sha),
        "another bucket": (f"s3://evil/{event['data']['bundle']['key']}", event["data"]["bundle"]["sha256"]),
    }
    for what, (uri, sha) in attacks.items():
        sent = {**event, "data": {**event["data"], "bundle": {"uri": uri, "sha256": sha}}}
        for ref in (sent, json.dumps(sent)):
            with pytest.raises(IntegrityError, match=r"loaded only from runs/ of this deployment's bucket.*Load the "
                               rf"model by name \(load_model\('{DATASET}:1'\)\).*pass its path") as refused:
                load_model(ref, settings=runtime.settings, store=runtime.store)
            assert "s3://" + runtime.settings.bucket + "/runs/" in str(refused.value), what
    # In the bucket's runs/, but not what the registry recorded for v1: another sha256, or another version's claim.
    for data in ({**event["data"], "bundle": {**event["data"]["bundle"], "sha256": forged_sha}},
                 {**event["data"], "version": 2}):
        with pytest.raises(IntegrityError, match="not what Sluice published"):
            load_model({**event, "data": data}, settings=runtime.settings, store=runtime.store)
    # An explicit load of the folder still checks it against the registry's record saved beside it.
    (b1 / VERSION_RECORD).write_text(record)
    with pytest.raises(IntegrityError, match="the registry recorded"):
        load_model(str(b1))


def test_names_and_values_a_producer_chose_cannot_drive_the_operators_terminal(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A file name (or a cell value) with terminal control sequences was printed raw by `sluice status`, `trace`
    and the worker's log lines: an OSC sequence retitles the operator's terminal, `\\r` rewrites the line."""
    import logging

    from click.testing import CliRunner

    from sluice.cli import main
    from sluice.core.tracing import TextFormatter

    osc = "\x1b]0;all fine\x07"
    key = f"incoming/{DATASET}/{osc}ok\rgood.csv"
    lines = sample_bytes().decode().splitlines()
    at = lines[0].split(",").index("diagnosis")
    row = lines[1].split(",")
    row[at] = f"{osc}benign"
    lines[1] = ",".join(row)
    with caplog.at_level(logging.INFO, logger="sluice"):
        assert runtime.execute("validate", plant(runtime, key, ("\n".join(lines) + "\n").encode()).to_dict())[
            "outcome"] == "quarantined"
    logged = "\n".join(TextFormatter().format(r) for r in caplog.records)
    assert "\\x1b]0;all fine\\x07ok\\x0dgood.csv" in logged and "\x1b" not in logged and "\r" not in logged
    monkeypatch.setenv("SLUICE_BUCKET", runtime.settings.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    for args in (["status"], ["trace", key], ["quarantine", "list", DATASET]):
        out = CliRunner().invoke(main, args).output
        assert "\\x1b]0;all fine\\x07" in out and "\x1b" not in out and "\r" not in out, (args, out)


def test_a_refusal_of_a_stage_this_app_lacks_says_which_app_to_run(runtime: Runtime,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal written by an app's own stage, re-driven with another app (the built-in chain): a KeyError
    traceback, now a line naming the stage and `--app`."""
    from click.testing import CliRunner

    from sluice.cli import main

    event = ObjectCreated(runtime.settings.bucket, f"incoming/{DATASET}/a.csv", 1, "etag")
    runtime.store.put_json(f"refused/{DATASET}/00112233aabbccdd.json", {
        "stage": "enrich", "dataset": DATASET, "id": "00112233aabbccdd", "event": event.to_dict(),
        "message": "x", "at": "2026-03-01T12:00:00Z"})
    monkeypatch.setenv("SLUICE_BUCKET", runtime.settings.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    result = CliRunner().invoke(main, ["refused", "redrive", "00112233"])
    assert result.exit_code == 1 and "of stage 'enrich', which this app does not run" in result.output, result.output
    assert "--app" in result.output and "redriven" not in json.loads(
        runtime.store.get(f"refused/{DATASET}/00112233aabbccdd.json"))


def test_a_planted_contract_version_does_not_hide_the_one_a_run_was_trained_under(runtime: Runtime) -> None:
    """`contract-versions/` is the contract owner's, unsigned: a file there that is not a contract stopped the
    search for a run's contract (a ContractError) instead of being passed over."""
    from sluice.ml.runs import contract_of
    from tests.chain import sample_contract

    contract = sample_contract()
    runtime.store.put(f"contract-versions/{DATASET}/000000000000.yaml", b"dataset: [unclosed")
    runtime.store.put(f"contract-versions/{DATASET}/{contract.fingerprint()[:12]}.yaml", contract.to_yaml().encode())
    run = {"dataset": DATASET, "run_id": "run-x", "contract_version": contract.fingerprint()}
    assert contract_of(runtime.store, run).fingerprint() == contract.fingerprint()


def test_a_planted_or_edited_run_document_does_not_stop_the_datasets_next_drops(runtime: Runtime) -> None:
    """Two reads are only for information: the newest earlier run (which drops a run is the first to train on,
    for its trace links) and the champion's run (validation's drift reference). A run document no stage wrote,
    planted as the newest run or edited in the champion's place, used to refuse every later training or every
    later drop of the dataset. Now it is left out, with a line naming it, and the chain goes on."""
    from tests.chain import run_chain

    frame = pl.read_csv(io.BytesIO(sample_bytes()))
    parts = []
    for rows in (frame.head(300), frame.slice(300, 150), frame.tail(119)):
        buffer = io.BytesIO()
        rows.write_csv(buffer)
        parts.append(buffer.getvalue())
    first = run_chain(runtime, f"incoming/{DATASET}/a.csv", parts[0])
    plant(runtime, f"runs/{DATASET}/run-deadbeef0001/run.json", {"run_id": "run-deadbeef0001",
                                                                  "finished_at": "2099-01-01T00:00:00Z"})
    second = run_chain(runtime, f"incoming/{DATASET}/b.csv", parts[1])
    assert len(second["data_versions"]) == 2 and second["trace_links"]
    # `sluice trace` of the drop reads every run of the dataset: it leaves the planted one out instead of failing.
    from sluice.ml.trace import trace

    steps = [s.stage for s in trace(runtime.store, runtime.state, f"incoming/{DATASET}/b.csv").steps]
    assert "train" in steps and "register" in steps, steps
    again = f"incoming/{DATASET}/again.csv"
    runtime.store.put(again, parts[0])  # a duplicate: its trace looks through every run of the dataset
    info = runtime.store.head(again)
    assert info is not None
    runtime.execute("validate", ObjectCreated(runtime.settings.bucket, again, info.size, info.etag).to_dict())
    steps = [s.stage for s in trace(runtime.store, runtime.state, again).steps]
    assert steps and steps[0] == "validate", steps
    # The champion's run document edited in place: validation cannot read its drift reference.
    champion = ModelRegistry(runtime.store, MemoryState()).champion(DATASET)
    assert champion is not None
    edited = json.loads(runtime.store.get(champion["run_key"]))
    plant(runtime, champion["run_key"], {**edited, "metrics": {"roc_auc": 1.0}})
    third = run_chain(runtime, f"incoming/{DATASET}/c.csv", parts[2])
    assert len(third["data_versions"]) == 3
    assert not [r for r in refusals(runtime) if r["stage"] in ("validate", "train")]
    [manifest] = [json.loads(runtime.store.get(k)) for k in runtime.store.keys(f"validated/{DATASET}/")
                  if k.endswith("manifest.json") and third["data_versions"][-1] in k]
    assert manifest["retrain"] and manifest.get("drift") is None
    assert first["run_id"] != second["run_id"] != third["run_id"]
