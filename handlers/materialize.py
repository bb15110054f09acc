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

from sluice.core.context import Context
from sluice.core.contract import DATE_PARTS, ROW_OPS, WINDOW_OPS, Contract, Transform, load_contract
from sluice.core.features import latest_vectors, read_parquet
from sluice.core.runtime import dataset_of
from sluice.events.pipeline import DataValidated, FeaturesMaterialized
from sluice.events.s3 import ObjectCreated


def handle(event: ObjectCreated, ctx: Context) -> list[Any]:
    """Materialize the feature set of the dataset's current snapshot."""
    dataset = dataset_of(event.key)
    contract = load_contract(ctx.store, dataset)
    trigger = DataValidated.from_dict(ctx.store.get_json(event.key))
    if not trigger.retrain:
        ctx.log.info("skip  features   %s: data version %s recorded, no retraining (drift.retrain: %s, drift %s)",
                     dataset, trigger.data_version[:12], contract.drift.retrain,
                     "none" if not trigger.drift else f"{trigger.drift['drifted_share']:.0%} of columns")
        return []
    manifests = [DataValidated.from_dict(ctx.store.get_json(k))
                 for k in ctx.store.keys(f"validated/{dataset}/") if k.endswith("/manifest.json")]
    manifests.sort(key=lambda m: m.data_version)
    data_versions = [m.data_version for m in manifests]
    definitions = [t.model_dump(mode="json") for t in contract.features]
    version = feature_set_version(definitions, data_versions, contract)
    base = f"features/{dataset}/{version}"
    if ctx.store.exists(f"{base}/manifest.json"):
        ctx.log.info("same  features   %s: feature set %s exists", dataset, version)
        return []

    frames = [read_parquet(ctx.store, f"validated/{dataset}/{dv}/data.parquet") for dv in data_versions]
    frame = apply_transforms(pl.concat(frames, how="diagonal_relaxed"), contract)
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    ctx.store.put(f"{base}/features.parquet", buffer.getvalue())
    if contract.entity is not None:
        vectors = latest_vectors(frame, contract)
        written = ctx.online.put_many(dataset, version, vectors, contract.entity.timestamp)
        ctx.log.info("wrote online     %s: %d of %d entities updated", dataset, written, len(vectors))
    manifest = FeaturesMaterialized(
        dataset=dataset, feature_set_version=version, data_versions=data_versions,
        sources=[m.source for m in manifests], contract_version=contract.fingerprint(), definitions=definitions,
        rows=frame.height, columns=frame.columns, materialized_at=ctx.timestamp(),
    )
    ctx.store.put_json(f"{base}/manifest.json", manifest.to_dict(), if_absent=True)
    ctx.log.info("wrote features   %s -> feature set %s (%d rows, %d data versions)",
                 dataset, version, frame.height, len(data_versions))
    return []


def feature_set_version(definitions: list[dict[str, Any]], data_versions: list[str], contract: Contract) -> str:
    """Hash of what determines the feature set's content."""
    doc = {"definitions": definitions, "data_versions": data_versions, "target": contract.target,
           "columns": sorted(contract.columns)}
    return "fs-" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def apply_transforms(frame: pl.DataFrame, contract: Contract) -> pl.DataFrame:
    """Add the contract's declared features, in order. Only the operations below exist: no code comes from the bucket.

    Per-entity operations see an entity's events sorted by event time: a window covers (t - days, t], so the
    value at an event never includes later events, and a lag is the value `periods` events earlier.
    """
    if contract.entity is not None:
        frame = frame.sort([contract.entity.key, contract.entity.timestamp])
    for t in contract.features:
        if t.op == "frequency" and contract.entity is not None:
            frame = _frequency_as_of(frame, t, contract.entity.timestamp)
        else:
            frame = frame.with_columns(_expression(t, contract, frame).alias(t.name))
    return frame


def _frequency_as_of(frame: pl.DataFrame, t: Transform, ts: str) -> pl.DataFrame:
    """A category's share among the events up to each event's time: over the whole snapshot it would leak the
    future into every earlier row's feature."""
    col = pl.col(t.columns[0])
    ordered = frame.with_row_index("_sluice_pos").sort(ts, maintain_order=True)
    share = (pl.int_range(pl.len()).over(col) + 1) / (pl.int_range(pl.len()) + 1)
    return ordered.with_columns(share.cast(pl.Float64).alias(t.name)).sort("_sluice_pos").drop("_sluice_pos")


def _expression(t: Transform, contract: Contract, frame: pl.DataFrame) -> pl.Expr:
    col = pl.col(t.columns[0])
    a = col.cast(pl.Float64) if t.op in ROW_OPS or t.op in WINDOW_OPS else col
    b = pl.col(t.columns[-1]).cast(pl.Float64)
    if t.op in ROW_OPS:
        return _row_op(t, a, b)
    if t.op in DATE_PARTS:
        return {"year": col.dt.year(), "month": col.dt.month(), "day": col.dt.day(), "dayofweek": col.dt.weekday(),
                "hour": col.dt.hour()}[t.op].cast(pl.Int32)
    if t.op == "category_code":
        spec = contract.columns[t.columns[0]]
        codes = {c: i for i, c in enumerate(spec.categories or [])}
        return col.replace_strict(codes, default=None, return_dtype=pl.Int32)
    if t.op == "frequency":
        return (pl.len().over(col) / pl.len()).cast(pl.Float64)
    assert contract.entity is not None  # checked when the contract was parsed
    key, ts = contract.entity.key, contract.entity.timestamp
    if t.op == "lag":
        return col.shift(t.periods or 1).over(key)
    window = f"{t.days}d"
    if t.op == "window_count":
        return col.is_not_null().cast(pl.Float64).rolling_sum_by(ts, window_size=window).over(key)
    rolling = {"window_sum": a.rolling_sum_by, "window_mean": a.rolling_mean_by, "window_min": a.rolling_min_by,
               "window_max": a.rolling_max_by}[t.op]
    return rolling(ts, window_size=window).over(key)


def _row_op(t: Transform, a: pl.Expr, b: pl.Expr) -> pl.Expr:
    if t.op == "log1p":
        return a.log1p()
    if t.op == "abs":
        return a.abs()
    if t.op == "square":
        return a * a
    if t.op == "clip":
        return a.clip(t.lower, t.upper)
    if t.op == "add":
        return a + b
    if t.op == "subtract":
        return a - b
    if t.op == "multiply":
        return a * b
    return pl.when(b != 0).then(a / b).otherwise(None)  # divide: a zero divisor gives null, not inf
