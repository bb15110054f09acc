"""Stage 3: a feature set is trained on with FLAML AutoML (LightGBM) and tracked as a run.

    features/<dataset>/<fsv>/manifest.json          ->  runs/<dataset>/<run id>/{model-*.txt, ..., run.json}
    validated-labels/<dataset>/<lv>/manifest.json   ->  (the same, for datasets whose labels arrive separately)

With separate labels, the training set is the point-in-time join of every label so far with the latest
feature set (core/features.py), so either a new feature set or new labels start a run.

Artifacts are named by their sha256, so two concurrent deliveries never overwrite each other's files; the
run document is a conditional write, so only one of them becomes the run.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import time
from importlib import metadata
from typing import Any

import polars as pl

from sluice.core import modeling
from sluice.core.context import Context
from sluice.core.contract import Contract, load_contract
from sluice.core.drift import reference_profile
from sluice.core.errors import Failure, ValidationFailed
from sluice.core.features import (
    label_versions,
    latest_feature_set,
    point_in_time_join,
    read_labels,
    read_parquet,
    row_key_columns,
    training_columns,
)
from sluice.core.runtime import dataset_of
from sluice.events.pipeline import DataValidated, FeaturesMaterialized
from sluice.events.s3 import ObjectCreated

MIN_TRAIN_ROWS = 20
PACKAGES = ("flaml", "lightgbm", "polars", "pandera", "scikit-learn", "numpy", "pandas", "dramatiq", "boto3")


def handle(event: ObjectCreated, ctx: Context) -> list[Any]:
    """Train on one feature set, once."""
    t0 = time.perf_counter()
    dataset = dataset_of(event.key)
    contract = load_contract(ctx.store, dataset)
    inputs = _inputs(ctx, contract, event.key)
    if inputs is None:
        return []
    features, labels = inputs
    label_versions = [lv.data_version for lv in labels]
    run_id = "run-" + hashlib.sha256(json.dumps(
        {"fsv": features.feature_set_version, "training": contract.training.model_dump(mode="json"),
         "target": contract.target, "task": contract.task, "metric": contract.metric,
         **({"labels": label_versions} if contract.labels else {})}, sort_keys=True,
    ).encode()).hexdigest()[:12]
    base = f"runs/{dataset}/{run_id}"
    if ctx.store.exists(f"{base}/run.json"):
        ctx.log.info("same  train      %s already trained on %s", run_id, features.feature_set_version)
        return []

    frame = read_parquet(ctx.store, f"features/{dataset}/{features.feature_set_version}/features.parquet")
    if contract.labels is not None:
        frame = point_in_time_join(read_labels(ctx.store, dataset, label_versions), frame, contract)
    frame = frame.filter(pl.col(contract.target).is_not_null())
    spec = contract.training
    mask = modeling.holdout_mask(frame.select(row_key_columns(contract, frame)), spec.holdout_fraction, spec.seed)
    train_frame, holdout = frame.filter(pl.Series(~mask)), frame.filter(pl.Series(mask))
    encoding = modeling.Encoding.fit(train_frame, contract, exclude=training_columns(contract))
    if train_frame.height < MIN_TRAIN_ROWS or holdout.height == 0 or (encoding.classes and len(encoding.classes) < 2):
        raise ValidationFailed(
            f"dataset {dataset!r} has {frame.height} labelled rows ({train_frame.height} for training, "
            f"{holdout.height} held out){'' if not encoding.classes else f' and classes {encoding.classes}'}: "
            "too little to train and evaluate a model.",
            hint=f"Drop more rows (at least {MIN_TRAIN_ROWS * 2}, with every class represented).",
            failures=[Failure(contract.target, "enough labelled rows to train", value=frame.height)],
        )
    t_prep = time.perf_counter()
    trained = modeling.train(encoding.features(train_frame), encoding.labels(train_frame), contract)
    t_fit = time.perf_counter()

    y_holdout = encoding.labels(holdout)
    known = y_holdout >= 0  # rows of a class never seen in training cannot be scored by this model
    holdout_scored = holdout.filter(pl.Series(known))
    scores = modeling.predict(trained.booster_text, encoding.features(holdout_scored))
    n_classes = len(encoding.classes) if encoding.classes else None
    metric = modeling.score(contract.metric, y_holdout[known], scores, n_classes)
    baseline = modeling.score(
        contract.metric, y_holdout[known],
        modeling.baseline_scores(encoding.labels(train_frame), int(known.sum()), contract.task, n_classes), n_classes)

    artifacts = {}
    holdout_bytes = io.BytesIO()
    holdout.write_parquet(holdout_bytes)
    for stem, ext, data in (
        ("model", "txt", trained.booster_text.encode()),
        ("holdout", "parquet", holdout_bytes.getvalue()),
        ("encoding", "json", json.dumps(encoding.to_dict(), sort_keys=True).encode()),
        ("trials", "jsonl", trained.trial_log.encode()),
        # What drift of later data is measured against, should this run become the champion.
        ("profile", "json", json.dumps(reference_profile(train_frame, exclude=(contract.target,))).encode()),
    ):
        sha = hashlib.sha256(data).hexdigest()
        key = f"{base}/{stem}-{sha[:12]}.{ext}"
        ctx.store.put(key, data)
        artifacts[stem] = {"key": key, "sha256": sha, "bytes": len(data)}
    t_done = time.perf_counter()
    run = {
        "run_id": run_id,
        "dataset": dataset,
        "model": contract.model,
        "task": contract.task,
        "metric": contract.metric,
        "feature_set_version": features.feature_set_version,
        "data_versions": features.data_versions,
        "label_versions": label_versions,
        "sources": features.sources,
        "contract_version": contract.fingerprint(),
        "params": contract.training.model_dump(mode="json"),
        "best_estimator": trained.best_estimator,
        "best_config": trained.best_config,
        "best_loss": trained.best_loss,
        "holdout": {"rows": holdout.height, "scored_rows": int(known.sum()), "train_rows": train_frame.height,
                    "fraction": spec.holdout_fraction, "seed": spec.seed,
                    "metrics": {contract.metric: metric}, "baseline": {contract.metric: baseline}},
        "artifacts": artifacts,
        "durations_s": {"prepare": round(t_prep - t0, 3), "fit": round(t_fit - t_prep, 3),
                        "evaluate_and_store": round(t_done - t_fit, 3), "total": round(t_done - t0, 3)},
        "environment": {"python": platform.python_version(),
                        "packages": {p: _version(p) for p in PACKAGES}},
        "finished_at": ctx.timestamp(),
    }
    if ctx.store.put_json(f"{base}/run.json", run, if_absent=True):
        ctx.log.info("wrote train      %s: %s %s=%.4f (naive baseline %.4f), fit %.1fs",
                     run_id, trained.best_estimator, contract.metric, metric, baseline, t_fit - t_prep)
    return []


def _inputs(ctx: Context, contract: Contract, key: str
            ) -> tuple[FeaturesMaterialized, list[DataValidated]] | None:
    """The feature set and label versions a run trains on, or None when one side has not arrived yet."""
    dataset = contract.dataset
    if key.startswith("features/"):
        features: FeaturesMaterialized | None = FeaturesMaterialized.from_dict(ctx.store.get_json(key))
    else:
        features = latest_feature_set(ctx.store, dataset)
    if features is None:
        ctx.log.info("wait  train      %s: labels arrived, no feature set yet", dataset)
        return None
    if contract.labels is None:
        return features, []
    labels = label_versions(ctx.store, dataset)
    if not labels:
        ctx.log.info("wait  train      %s: feature set %s ready, no labels yet", dataset, features.feature_set_version)
        return None
    return features, labels


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
