"""Stage 2: the dataset's validated data versions become a versioned feature set in the offline store.

    validated/<dataset>/<dv>/manifest.json
        ->  features/<dataset>/<feature set version>/{features.parquet, manifest.json}

The feature set covers the dataset snapshot: every validated data version so far. Its version is a hash of the
feature definitions and those data versions, so an unchanged input is never computed twice, and two drops
validated at nearly the same time converge on one feature set.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import polars as pl

from sluice.core import keys
from sluice.core.context import Context
from sluice.core.runtime import dataset_of
from sluice.events.pipeline import DataValidated, FeaturesMaterialized
from sluice.events.s3 import ObjectCreated
from sluice.ml.contract import Contract, load_contract
from sluice.ml.features import latest_vectors, read_parquet
from sluice.ml.transforms import apply_transforms


def handle(event: ObjectCreated, ctx: Context) -> list[Any]:
    """Materialize the feature set of the dataset's current snapshot."""
    dataset = dataset_of(event.key)
    contract = load_contract(ctx.store, dataset, ctx.extensions)
    trigger = DataValidated.from_dict(ctx.store.get_json(event.key))
    if not trigger.retrain:
        ctx.log.info("skip  features   %s: data version %s recorded, no retraining (drift.retrain: %s, drift %s)",
                     dataset, trigger.data_version[:12], contract.drift.retrain,
                     "none" if not trigger.drift else f"{trigger.drift['drifted_share']:.0%} of columns")
        return []
    manifests = [DataValidated.from_dict(ctx.store.get_json(k))
                 for k in ctx.store.keys(keys.Validated.prefix(dataset)) if k.endswith("/manifest.json")]
    manifests.sort(key=lambda m: m.data_version)
    data_versions = [m.data_version for m in manifests]
    definitions = [t.model_dump(mode="json") for t in contract.features]
    version = feature_set_version(definitions, data_versions, contract)
    base = keys.FeatureSet.prefix(dataset, version)
    if ctx.store.exists(f"{base}manifest.json"):
        ctx.log.info("same  features   %s: feature set %s exists", dataset, version)
        return []

    frames = [read_parquet(ctx.store, keys.Validated(dataset, dv, keys.DATA).key) for dv in data_versions]
    frame = apply_transforms(pl.concat(frames, how="diagonal_relaxed"), contract, ctx.extensions)
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    ctx.store.put(f"{base}features.parquet", buffer.getvalue())
    if contract.entity is not None:
        vectors = latest_vectors(frame, contract)
        written = ctx.online.put_many(dataset, version, vectors, contract.entity.timestamp)
        ctx.log.info("wrote online     %s: %d of %d entities updated", dataset, written, len(vectors))
    manifest = FeaturesMaterialized(
        dataset=dataset, feature_set_version=version, data_versions=data_versions,
        sources=[m.source for m in manifests], contract_version=contract.fingerprint(), definitions=definitions,
        rows=frame.height, columns=frame.columns, materialized_at=ctx.timestamp(), trace_id=trigger.trace_id,
    )
    ctx.store.put_json(f"{base}manifest.json", manifest.to_dict(), if_absent=True)
    ctx.log.info("wrote features   %s -> feature set %s (%d rows, %d data versions)",
                 dataset, version, frame.height, len(data_versions))
    return []


def feature_set_version(definitions: list[dict[str, Any]], data_versions: list[str], contract: Contract) -> str:
    """Hash of what determines the feature set's content."""
    doc = {"definitions": definitions, "data_versions": data_versions, "target": contract.target,
           "columns": sorted(contract.columns)}
    return "fs-" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
