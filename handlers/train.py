"""Stage 3: continuous training. A feature set (or new labels) is trained on with FLAML and tracked as a run.

    features/<dataset>/<fsv>/manifest.json          ->  runs/<dataset>/<run id>/{model-*, ..., run.json}
    validated-labels/<dataset>/<lv>/manifest.json   ->  (the same, for datasets whose labels arrive separately)

- Coalescing: a run trains only on the dataset's latest inputs, and only once they have been quiet for the
  contract's `debounce_s`; earlier triggers are superseded, so many drops in a burst make one run.
- Deterministic holdout: a row's side depends only on its identity (ml/features.row_key_columns).
- Warm start: the search starts from the champion's best configuration; the run records whether FLAML used it.
- Artifacts are named by their sha256, so concurrent deliveries never overwrite each other's files, and the run
  document is a conditional write, so only one of them becomes the run.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import io
import json
import os
import platform
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sluice.core import keys, tracing
from sluice.core.context import Context
from sluice.core.errors import Defer, Failure, IntegrityError, ValidationFailed
from sluice.core.ports import newest_group
from sluice.core.runtime import dataset_of
from sluice.events.pipeline import DataValidated, FeaturesMaterialized
from sluice.events.run import TrainingRun
from sluice.events.s3 import ObjectCreated
from sluice.ml import bundle, leakage, modeling
from sluice.ml.blend import BLEND_JSON, BLENDABLE, FEWER_FOLDS
from sluice.ml.blend import build as build_blend
from sluice.ml.contract import Contract, load_contract
from sluice.ml.drift import reference_profile
from sluice.ml.features import (
    label_versions,
    latest_feature_set,
    row_key_columns,
    training_columns,
    training_rows,
)
from sluice.ml.registry import ModelRegistry
from sluice.ml.transforms import frequency_tables

MIN_TRAIN_ROWS = 20
PACKAGES = ("flaml", "lightgbm", "xgboost", "polars", "pandera", "scikit-learn", "numpy", "pandas", "dramatiq",
            "boto3")


def handle(event: ObjectCreated, ctx: Context) -> list[Any]:
    """Train on the dataset's latest inputs, once, after the debounce window."""
    t0 = time.perf_counter()
    dataset = dataset_of(event.key)
    contract = load_contract(ctx.store, dataset, ctx.extensions)
    inputs = _inputs(ctx, contract, event.key)
    if inputs is None:
        return []
    features, labels = inputs
    if not _coalesce(ctx, contract, features, labels, event.key):
        return []
    label_ids = [lv.data_version for lv in labels]
    spec = contract.training
    run_id = "run-" + hashlib.sha256(json.dumps(
        {"fsv": features.feature_set_version, "training": spec.model_dump(mode="json", exclude={"debounce_s"}),
         "target": contract.target, "task": contract.task, "metric": contract.metric,
         **({"labels": label_ids} if contract.labels else {})}, sort_keys=True,
    ).encode()).hexdigest()[:12]
    base = keys.Run.prefix(dataset, run_id)
    if ctx.store.exists(f"{base}run.json") or ctx.store.exists(f"{base}cancelled.json"):
        ctx.log.info("same  train      %s already trained on %s", run_id, features.feature_set_version)
        return []
    # One training at a time in this worker (modeling.ONE_SEARCH says why). A training that finds another one
    # running goes back to the queue at once, for any worker: waiting here held a worker thread for the other's whole
    # budget, and the worker's validation and features stalled behind it.
    waiting = time.perf_counter()
    if not modeling.ONE_SEARCH.acquire(timeout=TURN_WAIT_S):
        again_s = turn_retry_s(spec.time_budget_s)
        ctx.log.info("wait  train      %s: another training is running in this worker; back to the queue, again in "
                     "%.0fs", dataset, again_s)
        raise Defer(again_s, f"another training is running in this worker; {dataset} goes back to the queue")
    try:
        waited = time.perf_counter() - waiting
        if waited > 1:
            ctx.log.info("wait  train      %s: waited %.1fs for another training in this worker", dataset, waited)
        return _prepare_and_train(ctx, contract, features, labels, label_ids, run_id, base, t0 + waited)
    finally:
        modeling.ONE_SEARCH.release()


# Threads a training issues requests from besides its own (infra/aws.py sizes the S3 client's connections to them).
SIDE_THREADS = 4
UPLOAD_THREADS = 8
TURN_WAIT_S = 1.0  # how long a training waits for the worker's running one before going back to the queue


def turn_retry_s(budget_s: float) -> float:
    """When a training that found another one running is tried again: a quarter of its budget, 5 s to a minute."""
    return min(max(budget_s / 4, 5.0), 60.0)


def _prepare_and_train(ctx: Context, contract: Contract, features: FeaturesMaterialized, labels: list[DataValidated],
                       label_ids: list[str], run_id: str, base: str, t0: float) -> list[Any]:
    """The rows, their split and encoding, then the run (`t0`: the stage's start, less any wait for its turn)."""
    spec = contract.training
    with ThreadPoolExecutor(SIDE_THREADS, thread_name_prefix="train-side") as side:
        # The champion's configuration, read from the registry while the rows are read and split.
        warm_future = side.submit(contextvars.copy_context().run, _warm_start, ctx, contract)
        frame = training_rows(ctx.store, contract, features.feature_set_version, label_ids)
        mask, split_keys = modeling.split(frame.select(row_key_columns(contract, frame)), spec.holdout_fraction,
                                          spec.seed)
        train_frame, holdout = frame.filter(pl.Series(~mask)), frame.filter(pl.Series(mask))
        encoding = modeling.Encoding.fit(train_frame, contract, exclude=training_columns(contract))
        if train_frame.height < MIN_TRAIN_ROWS or holdout.height == 0 or (
                encoding.classes and len(encoding.classes) < 2):
            raise _too_little(contract, frame, train_frame.height, holdout.height, encoding.classes, split_keys,
                              features, label_ids, run_id)
        return _train(ctx, contract, features, labels, label_ids, run_id, base, frame, train_frame, holdout, encoding,
                      split_keys[~mask], side, t0, warm_future)


def _too_little(contract: Contract, frame: pl.DataFrame, train_rows: int, held_out: int, classes: list[Any] | None,
                split_keys: np.ndarray, features: FeaturesMaterialized, label_ids: list[str],
                run_id: str) -> ValidationFailed:
    """Why these rows cannot make a run, as the quarantine tells it. The holdout keeps identical rows together (a
    row's side is the hash of its contents): many rows that repeat a few are, for the split, those few, and the
    message says so rather than ask for rows the user already dropped. The report names the feature set (and
    label versions) it was about: `sluice status` shows it on the line of each drop in that set."""
    dataset = contract.dataset
    with_classes = "" if not classes else f" and classes {classes}"
    distinct = int(np.unique(split_keys).size) if frame.height else 0
    if distinct < frame.height and distinct < MIN_TRAIN_ROWS * 2:
        inputs = [c for c in row_key_columns(contract, frame) if c != contract.target]
        rows = frame.select(inputs).n_unique() if inputs else distinct
        plural = "" if rows == 1 else "s"
        message = (f"dataset {dataset!r} has {frame.height} labelled rows but only {distinct} distinct "
                   f"({rows} distinct row{plural} of features){with_classes}: the holdout keeps identical rows "
                   f"together (a row's side is the hash of its contents), so {train_rows} went to training and "
                   f"{held_out} were held out: too little to train and evaluate a model.")
        hint = (f"Drop rows that differ (at least {MIN_TRAIN_ROWS * 2} distinct rows, with every class "
                "represented); repeating rows adds nothing to hold out.")
    else:
        message = (f"dataset {dataset!r} has {frame.height} labelled rows ({train_rows} for training, {held_out} "
                   f"held out){with_classes}: too little to train and evaluate a model.")
        hint = f"Drop more rows (at least {MIN_TRAIN_ROWS * 2}, with every class represented)."
    return ValidationFailed(
        message, hint=hint,
        failures=[Failure(contract.target, "enough labelled rows to train", value=frame.height)],
        details={"feature_set_version": features.feature_set_version, "data_versions": features.data_versions,
                 "label_versions": label_ids, "run_id": run_id, "rows": frame.height, "distinct_rows": distinct},
    )


def _train(ctx: Context, contract: Contract, features: FeaturesMaterialized, labels: list[DataValidated],
           label_ids: list[str], run_id: str, base: str, frame: pl.DataFrame, train_frame: pl.DataFrame,
           holdout: pl.DataFrame, encoding: modeling.Encoding, train_keys: np.ndarray, side: ThreadPoolExecutor,
           t0: float, warm_future: Future[dict[str, dict[str, Any]] | None]) -> list[Any]:
    """The run itself. Work the search does not need (the drift profile, the holdout's Parquet, the category
    frequencies, the leakage check unless it decides the columns, the refit's encoded rows, the plots and their
    uploads) runs on `side`, beside the search and the refit: on data where a fit uses one thread, the worker's
    other core is idle there (benchmarks/training_overhead.py). Every result is awaited before the run document
    is written."""
    spec, dataset = contract.training, contract.dataset

    stage_context = contextvars.copy_context()

    def beside(fn: Any, *args: Any) -> Future[Any]:
        # In the stage's trace and log context, also when called from the search's watcher thread.
        return side.submit(stage_context.copy().run, fn, *args)

    cells = train_frame.height * max(len(encoding.columns), 1)
    overlap = modeling.worker_jobs(spec.n_jobs, cells) < (os.cpu_count() or 1)
    t_leak = time.perf_counter()
    leak_beside = overlap and spec.leakage != "exclude"  # only `exclude` changes what the search trains on
    if not leak_beside:
        leaks, encoding = _check_leakage(ctx, contract, train_frame, encoding)
    leak_s = time.perf_counter() - t_leak
    starting_points = warm_future.result()
    t_prep = time.perf_counter()
    futures: dict[str, Future[Any]] = {}

    def start_side_work() -> None:
        """Submitted once the search has its first model (modeling.train's `on_search_start`): before, on a
        worker's two cores, this work slowed the encoding the search waits for (0.5 s at 100,000 rows, at load
        8), and at the search's start it cost 1 s budgets their first trial under load."""
        if leak_beside:
            futures["leak"] = beside(_check_leakage, ctx, contract, train_frame, encoding)
        futures["profile"] = beside(
            lambda: json.dumps(reference_profile(train_frame, exclude=(contract.target,))).encode())
        futures["holdout"] = beside(_parquet, holdout)
        futures["frequencies"] = beside(frequency_tables, frame, contract)
        futures["contract_yaml"] = beside(lambda: contract.to_yaml().encode())  # both bundles' copy
        if spec.refit:
            futures["refit_input"] = beside(modeling.refit_input, frame, encoding)

    def progress(p: modeling.Progress) -> None:
        ctx.store.put_json(f"{base}progress.json", {"run_id": run_id, "status": "running", "trials": p.trials,
                                                     "best_loss": p.best_loss, "elapsed_s": round(p.elapsed_s, 1),
                                                     "budget_s": spec.time_budget_s, "at": ctx.timestamp()})
        ctx.log.info("train %s: %d trials, best loss %s after %.0fs of %gs", run_id, p.trials,
                     "-" if p.best_loss is None else f"{p.best_loss:.4f}", p.elapsed_s, spec.time_budget_s)

    blending = _blends(contract)
    search_s = _search_budget(spec.time_budget_s, leak_s, blending)
    try:
        validation = modeling.search_validation(train_keys, encoding.labels(train_frame), spec.holdout_fraction,
                                                encoding.classes)
        trained = modeling.train(train_frame, encoding, contract, starting_points=starting_points,
                                 time_budget_s=search_s, validation=validation,
                                 on_progress=progress, should_cancel=lambda: ctx.store.exists(f"{base}cancel.json"),
                                 extensions=ctx.extensions, on_search_start=start_side_work)
    except modeling.TrainingCancelled:
        ctx.store.put_json(f"{base}cancelled.json", {"run_id": run_id, "at": ctx.timestamp()}, if_absent=True)
        ctx.log.warning("cancelled train %s on request", run_id)
        return []
    t_fit = time.perf_counter()
    if "leak" in futures:
        leaks, _ = futures["leak"].result()
        leak_s = time.perf_counter() - t_fit  # what the stage waited for it after the search
    trials = modeling.parse_trials(trained.trial_log)
    plots_future = beside(lambda: (plot_loss_curve(trials, run_id), plot_importance(trained.feature_importance,
                                                                                    run_id)))
    # What is left of the budget after the search (and the checks before it) is the blend's and the refit's.
    left_s = spec.time_budget_s * STAGE_SHARE - leak_s - (t_fit - t_prep)
    chosen, blend_record = _blend(contract, trained, train_frame, holdout, encoding, left_s) if blending else (
        None, None)
    blend_fit_s = time.perf_counter() - t_fit  # model work: the blend's out-of-fold fits
    if chosen is not None:
        model_bytes, members = modeling.export_blend(chosen, contract.task, ctx.extensions)
        modeling.check_blend(model_bytes, members, chosen, train_frame, encoding, contract.task, ctx.extensions)
        model_format: str = BLEND_JSON
    else:
        model_bytes, model_format, members = trained.model_bytes, trained.model_format, {}
    t_blend = time.perf_counter()

    # The bundle is what every loader reads; the holdout is scored through it, exactly as the gate and users will.
    manifest_bytes, files = bundle.bundle_files(
        contract=contract, encoding=encoding, model_bytes=model_bytes, model_format=model_format,
        frequencies=futures["frequencies"].result(), run_id=run_id, members=members,
        contract_yaml=futures["contract_yaml"].result())
    manifest_key = f"{base}bundle/manifest-{bundle.sha256(manifest_bytes)[:12]}.json"
    n_classes = len(encoding.classes) if encoding.classes else None

    def evaluate() -> tuple[np.ndarray, dict[str, float], np.ndarray, dict[str, float]]:
        """The holdout scored through the stored bundle, the naive baseline's scores, and the bundle's uploads."""
        loaded = bundle.model_from_files(manifest_bytes, files, extensions=ctx.extensions)
        y_holdout = encoding.labels(holdout)
        known = y_holdout >= 0  # rows of a class never seen in training cannot be scored by this model
        scores = loaded.score_features(holdout.filter(pl.Series(known)))
        metrics = modeling.holdout_metrics(contract.task, y_holdout[known], scores, n_classes)
        baseline_scores = modeling.baseline_scores(encoding.labels(train_frame), int(known.sum()), contract.task,
                                                   n_classes)
        baseline = modeling.holdout_metrics(contract.task, y_holdout[known], baseline_scores, n_classes)
        _put_many(ctx, [(f"{base}bundle/{name}", data) for name, data in files.items()])
        ctx.store.put(manifest_key, manifest_bytes)
        return known, metrics, baseline_scores, baseline

    # Beside the refit, as the artifacts below: its fit leaves the other core idle on data this size.
    evaluated_future = beside(evaluate)
    listing = json.loads(manifest_bytes)["files"]
    artifacts = {role: {"key": f"{base}bundle/{listing[role]['path']}", "sha256": listing[role]["sha256"],
                        "bytes": listing[role]["bytes"]} for role in ("model", "encoding")}
    artifacts["model"]["format"] = model_format
    for r in members:
        artifacts[r] = {"key": f"{base}bundle/{listing[r]['path']}", "sha256": listing[r]["sha256"],
                        "bytes": listing[r]["bytes"], "format": listing[r]["format"]}

    def store_artifacts() -> dict[str, dict[str, Any]]:
        loss_curve, importance = plots_future.result()
        return _store_artifacts(ctx, base, [
            ("holdout", "parquet", futures["holdout"].result()),
            ("trials", "jsonl", trained.trial_log.encode()),
            # What drift of later data is measured against, should this run become the champion.
            ("profile", "json", futures["profile"].result()),
            ("loss_curve", "png", loss_curve),
            ("importance", "png", importance),
        ])

    stored_future = beside(store_artifacts)  # beside the refit
    t_refit = time.perf_counter()
    # The refit's share of the budget: what the checks, the search and the blend left (their I/O is not counted).
    refit_left_s = spec.time_budget_s * STAGE_SHARE - leak_s - (t_blend - t_prep)
    refit, refit_skipped = _refit(ctx, contract, frame, encoding, trained, base, run_id, chosen, refit_left_s,
                                  futures["frequencies"].result(), futures.get("refit_input"),
                                  futures["contract_yaml"].result(), train_frame.height)
    refit_s = time.perf_counter() - t_refit
    artifacts |= stored_future.result()
    known, metrics, baseline_scores, baseline = evaluated_future.result()
    t_done = time.perf_counter()
    run = {
        "run_id": run_id,
        "dataset": dataset,
        "model": contract.model,
        "task": contract.task,
        "metric": contract.metric,
        "feature_set_version": features.feature_set_version,
        "data_versions": features.data_versions,
        "label_versions": label_ids,
        "sources": features.sources,
        "contract_version": contract.fingerprint(),
        "params": spec.model_dump(mode="json"),
        "best_estimator": trained.best_estimator,
        "best_config": trained.best_config,
        "best_loss": trained.best_loss,
        "best_loss_per_learner": trained.learner_losses,
        # The rows FLAML validated on and fitted the judged model on, when they were not all of train's.
        **({"search": trained.search} if trained.search else {}),
        "model_format": model_format,
        # The blend of each learner's best model: its weights, why it ships or not (ml/blend.py).
        **({"blend": blend_record} if blend_record else {}),
        "trials": {"count": len(trials), "best_loss_curve": _best_so_far(trials)},
        "warm_start": trained.warm_start,
        "leakage": leaks,
        "feature_importance": dict(list(trained.feature_importance.items())[:50]),
        "training_rows_limit": contract.limits.max_training_rows,
        "holdout": {"rows": holdout.height, "scored_rows": int(known.sum()), "train_rows": train_frame.height,
                    "fraction": spec.holdout_fraction, "seed": spec.seed, "metrics": metrics, "baseline": baseline,
                    # How rows were split (ml/modeling.SPLIT_VERSION): what `runs reproduce` recomputes.
                    "split": {"method": "row-hash", "version": modeling.SPLIT_VERSION},
                    # The naive model's (constant) prediction, so the gate can bootstrap against it.
                    "baseline_row": np.asarray(baseline_scores[0] if len(baseline_scores) else []).tolist()},
        "artifacts": artifacts,
        "bundle": {"key": manifest_key, "sha256": bundle.sha256(manifest_bytes), "uri": ctx.store.uri(manifest_key)},
        # The same configuration fitted on train + holdout: what the version ships (the gate judges `bundle`).
        **({"refit": refit} if refit else {}),
        **({"refit_skipped": refit_skipped} if refit_skipped else {}),
        "durations_s": {"prepare": round(t_prep - t0, 3), "fit": round(t_fit - t_prep, 3),
                        "flaml_fit": round(trained.fit_seconds, 3), "search_budget": round(search_s, 3),
                        "blend": round(t_blend - t_fit, 3), "leakage_check": round(leak_s, 3),
                        "refit_and_store": round(refit_s, 3),
                        # Model work besides the search (benchmarks/training_overhead.py counts the rest as the
                        # framework's): the blend's fits, and the refit's own fit.
                        "blend_fit": round(blend_fit_s, 3), "refit_fit": round(refit["fit_s"] if refit else 0.0, 3),
                        "evaluate_and_store": round(t_done - t_fit, 3), "total": round(t_done - t0, 3)},
        "environment": {"python": platform.python_version(), "platform": platform.platform(),
                        "packages": {p: _version(p) for p in PACKAGES}, "code": code_version()},
        "finished_at": ctx.timestamp(),
        # The drop whose arrival made this run: the feature set's, or the label file's when new labels woke it.
        "trace_id": tracing.current().get("trace_id") or features.trace_id,
        "trace_links": _trace_links(ctx, dataset, features, labels),
    }
    # Written through its type (events/run.py): what every reader parses it back with.
    if ctx.store.put_json(keys.Run(dataset, run_id).key, TrainingRun.model_validate(run).to_dict(), if_absent=True):
        ctx.store.put_json(f"{base}progress.json", {"run_id": run_id, "status": "finished", "trials": len(trials),
                                                     "best_loss": trained.best_loss, "at": ctx.timestamp()})
        ctx.log.info("wrote train      %s: %s %s=%.4f (naive baseline %.4f), %d trials, fit %.1fs%s",
                     run_id, trained.best_estimator, contract.metric, metrics[contract.metric],
                     baseline[contract.metric], len(trials), t_fit - t_prep,
                     "" if not trained.warm_start else f", warm start used: {trained.warm_start['used']}")
    return []


def _inputs(ctx: Context, contract: Contract, key: str
            ) -> tuple[FeaturesMaterialized, list[DataValidated]] | None:
    """The feature set and label versions a run trains on, or None when one side has not arrived yet."""
    dataset = contract.dataset
    if key.startswith(keys.FEATURES):
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


def _coalesce(ctx: Context, contract: Contract, features: FeaturesMaterialized, labels: list[DataValidated],
              trigger: str) -> bool:
    """False for a superseded trigger; raises Defer until the newest input has been quiet for `debounce_s`.

    Only the newest trigger waits: an older one gives way, so a steady stream of drops never piles up retries.
    """
    latest = latest_feature_set(ctx.store, contract.dataset)
    if latest is not None and latest.feature_set_version != features.feature_set_version:
        ctx.log.info("skip  train      %s: feature set %s is superseded by %s", contract.dataset,
                     features.feature_set_version, latest.feature_set_version)
        return False
    if labels:
        newest_label = max(labels, key=lambda lv: (lv.validated_at, lv.data_version))
        mine = keys.Validated.parse(trigger).version if trigger.startswith(keys.VALIDATED_LABELS) else None
        if mine is None and newest_label.validated_at > features.materialized_at:
            ctx.log.info("skip  train      %s: labels %s arrived after feature set %s; their trigger trains",
                         contract.dataset, newest_label.data_version[:12], features.feature_set_version)
            return False
        if mine is not None and newest_label.data_version != mine:
            ctx.log.info("skip  train      %s: labels %s are superseded by %s", contract.dataset, mine[:12],
                         newest_label.data_version[:12])
            return False
    pending = _pending_drops(ctx, contract, features)
    if not pending:
        ctx.log.info("now   train      %s: no other drop is pending, nothing to coalesce", contract.dataset)
        return True
    newest = max([features.materialized_at, *(lv.validated_at for lv in labels)])
    quiet_s = (ctx.now() - datetime.fromisoformat(newest.replace("Z", "+00:00"))).total_seconds()
    wait_s = contract.training.debounce_s - quiet_s
    if wait_s > 0:
        ctx.log.info("wait  train      %s: coalescing drops (%d pending), training in %.1fs", contract.dataset,
                     len(pending), wait_s)
        raise Defer(wait_s + 0.05, f"coalescing drops of {contract.dataset!r}")
    return True


def _pending_drops(ctx: Context, contract: Contract, features: FeaturesMaterialized) -> list[str]:
    """Drops of the dataset still on their way to a newer feature set: not validated yet, or validated and not in
    `features`. When there are none, waiting for the debounce only delays the run: there is nothing to coalesce."""
    from sluice.core.runtime import object_id
    from sluice.events.s3 import ObjectCreated

    dataset, bucket = contract.dataset, ctx.store.bucket
    done = {keys.Ledger.parse(k).object_id for k in ctx.store.keys(keys.Ledger.prefix(dataset))}
    pending = []
    for prefix in (keys.Drop.prefix(dataset), *((keys.Drop.prefix(dataset, labels=True),) if contract.labels else ())):
        for key, etag in ctx.store.etags(prefix):
            if object_id(ObjectCreated(bucket, key, etag=etag)) not in done:
                pending.append(key)
    included = set(features.data_versions)
    for key in ctx.store.keys(keys.Validated.prefix(dataset)):
        if key.endswith("/" + keys.MANIFEST) and keys.Validated.parse(key).version not in included:
            pending.append(key)
    return pending


def _trace_links(ctx: Context, dataset: str, features: FeaturesMaterialized,
                 labels: list[DataValidated] | None = None) -> list[str]:
    """The trace ids of the drops this run is the first to train on: its data versions (and label versions) that
    the dataset's latest earlier run did not have (every one for a first run), each as its manifest records it."""
    from sluice.events.run import read as read_run

    # The newest finished run from the listing's times (run.json is written as a run finishes), then one GET: one
    # LIST per 1,000 objects, where reading every run (two GETs each) made each run slower than the one before.
    newest = []
    for listed in newest_group(ctx.store, keys.Run.prefix(dataset), "/" + keys.RUN):
        try:
            newest.append(read_run(ctx.store.get_json(listed.key)))
        except IntegrityError as exc:  # a planted run must not stop every later training: links are information
            ctx.log.warning("skip  train      %s for the run's trace links: %s", listed.key, exc)
    latest = max(newest, key=lambda r: str(r.get("finished_at") or ""), default=None)
    before = set(latest.get("data_versions") or []) if latest else set()
    labels_before = set(latest.get("label_versions") or []) if latest else set()
    links = []
    for dv in features.data_versions:
        if dv in before:
            continue
        doc = ctx.store.get_json_or_none(keys.Validated(dataset, dv).key)
        if isinstance(doc, dict) and doc.get("trace_id") and doc["trace_id"] not in links:
            links.append(str(doc["trace_id"]))
    for lv in labels or []:
        if lv.data_version not in labels_before and lv.trace_id and lv.trace_id not in links:
            links.append(lv.trace_id)
    return links


# The share of the budget kept back from the search for what follows it: the blend's out-of-fold fits and the
# refit (with a blend), or the refit alone. Measured with benchmarks/model_quality.py (10 s, 2 shared cores at
# load 6-8): with 25 % kept, the blend was skipped or lost members for time in 9 of 18 runs (digits and churn
# every time), as the search overran its share by up to 1.5 s; on a few hundred rows the fixed members and the
# blend are worth more than the last quarter of a search that runs 10 to 60 trials.
# Sizing the share by the data instead was tried and measured (30 s, one split, 2 shared cores at load 5-9,
# 2026-11-29): the blend's cost estimated before the search from timed fits of LightGBM's defaults and the linear
# model on up to 2,000 rows, 1.5-2 x that plus 5 % kept, 10-15 % at least. The search got 21-27 s instead of 18
# on diabetes, wine and breast cancer, and gained nothing where the goal was missed: diabetes 49.31 RMSE (27 s of
# search; 49.32 with 40 %). It lost where the estimate fell short: members the search tunes cost more than
# library defaults (a logistic regression with a large C took 1.0 s on breast cancer's 364 rows) and FLAML
# overran its share by 2-3 s under load, so wine's blend cut its folds to 3 and chose the linear model alone
# (log loss 0.077; with 40 % kept, an even blend: 0.0395) and breast cancer's blend was skipped (ROC AUC 0.9941
# against LightGBM's 0.9984).
# A smaller share on a quiet machine, where 5-11 s of a 30 s budget went unused, was measured too
# (model_quality.py --repeats 3 --variant s:blend_share=0.3, 14 tables, load 1-3.4, 2026-11-30): better on the
# mean on 6 tables, worse on 5, the same on 3: noise, so the share that holds on a loaded machine stays.
BLEND_SHARE = 0.4
REFIT_SHARE = 0.05
# What checks, search, blend and refit may take together: the stage stays within 1.1 x budget plus its I/O.
STAGE_SHARE = 1.05
STAGE_LIMIT = 1.1  # the limit; the refit, the last step, may use the margin up to it
# A refit this short is always made: on small data it is cheap and most worth it (digits: log loss 0.105 evaluated,
# 0.081 refitted, benchmarks/model_quality.py), and a second is within the noise of a stage's I/O.
REFIT_ALWAYS_S = 1.0


def _blends(contract: Contract) -> bool:
    """Whether this contract's runs try a blend: asked for, and LightGBM (which brings the fixed members) or two
    blendable learners searched."""
    estimators = contract.training.estimators
    return contract.training.blend and ("lgbm" in estimators or sum(e in BLENDABLE for e in estimators) >= 2)


def _search_budget(budget_s: float, spent_s: float, blending: bool = False) -> float:
    """The search gets the budget less what the checks before it took and the share kept for the blend and the
    refit after it (never under 50 % of it: a search cut shorter can end with no model at all), so checks,
    search, blend and refit together stay close to the budget."""
    keep = BLEND_SHARE if blending else REFIT_SHARE
    return max(budget_s * (1 - keep) - spent_s, budget_s * 0.5)


def _blend(contract: Contract, trained: modeling.Trained, train_frame: pl.DataFrame, holdout: pl.DataFrame,
           encoding: modeling.Encoding, left_s: float) -> tuple[Any, dict[str, Any]]:
    """The blend of each learner's best model (and the fixed members), when it fits in what is left of the budget
    and beats the best single member out of fold (ml/blend.py): (the kept blend or None, what the run records)."""
    templates = trained.templates
    if len(templates) < 2:
        return None, {"kept": False, "reason": "the search reached fewer than two blendable learners",
                      "members": list(templates)}
    if left_s <= 0:
        return None, {"kept": False, "members": list(templates),
                      "reason": f"no time left: the checks and the search overran {STAGE_SHARE:g} x the budget by "
                                f"{-left_s:.1f}s"}
    # The least a blend costs: the winner fitted once, through the fewer folds, and refitted (the other members
    # come on top). Skip at once rather than spend a fit to find out (100,000 rows: 1.6 s for nothing).
    least_s = trained.best_fit_s * (1 + 0.8 * FEWER_FOLDS + 1.25)
    if least_s > left_s:
        return None, {"kept": False, "members": list(templates),
                      "reason": f"no time left: the search's winner took {trained.best_fit_s:.1f}s to fit, a blend "
                                f"needs at least {least_s:.1f}s, {left_s:.1f}s of the budget left"}
    X, y = encoding.features(train_frame), encoding.labels(train_frame)
    y_holdout = encoding.labels(holdout)
    known = y_holdout >= 0
    n_classes = len(encoding.classes) if encoding.classes else None
    chosen = build_blend(templates, X, y, encoding.features(holdout.filter(pl.Series(known))), y_holdout[known],
                         task=contract.task, metric=contract.metric, n_classes=n_classes, seed=contract.training.seed,
                         left_s=left_s, first_is_winner=trained.best_estimator in templates)
    record = chosen.summary()
    return (chosen if chosen.kept else None), record


def _refit(ctx: Context, contract: Contract, frame: pl.DataFrame, encoding: modeling.Encoding,
           trained: modeling.Trained, base: str, run_id: str, chosen: Any, left_s: float, frequencies: Any,
           prepared: Future[modeling.RefitInput] | None = None, contract_yaml: bytes | None = None,
           train_rows: int = 0) -> tuple[dict[str, Any] | None, str | None]:
    """The chosen configuration refitted on every labelled row, stored as a bundle of its own: (what the run
    records of it, or None and why it was skipped).

    The holdout-evaluated model stays the run's `bundle`: the gate judges it, on rows it never saw. The refit
    learns from the 20 % more rows the holdout held and is what a promoted version ships: for a single tree model,
    a bag of modeling.BAG_FOLDS fits, each on all rows but one fold, when they fit in what is left of the budget
    (measured: benchmarks/bag_refit.py, benchmarks/blend_folds.py), else one fit on every row (measured in
    benchmarks/model_quality.py: a clear gain on digits, a loss on 142-row wine, noise elsewhere).
    Same learner, hyperparameters and encoding: only the rows differ.

    The budget is the user's: a refit that would take the stage past 1.1 x of it (estimated from the winner's own
    fit, or the blend's members' fits on the `train_rows` training rows, scaled to the rows; a refit under
    REFIT_ALWAYS_S is always made) is skipped, and the evaluated model ships."""
    if not contract.training.refit:
        return None, None
    used = [n for n, w in zip(chosen.learners, chosen.weights, strict=True) if w > 0] if chosen is not None else []
    if chosen is not None:
        one_fit_s = sum(chosen.costs.get(n, 0.0) for n in used) * frame.height / max(train_rows, 1)
    else:
        one_fit_s = trained.best_fit_s * frame.height / max(trained.best_fit_rows, 1)
    room_s = max(left_s + (STAGE_LIMIT - STAGE_SHARE) * contract.training.time_budget_s, REFIT_ALWAYS_S)
    bag = refit_plan(one_fit_s, room_s)
    if chosen is None and bag is None:
        reason = (f"no time left for the refit: it would take about {one_fit_s:.1f}s ({trained.best_fit_s:.1f}s "
                  f"for {trained.best_fit_rows:,} rows, scaled to {frame.height:,}), {max(left_s, 0):.1f}s of "
                  f"the budget was left; the model the gate judged ships. Raise training.time_budget_s to refit.")
        ctx.log.warning("train %s: %s", run_id, reason)
        return None, reason
    rows = prepared.result() if prepared is not None else None  # encoded beside the search
    # Only a single model is bagged: a blend of two members or more already averages (modeling.BAG_FOLDS says what
    # was measured). A kept blend planned a single refit's time itself.
    bag = bag if bag and len(used) <= 1 else 0
    done = (modeling.refit_blend(chosen, trained.templates, frame, encoding, contract, ctx.extensions, rows, bag)
            if chosen is not None else modeling.refit(trained, frame, encoding, contract, ctx.extensions, rows, bag))
    manifest_bytes, files = bundle.bundle_files(
        contract=contract, encoding=encoding, model_bytes=done.model_bytes, model_format=done.model_format,
        frequencies=frequencies, run_id=run_id, members=done.members, contract_yaml=contract_yaml)
    bundle.model_from_files(manifest_bytes, files, extensions=ctx.extensions)  # the shipped bundle must load
    _put_many(ctx, [(f"{base}refit/{name}", data) for name, data in files.items()])
    key = f"{base}refit/manifest-{bundle.sha256(manifest_bytes)[:12]}.json"
    ctx.store.put(key, manifest_bytes)
    model = json.loads(manifest_bytes)["files"]["model"]
    return {"rows": done.rows, "fit_s": round(done.fit_seconds, 3), "best_estimator": trained.best_estimator,
            **({"members": sorted(done.members)} if done.members else {}),
            # A bag: each member fitted once per fold, on all rows but that fold (seeded folds), averaged.
            **({"bag": {"folds": done.bag, "seed": contract.training.seed}} if done.bag else {}),
            "bundle": {"key": key, "sha256": bundle.sha256(manifest_bytes), "uri": ctx.store.uri(key)},
            "model": {"key": f"{base}refit/{model['path']}", "sha256": model["sha256"], "bytes": model["bytes"],
                      "format": done.model_format}}, None


def refit_plan(one_fit_s: float, room_s: float) -> int | None:
    """How the refit fits in `room_s`, given one fit on every row takes `one_fit_s`: a bag of
    modeling.BAG_FOLDS fits (each on (k - 1) / k of the rows, so k - 1 single fits in all), else a single fit
    (0), else None (no refit)."""
    if one_fit_s * (modeling.BAG_FOLDS - 1) <= room_s:
        return modeling.BAG_FOLDS
    return 0 if one_fit_s <= room_s else None


def _check_leakage(ctx: Context, contract: Contract, train_frame: pl.DataFrame, encoding: modeling.Encoding
                   ) -> tuple[dict[str, Any], modeling.Encoding]:
    """Columns that give the target away (ml/leakage.py), and the encoding to train with: without them when the
    contract says `exclude`. `refuse` is applied by the gate, `warn` only records."""
    policy = contract.training.leakage
    findings = leakage.check(train_frame, encoding, seed=contract.training.seed)
    for f in findings:
        ctx.log.warning("leak  train      %s: %s (training.leakage: %s)", contract.dataset, f.message, policy)
    flagged = [f.column for f in findings]
    derived = leakage.derived_from(contract, flagged)  # a leaky date's parts give the leak away too
    if findings and policy == "exclude":
        encoding = modeling.Encoding.fit(train_frame, contract, exclude=[*training_columns(contract), *flagged,
                                                                         *derived])
    return leakage.summary(findings, policy, derived), encoding


def _warm_start(ctx: Context, contract: Contract) -> dict[str, dict[str, Any]] | None:
    if not contract.training.warm_start:
        return None
    champion = ModelRegistry(ctx.store, ctx.state).champion(contract.model)
    if champion is None:
        return None
    try:
        run = ctx.store.get_json(champion["run_key"])
    except IntegrityError as exc:  # a starting point only: a record no stage wrote is not used, nor does it stop
        ctx.log.error("cold  train      %s: no warm start, the champion's training record cannot be trusted (%s) "
                      "Run `sluice models verify %s`.", contract.dataset, exc, contract.model)
        return None
    if run.get("best_estimator") not in contract.training.estimators:
        return None
    return {run["best_estimator"]: run["best_config"]}


def _parquet(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


def _store_artifacts(ctx: Context, base: str, items: list[tuple[str, str, bytes]]) -> dict[str, dict[str, Any]]:
    out, puts = {}, []
    for stem, ext, data in items:
        sha = hashlib.sha256(data).hexdigest()
        key = f"{base}{stem}-{sha[:12]}.{ext}"
        puts.append((key, data))
        out[stem] = {"key": key, "sha256": sha, "bytes": len(data)}
    _put_many(ctx, puts)
    return out


def _put_many(ctx: Context, items: list[tuple[str, bytes]]) -> None:
    """Uploads that depend on nothing but their bytes (content-addressed files; the manifests and the run document
    that name them are written after), side by side: a request's latency each, rather than their sum."""
    if len(items) <= 1:
        for key, data in items:
            ctx.store.put(key, data)
        return
    with ThreadPoolExecutor(min(UPLOAD_THREADS, len(items))) as pool:
        # Each upload in a copy of this thread's context: tracing and logging see the stage's trace.
        done = [pool.submit(contextvars.copy_context().run, ctx.store.put, key, data) for key, data in items]
        for future in done:
            future.result()


def _best_so_far(trials: list[dict[str, Any]]) -> list[list[float]]:
    curve, best = [], float("inf")
    for t in trials:
        if t["loss"] is not None and t["loss"] < best:
            best = t["loss"]
            curve.append([round(float(t["wall_clock_s"] or 0), 3), best])
    return curve


def plot_loss_curve(trials: list[dict[str, Any]], title: str) -> bytes:
    """PNG: the best validation loss so far against wall-clock time."""
    fig = _figure(6, 3.5)
    ax = fig.subplots()
    curve = _best_so_far(trials)
    if curve:
        xs, ys = zip(*curve, strict=True)
        ax.step(xs, ys, where="post", marker="o", markersize=3)
    ax.set(xlabel="wall-clock time (s)", ylabel="best validation loss", title=f"{title}: {len(trials)} trials")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_importance(importance: dict[str, float], title: str, top: int = 20) -> bytes:
    """PNG: the top features by share of total gain."""
    items = list(importance.items())[:top][::-1]
    height = max(2.5, 0.28 * len(items) + 1)
    fig = _figure(6, height)
    ax = fig.subplots()
    if items:
        names, values = zip(*items, strict=True)
        ax.barh(names, values)
    ax.set(xlabel="share of total gain", title=f"{title}: feature importance")
    # Margins from the longest name rather than `tight_layout`, which draws the figure once more to measure it
    # (half of the plot's time).
    widest = max((len(str(n)) for n, _ in items), default=1)
    fig.subplots_adjust(left=min(0.5, (0.15 + 0.075 * widest) / 6), right=0.97, top=1 - 0.35 / height,
                        bottom=0.55 / height)
    return _png(fig)


def _figure(width: float, height: float) -> Any:
    """A figure on matplotlib's Agg canvas, outside pyplot (no global figure registry, nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


@functools.cache
def code_version() -> dict[str, str | None]:
    """The installed Sluice version and, from a git checkout, the commit."""
    commit = None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
        commit = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"sluice": _version("sluice"), "git_commit": commit}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
