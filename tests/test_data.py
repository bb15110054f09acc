"""Content-addressed data versions, drift, and quarantine replay, on moto in-process."""

from __future__ import annotations

import io

import numpy as np
import polars as pl

from sluice.core.runtime import Runtime
from sluice.events.pipeline import DataValidated
from sluice.events.s3 import ObjectCreated
from sluice.ml import drift, quarantine
from sluice.ml.contract import DriftSpec
from tests.chain import DATASET, sample_bytes, sample_contract


def validate(rt: Runtime, key: str) -> None:
    info = rt.store.head(key)
    assert info is not None
    rt.execute("validate", ObjectCreated(rt.settings.bucket, key, info.size, info.etag, info.version_id).to_dict())


def test_a_duplicate_with_an_s3_checksum_is_recognised_without_reading_it(runtime: Runtime) -> None:
    runtime.store.put(f"incoming/{DATASET}/a.csv", sample_bytes())
    validate(runtime, f"incoming/{DATASET}/a.csv")
    reads: list[str] = []
    runtime.store.s3.meta.events.register("provide-client-params.s3.GetObject",
                                          lambda params, **_: reads.append(params["Key"]))
    runtime.store.put(f"incoming/{DATASET}/b.csv", sample_bytes())  # put() uploads with ChecksumSHA256
    validate(runtime, f"incoming/{DATASET}/b.csv")
    assert not [k for k in reads if k.startswith("incoming/")]
    outcomes = sorted(runtime.store.get_json(k)["outcome"] for k in runtime.store.keys(f"ledger/{DATASET}/"))
    assert outcomes == ["duplicate", "validated"]


def test_without_a_checksum_the_object_is_read_once(runtime: Runtime) -> None:
    reads: list[str] = []
    runtime.store.s3.meta.events.register("provide-client-params.s3.GetObject",
                                          lambda params, **_: reads.append(params["Key"]))
    runtime.store.s3.put_object(Bucket=runtime.store.bucket, Key=f"incoming/{DATASET}/plain.csv", Body=sample_bytes())
    validate(runtime, f"incoming/{DATASET}/plain.csv")
    assert reads.count(f"incoming/{DATASET}/plain.csv") == 1
    [manifest_key] = [k for k in runtime.store.keys("validated/") if k.endswith("manifest.json")]
    import hashlib

    assert DataValidated.from_dict(runtime.store.get_json(manifest_key)).data_version == hashlib.sha256(
        sample_bytes()).hexdigest()


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = pl.DataFrame({"x": rng.normal(0, 1, 5000), "c": rng.choice(["a", "b", "c"], 5000, p=[.6, .3, .1])})
    same = pl.DataFrame({"x": rng.normal(0, 1, 5000), "c": rng.choice(["a", "b", "c"], 5000, p=[.6, .3, .1])})
    moved = pl.DataFrame({"x": rng.normal(1.5, 1, 5000), "c": rng.choice(["a", "b", "d"], 5000, p=[.1, .3, .6])})
    profile = drift.reference_profile(ref)
    stable = drift.psi(profile, same)
    shifted = drift.psi(profile, moved)
    assert max(stable.values()) < 0.05
    assert min(shifted.values()) > 0.5
    summary = drift.summarize(profile, moved, DriftSpec(psi_threshold=0.2, max_drifted_share=0.3), "run-x")
    assert summary is not None and summary["drifted"] and summary["drifted_columns"] == ["c", "x"]
    assert drift.summarize(None, moved, DriftSpec(), None) is None


def test_replay_after_a_contract_fix_links_back_to_the_original(runtime: Runtime) -> None:
    strict = sample_contract()
    strict = strict.model_copy(update={
        "max_invalid_fraction": 0.2,
        "columns": {**strict.columns, "mean_radius": strict.columns["mean_radius"].model_copy(update={"min": 10.0})}})
    runtime.store.put(f"contracts/{DATASET}.yaml", strict.to_yaml().encode())
    runtime.store.put(f"incoming/{DATASET}/a.csv", sample_bytes())
    validate(runtime, f"incoming/{DATASET}/a.csv")
    [entry] = quarantine.entries(runtime.store, DATASET)
    assert entry.scope == "rows"
    counts = entry.report["rows"]
    assert counts["valid"] + counts["quarantined"] == counts["total"] == 569 and counts["quarantined"] > 0
    frame = quarantine.rows(runtime.store, entry)
    assert frame is not None and frame.height == counts["quarantined"]
    assert frame["_sluice_reasons"].str.contains("mean_radius: greater_than_or_equal_to").all()

    # The contract is fixed; replaying re-drops exactly the quarantined rows, with lineage metadata.
    runtime.store.put(f"contracts/{DATASET}.yaml", sample_contract().to_yaml().encode())
    [key] = quarantine.replay(runtime.store, DATASET, entry.id[:8], at="2026-01-01T00:00:00Z")
    assert quarantine.replay(runtime.store, DATASET, None, at="later") == []  # once per contract version
    validate(runtime, key)
    manifests = [DataValidated.from_dict(runtime.store.get_json(k))
                 for k in runtime.store.keys("validated/") if k.endswith("manifest.json")]
    [replayed] = [m for m in manifests if m.replay_of]
    assert replayed.replay_of == {"data_version": entry.id, "key": f"incoming/{DATASET}/a.csv"}
    assert replayed.rows == counts["quarantined"] and replayed.rows_quarantined == 0
    assert sum(m.rows for m in manifests) == 569  # every row of the original drop is now validated exactly once
    replayed_rows = pl.read_parquet(io.BytesIO(runtime.store.get(f"validated/{DATASET}/{replayed.data_version}"
                                                                 "/data.parquet")))
    assert replayed_rows["mean_radius"].max() < 10.0  # type: ignore[operator]


def test_status_says_a_quarantined_file_was_replayed(runtime: Runtime) -> None:
    """After a contract fix and `quarantine replay`, `status` still showed the drop as quarantined, with its old
    message, beside the replay that went through."""
    from sluice.handlers import build_pipeline
    from sluice.ml.status import dataset_status

    strict = sample_contract()
    strict = strict.model_copy(update={
        "columns": {**strict.columns, "mean_radius": strict.columns["mean_radius"].model_copy(update={"min": 10.0})}})
    runtime.store.put(f"contracts/{DATASET}.yaml", strict.to_yaml().encode())
    runtime.store.put(f"incoming/{DATASET}/day1.csv", sample_bytes())
    validate(runtime, f"incoming/{DATASET}/day1.csv")  # max_invalid_fraction 0: the whole file
    [entry] = quarantine.entries(runtime.store, DATASET)
    assert entry.scope == "file"

    def stage_of(key: str) -> str:
        status = dataset_status(runtime.store, runtime.state, DATASET, pipeline=build_pipeline())
        return str(next(a for a in status["arrivals"] if a["key"] == key)["stage"])

    assert stage_of(f"incoming/{DATASET}/day1.csv") == "quarantined"
    runtime.store.put(f"contracts/{DATASET}.yaml", sample_contract().to_yaml().encode())
    [key] = quarantine.replay(runtime.store, DATASET, entry.id[:8], at="2026-01-01T00:00:00Z")
    validate(runtime, key)
    assert stage_of(f"incoming/{DATASET}/day1.csv") == "replayed"
    assert stage_of(key) == "validated"
