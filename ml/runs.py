"""Experiment tracking: finding, comparing and reproducing runs.

A run lives in `runs/<dataset>/<run id>/` (`run.json` plus artifacts named by their sha256). Reproducing a run
does not search again — a time budget is not deterministic (FLAML issue #151) — it replays the search's result:
the best estimator with the best configuration from the trial log, a fixed number of iterations, fitted on the
same training rows (rebuilt from the recorded data versions), then scored on the same holdout rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any

import numpy as np
import polars as pl

from sluice.core import keys
from sluice.core.errors import ContractError, IntegrityError, SluiceError
from sluice.core.ports import ObjectStore
from sluice.events.run import read as read_run
from sluice.ml import leakage, modeling
from sluice.ml.blend import BLEND_JSON
from sluice.ml.contract import Contract, parse_contract
from sluice.ml.features import row_key_columns, training_columns, training_rows

log = logging.getLogger("sluice")

ESTIMATORS = {"lgbm": "LGBMEstimator", "xgboost": "XGBoostSklearnEstimator",
              "xgb_limitdepth": "XGBoostLimitDepthEstimator"}
TOLERANCE = 1e-9


def artifact(store: ObjectStore, run: dict[str, Any], name: str) -> bytes:
    """An artifact's bytes, checked against the sha256 the run recorded; a mismatch is never loaded."""
    meta = run["artifacts"][name]
    data: bytes = store.get(meta["key"])
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise IntegrityError(f"{meta['key']}: sha256 mismatch with run {run['run_id']}; refusing to load it. "
                             "Restore the object from the bucket's version history.")
    return data


def artifact_json(store: ObjectStore, run: dict[str, Any], name: str) -> Any:
    """A JSON artifact, checked."""
    return json.loads(artifact(store, run, name))


def list_runs(store: ObjectStore, dataset: str) -> list[dict[str, Any]]:
    """Finished runs of a dataset, oldest first, plus runs still in progress (from their progress record)."""
    runs, progress = {}, {}
    for key in store.keys(keys.Run.prefix(dataset)):
        run_id = keys.Run.parse(key).run_id
        if key.endswith("/run.json"):
            runs[run_id] = read_run(store.get_json(key))
        elif key.endswith("/progress.json"):
            progress[run_id] = store.get_json(key)
        elif key.endswith("/cancelled.json"):
            progress[run_id] = {**store.get_json(key), "status": "cancelled"}
    out = sorted(runs.values(), key=lambda r: r["finished_at"])
    out += [{"run_id": rid, "dataset": dataset, **p} for rid, p in progress.items() if rid not in runs]
    return out


def find_run(store: ObjectStore, run_id: str) -> dict[str, Any]:
    """A finished run by id (a unique prefix is enough)."""
    matches = [k for k in store.keys(keys.RUNS) if k.endswith("/" + keys.RUN)
               and keys.Run.parse(k).run_id.startswith(run_id)]
    if len(matches) != 1:
        raise SluiceError(f"{'no' if not matches else 'more than one'} finished run matches {run_id!r}; "
                          "list them with `sluice runs list DATASET`")
    return read_run(store.get_json(matches[0]))


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What differs between two runs: metrics, configuration, inputs."""
    metrics = sorted(set(a["holdout"]["metrics"]) | set(b["holdout"]["metrics"]))
    config_keys = sorted(set(a["best_config"]) | set(b["best_config"]))
    return {
        "runs": [a["run_id"], b["run_id"]],
        "metrics": {m: [a["holdout"]["metrics"].get(m), b["holdout"]["metrics"].get(m)] for m in metrics},
        "holdout_rows": [a["holdout"]["rows"], b["holdout"]["rows"]],
        "best_estimator": [a["best_estimator"], b["best_estimator"]],
        "config": {k: [a["best_config"].get(k), b["best_config"].get(k)] for k in config_keys
                   if a["best_config"].get(k) != b["best_config"].get(k)},
        "data_versions": {"only_a": sorted(set(a["data_versions"]) - set(b["data_versions"])),
                          "only_b": sorted(set(b["data_versions"]) - set(a["data_versions"])),
                          "shared": len(set(a["data_versions"]) & set(b["data_versions"]))},
        "label_versions": {"only_a": sorted(set(a.get("label_versions", [])) - set(b.get("label_versions", []))),
                           "only_b": sorted(set(b.get("label_versions", [])) - set(a.get("label_versions", [])))},
        "feature_set_version": [a["feature_set_version"], b["feature_set_version"]],
        "trials": [a.get("trials", {}).get("count"), b.get("trials", {}).get("count")],
        "fit_seconds": [a["durations_s"].get("fit"), b["durations_s"].get("fit")],
    }


def reproduce(store: ObjectStore, run: dict[str, Any]) -> dict[str, Any]:
    """Refit the run's best configuration on its recorded inputs; report whether the holdout metrics match."""
    from flaml.automl import model as flaml_models

    contract = contract_of(store, run)
    frame = training_rows(store, contract, run["feature_set_version"], run.get("label_versions", []))
    spec = contract.training
    # The split the run used: runs recorded before `holdout.split` used version 1.
    version = int(((run.get("holdout") or {}).get("split") or {}).get("version", 1))
    key_frame = frame.select(row_key_columns(contract, frame))
    if version == modeling.SPLIT_VERSION:
        mask, split_keys = modeling.split(key_frame, spec.holdout_fraction, spec.seed)
    else:
        mask, split_keys = modeling.holdout_mask(key_frame, spec.holdout_fraction, spec.seed, version), None
    train_frame = frame.filter(pl.Series(~mask))
    holdout = pl.read_parquet(io.BytesIO(artifact(store, run, "holdout")))
    from sluice.ml.bundle import load_run

    # The stored model's own column order (older runs stored their encoding with sorted keys).
    encoding = load_run(store, run).encoding
    excluded = leakage.excluded(run.get("leakage"))  # left out as leaks, with what is derived from them
    rebuilt = modeling.Encoding.fit(train_frame, contract, exclude=[*training_columns(contract), *excluded])
    if rebuilt.with_order(encoding.columns) != encoding:
        raise SluiceError(f"run {run['run_id']}: the recorded inputs no longer give the same training rows "
                          "(the encoding differs); were data versions deleted?")
    learner = run["best_estimator"]
    estimator_cls = (modeling.CUSTOM_LEARNERS[learner]() if learner in modeling.CUSTOM_LEARNERS
                     else getattr(flaml_models, ESTIMATORS[learner]))
    task = "regression" if contract.task == "regression" else "classification"
    X_train, y_train = encoding.features(train_frame), encoding.labels(train_frame)
    search = run.get("search") or {}
    blended = run.get("model_format") == BLEND_JSON  # the blend fitted its members on every training row
    if search.get("validation") and not blended:  # FLAML validated on some of train's rows; the model saw the rest
        recorded_split = {k: search["validation"].get(k) for k in ("method", "version", "fraction", "rare_class_rows")}
        if split_keys is None or recorded_split != {
                "method": "row-hash-band", "version": modeling.SPLIT_VERSION,
                "fraction": modeling.SEARCH_VALIDATION_FRACTION, "rare_class_rows": modeling.RARE_CLASS_ROWS}:
            raise SluiceError(f"run {run['run_id']}: its search validated on a split this Sluice does not make "
                              f"({recorded_split}); reproduce it with the Sluice version that trained it")
        validation = modeling.search_validation(split_keys[~mask], y_train, spec.holdout_fraction, encoding.classes)
        X_train, y_train = X_train[~validation], y_train[~validation]
    jobs = modeling.worker_jobs(spec.n_jobs, X_train.shape[0] * max(X_train.shape[1], 1))
    # The rounds the judged model ran, when FLAML stopped its trial's boosting early for the budget.
    config = run["best_config"] | ({"n_estimators": search["rounds"]} if search.get("rounds") else {})
    estimator = estimator_cls(task=task, n_jobs=jobs, **config)
    estimator.fit(X_train, y_train)
    y = encoding.labels(holdout)
    known = y >= 0
    X = encoding.features(holdout.filter(pl.Series(known)))
    if contract.task == "regression":
        scores = np.asarray(estimator.predict(X))
    else:
        proba = np.asarray(estimator.predict_proba(X))
        scores = proba[:, 1] if contract.task == "binary" else proba
    n_classes = len(encoding.classes) if encoding.classes else None
    metrics = modeling.holdout_metrics(contract.task, y[known], scores, n_classes)
    recorded = run["holdout"]["metrics"]
    if run.get("model_format") == BLEND_JSON:
        # A blend shipped: what is refitted here is its search's winner, whose holdout score the blend recorded.
        single = ((run.get("blend") or {}).get("holdout") or {}).get(run["best_estimator"])
        recorded = {run["metric"]: single} if single is not None else {}
    diffs = {m: abs(metrics[m] - recorded[m]) for m in metrics if m in recorded}
    return {"run_id": run["run_id"], "recorded": recorded, "reproduced": metrics,
            "max_abs_difference": max(diffs.values()) if diffs else None,
            "match": bool(diffs) and all(d <= TOLERANCE for d in diffs.values()),
            "train_rows": train_frame.height, "holdout_rows": holdout.height,
            "estimator": run["best_estimator"], "config": run["best_config"]}


def contract_of(store: ObjectStore, run: dict[str, Any]) -> Contract:
    """The contract version the run was trained under (kept under contract-versions/), else the current one."""
    dataset = run["dataset"]
    for key in store.keys(f"contract-versions/{dataset}/"):
        try:
            contract = parse_contract(store.get(key), source=key)
        except ContractError as exc:  # not a contract: it cannot be the one sought, and must not hide it
            log.warning("skipped %s: %s", key, str(exc).splitlines()[0])
            continue
        if contract.fingerprint() == run["contract_version"]:
            return contract
    current = parse_contract(store.get(keys.Contract(dataset).key))
    if current.fingerprint() != run["contract_version"]:
        raise SluiceError(f"run {run['run_id']} was trained under contract {run['contract_version'][:12]}, which "
                          "is no longer stored; upload it again with `sluice contract put` to reproduce the run")
    return current
