"""Training and scoring: a deterministic holdout, an explicit feature encoding, FLAML search, native LightGBM.

The model artifact is LightGBM's own text format, so loading it needs no pickle. For that to be safe the
frame handed to FLAML is already encoded the way FLAML's DataTransformer would leave it (categoricals first,
as pandas categories with a `__NAN__` slot, constant columns dropped), and training checks that the raw
booster predicts exactly what FLAML's estimator predicts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from sluice.core.contract import Contract

NAN_CATEGORY = "__NAN__"  # FLAML's sentinel for missing and unseen categories


def holdout_mask(frame: pl.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """True for holdout rows. A row's side depends only on its content and the seed, never on its position,
    so the same row is in the holdout in every snapshot that contains it."""
    cols = sorted(frame.columns)
    keys = frame.select(
        pl.concat_str([pl.col(c).cast(pl.Utf8).fill_null("\x00") for c in cols], separator="\x1f").alias("k")
    )["k"].to_list()
    salt = f"{seed}\x1e".encode()
    threshold = int(fraction * 2**64)
    return np.fromiter(
        (int.from_bytes(hashlib.sha256(salt + k.encode()).digest()[:8], "big") < threshold for k in keys),
        dtype=bool, count=len(keys),
    )


@dataclass
class Encoding:
    """How a validated frame becomes model input. Stored beside the model, so scoring needs no training code."""

    target: str
    task: str
    classes: list[str] | None
    categorical: dict[str, list[str]] = field(default_factory=dict)
    numeric: list[str] = field(default_factory=list)

    @classmethod
    def fit(cls, frame: pl.DataFrame, contract: Contract, exclude: list[str] | None = None) -> Encoding:
        """Learn categories and the usable columns from training rows (never the `exclude` columns)."""
        skip = set(exclude or ())
        classes = None
        if contract.task != "regression":
            classes = sorted(str(v) for v in frame[contract.target].drop_nulls().unique().to_list())
        categorical: dict[str, list[str]] = {}
        numeric: list[str] = []
        for name in frame.columns:
            if name == contract.target or name in skip:
                continue
            s = frame[name]
            distinct = s.drop_nulls().n_unique()
            if distinct < 2:
                continue  # constant: nothing to learn, and FLAML would drop it behind our back
            if s.dtype == pl.Utf8:
                if distinct == frame.height - s.null_count():
                    continue  # an identifier: unique per row, FLAML would drop it too
                categorical[name] = [*sorted(str(v) for v in s.drop_nulls().unique().to_list()), NAN_CATEGORY]
            else:
                numeric.append(name)
        return cls(contract.target, contract.task, classes, categorical, numeric)

    @property
    def columns(self) -> list[str]:
        """Model input columns, in the order the booster expects."""
        return [*self.categorical, *self.numeric]

    def features(self, frame: pl.DataFrame) -> pd.DataFrame:
        """Model input for `frame`; unseen categories map to the `__NAN__` slot."""
        out: dict[str, Any] = {}
        for name, cats in self.categorical.items():
            values = frame[name].cast(pl.Utf8).to_list()
            known = set(cats)
            values = [v if v in known else NAN_CATEGORY for v in values]
            out[name] = pd.Categorical(values, categories=cats)
        for name in self.numeric:
            s = frame[name]
            if s.dtype == pl.Date:
                s = s.cast(pl.Int32)
            elif isinstance(s.dtype, pl.Datetime):
                s = s.dt.epoch("s")
            out[name] = s.cast(pl.Float64).fill_null(float("nan")).to_numpy()
        return pd.DataFrame(out, columns=self.columns)

    def labels(self, frame: pl.DataFrame) -> np.ndarray:
        """Targets: class indices for classification, floats for regression."""
        y = frame[self.target]
        if self.classes is None:
            return y.cast(pl.Float64).to_numpy()
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index.get(str(v), -1) for v in y.to_list()], dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Encoding:
        """Inverse of `to_dict`."""
        return cls(**doc)


@dataclass
class Trained:
    """The outcome of one FLAML search."""

    booster_text: str
    best_config: dict[str, Any]
    best_estimator: str
    best_loss: float
    fit_seconds: float
    trial_log: str


def train(X: pd.DataFrame, y: np.ndarray, contract: Contract) -> Trained:
    """FLAML AutoML over the contract's estimators and budget; returns the native LightGBM model."""
    from flaml.automl import AutoML

    spec = contract.training
    automl = AutoML()  # type: ignore[no-untyped-call]
    task = "regression" if contract.task == "regression" else "classification"
    metric = {"roc_auc": "roc_auc", "log_loss": "log_loss", "accuracy": "accuracy", "f1": "f1",
              "rmse": "rmse", "mae": "mae", "r2": "r2"}[contract.metric]
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "trials.jsonl")
        started = time.perf_counter()
        automl.fit(
            X_train=X, y_train=y, task=task, metric=metric, time_budget=spec.time_budget_s,
            estimator_list=list(spec.estimators), seed=spec.seed, n_jobs=spec.n_jobs, verbose=0,
            log_file_name=log, log_type="all",
        )
        fit_seconds = time.perf_counter() - started
        trial_log = Path(log).read_text() if os.path.exists(log) else ""
    estimator = automl.model.estimator
    booster_text = estimator.booster_.model_to_string()
    # The promise behind loading without pickle: the raw booster agrees with FLAML's own predictions.
    sample = X.head(min(len(X), 200))
    ours = predict(booster_text, sample)
    predict_fn = automl.predict_proba if task == "classification" else automl.predict
    theirs = predict_fn(sample)  # type: ignore[no-untyped-call]
    if contract.task == "binary":
        theirs = np.asarray(theirs)[:, 1]
    if not np.allclose(ours, np.asarray(theirs), atol=1e-6):
        raise RuntimeError("the native LightGBM model disagrees with FLAML's predictions; the encoding drifted "
                           "from FLAML's DataTransformer (is the installed FLAML newer than tested?)")
    return Trained(booster_text, _jsonable(automl.best_config), automl.best_estimator,
                   float(automl.best_loss), fit_seconds, trial_log)


def predict(booster_text: str, X: pd.DataFrame) -> np.ndarray:
    """Scores from a native LightGBM model: P(class 1), class probabilities, or values."""
    import lightgbm as lgb

    return np.asarray(lgb.Booster(model_str=booster_text).predict(X))


def score(metric: str, y: np.ndarray, pred: np.ndarray, n_classes: int | None) -> float:
    """The holdout metric. `pred` holds scores as returned by `predict` (or a baseline's)."""
    from sklearn import metrics as m

    if metric == "rmse":
        return float(math.sqrt(m.mean_squared_error(y, pred)))
    if metric == "mae":
        return float(m.mean_absolute_error(y, pred))
    if metric == "r2":
        return float(m.r2_score(y, pred))
    proba = pred if pred.ndim == 2 else np.column_stack([1 - pred, pred])
    labels = list(range(n_classes or proba.shape[1]))
    if metric == "roc_auc":
        if len(set(y.tolist())) < 2:
            return float("nan")
        return float(m.roc_auc_score(y, proba[:, 1]) if proba.shape[1] == 2
                     else m.roc_auc_score(y, proba, multi_class="ovr", labels=labels))
    if metric == "log_loss":
        return float(m.log_loss(y, np.clip(proba, 1e-15, 1), labels=labels))
    predicted = proba.argmax(axis=1)
    if metric == "accuracy":
        return float(m.accuracy_score(y, predicted))
    return float(m.f1_score(y, predicted))


def baseline_scores(y_train: np.ndarray, n: int, task: str, n_classes: int | None) -> np.ndarray:
    """The naive model: class priors (so the majority class wins any argmax), or the training mean."""
    if task == "regression":
        return np.full(n, float(np.mean(y_train)))
    k = n_classes or int(y_train.max()) + 1
    priors = np.bincount(y_train, minlength=k) / len(y_train)
    scores = np.tile(priors, (n, 1))
    return scores[:, 1] if k == 2 else scores


def better(a: float, b: float, higher_is_better: bool, margin: float = 0.0) -> bool:
    """True when `a` beats `b` by more than `margin` in the metric's direction."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a - b > margin if higher_is_better else b - a > margin


def _jsonable(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(doc, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    return out
