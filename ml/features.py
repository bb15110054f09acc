"""The offline and online sides of the feature store: point-in-time training sets, latest vectors per entity.

A training set for a dataset whose labels arrive separately is an as-of join: for each label (entity, label
time, target), the entity's latest feature row strictly before the label time, and not older than the
contract's TTL. Strictly before, because a feature row stamped at the label's own instant may already
include the outcome being predicted.
"""

from __future__ import annotations

import io
import logging
from datetime import timedelta
from typing import Any

import polars as pl

from sluice.core import keys
from sluice.core.ports import ObjectStore, newest_group
from sluice.events.pipeline import DataValidated, FeaturesMaterialized
from sluice.ml.contract import ColumnSpec, Contract

FEATURE_TIME = "_feature_time"  # the event time of the feature row a label was joined to


def label_contract(contract: Contract) -> Contract:
    """What a label file must look like: entity key, label time and target."""
    assert contract.entity is not None and contract.labels is not None
    ts_type = contract.columns[contract.entity.timestamp].dtype
    return contract.model_copy(update={
        "columns": {
            contract.entity.key: contract.columns[contract.entity.key],
            contract.labels.timestamp: ColumnSpec(dtype=ts_type),
            contract.target: contract.labels.target,
        },
        "labels": None, "entity": None, "features": [],
    })


def point_in_time_join(labels: pl.DataFrame, features: pl.DataFrame, contract: Contract) -> pl.DataFrame:
    """Each label with the entity's latest feature row from strictly before the label time, within the TTL."""
    assert contract.entity is not None and contract.labels is not None
    key, ts, label_ts = contract.entity.key, contract.entity.timestamp, contract.labels.timestamp
    ttl = contract.labels.ttl_days
    right = features.drop(contract.target, strict=False).rename({ts: FEATURE_TIME}).sort(FEATURE_TIME)
    left = labels.with_row_index("_label_row").sort(label_ts)
    joined = left.join_asof(
        right, left_on=label_ts, right_on=FEATURE_TIME, by=key, strategy="backward",
        tolerance=timedelta(days=ttl) if ttl else None, allow_exact_matches=False, check_sortedness=False,
    )
    return joined.sort("_label_row").drop("_label_row")


def training_columns(contract: Contract) -> list[str]:
    """Columns that identify a row or a time, never model input."""
    if contract.entity is None:
        return []
    out = [contract.entity.key, contract.entity.timestamp, FEATURE_TIME]
    if contract.labels is not None:
        out.append(contract.labels.timestamp)
    return out


def row_key_columns(contract: Contract, frame: pl.DataFrame) -> list[str]:
    """What identifies a training row, for the holdout split: stable across feature set versions."""
    if contract.entity is not None and contract.labels is not None:
        return [contract.entity.key, contract.labels.timestamp, contract.target]
    raw = [c for c in contract.columns if c in frame.columns]
    return raw or frame.columns


def latest_feature_set(store: ObjectStore, dataset: str) -> FeaturesMaterialized | None:
    """The most recently materialized feature set of the dataset."""
    # The newest manifests by the listing's times (a manifest is written once, as its set is materialized), then
    # their own times: a GET or two, where reading every feature set made each train stage slower than the last.
    docs = [FeaturesMaterialized.from_dict(store.get_json(o.key))
            for o in newest_group(store, keys.FeatureSet.prefix(dataset), "/manifest.json")]
    return max(docs, key=lambda d: (d.materialized_at, len(d.data_versions)), default=None)


def label_versions(store: ObjectStore, dataset: str) -> list[DataValidated]:
    """Every validated label file of the dataset, by data version."""
    docs = [DataValidated.from_dict(store.get_json(k))
            for k in store.keys(keys.Validated.prefix(dataset, labels=True)) if k.endswith("/manifest.json")]
    return sorted(docs, key=lambda d: d.data_version)


def read_parquet(store: ObjectStore, key: str) -> pl.DataFrame:
    """A Parquet object as a frame."""
    return pl.read_parquet(io.BytesIO(store.get(key)))


def read_labels(store: ObjectStore, dataset: str, versions: list[str]) -> pl.DataFrame:
    """The rows of the given label versions."""
    frames = [read_parquet(store, keys.Validated(dataset, v, keys.DATA, labels=True).key) for v in versions]
    return pl.concat(frames, how="diagonal_relaxed")


def training_rows(store: ObjectStore, contract: Contract, feature_set_version: str,
                  label_ids: list[str]) -> pl.DataFrame:
    """The labelled rows a run learns from: the feature set, or its point-in-time join with the labels."""
    frame = read_parquet(store, keys.FeatureSet(contract.dataset, feature_set_version, "features.parquet").key)
    if contract.labels is not None:
        frame = point_in_time_join(read_labels(store, contract.dataset, label_ids), frame, contract)
    frame = frame.filter(pl.col(contract.target).is_not_null())
    limit = contract.limits.max_training_rows
    if frame.height > limit:
        # A seeded sample: the same snapshot always gives the same training rows (`runs reproduce` relies on it).
        logging.getLogger("sluice").warning(
            "train %s: %d labelled rows, over limits.max_training_rows %d; training on a seeded sample of %d",
            contract.dataset, frame.height, limit, limit)
        frame = frame.sample(n=limit, seed=contract.training.seed)
    return frame


def latest_vectors(features: pl.DataFrame, contract: Contract) -> dict[str, dict[str, Any]]:
    """The newest feature row of every entity, JSON-safe, for the online store."""
    assert contract.entity is not None
    key, ts = contract.entity.key, contract.entity.timestamp
    latest = features.sort(ts).group_by(key, maintain_order=True).last()
    out = {}
    for row in latest.iter_rows(named=True):
        entity = str(row.pop(key))
        out[entity] = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
    return out
