"""Leakage checks, run on the training rows before the search: columns that give the answer away.

A model that learns from a leak looks perfect on the holdout (the leak is there too) and fails in production,
where the column is not known at prediction time. Three signs, each measured on one column alone with a small
decision tree, on a third of the rows it was not fitted on (a column only counts when it predicts unseen rows):

    identifier        a near-unique integer column dense in its range (a row id, an order number) that predicts
                      the target: the rows were numbered in an order that follows the label
    determines_target the target is a function of the column: every value of it has one class, or a tree on it
                      explains the regression target to R² >= 0.999
    predicts_target   the column alone predicts the target almost perfectly (balanced accuracy or R² >= 0.98)

The contract's `training.leakage` says what happens: `refuse` (the default) trains but the gate never promotes,
`exclude` trains without the flagged columns, `warn` only records the findings. Every finding names its column.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from sluice.ml.modeling import Encoding

THRESHOLD = 0.98  # balanced accuracy or R² of one column alone, on rows the tree was not fitted on
DETERMINES = 0.999
MAX_ROWS = 10_000  # a sample is enough to see a near-perfect column; keeps the check to a second or two
MIN_ROWS = 30
FOLDS = 3  # the share held out of the tree's fit is 1 / FOLDS


@dataclass(frozen=True)
class Finding:
    """One column that gives the target away."""

    column: str
    kind: str  # identifier, determines_target, predicts_target
    measure: str  # balanced_accuracy or r2
    score: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


def check(frame: pl.DataFrame, encoding: Encoding, *, seed: int = 42) -> list[Finding]:
    """Columns of `frame` (training rows) that alone predict the target almost perfectly, worst first.

    Rows that are the same in every column count once: a cumulative export sends earlier rows again, and copies of a
    row on both sides of the check's split let a continuous column "predict" rows it had already seen."""
    frame = frame.unique(maintain_order=True)
    y_all = encoding.labels(frame)
    keep = y_all >= 0 if encoding.classes is not None else ~np.isnan(y_all)
    rows = frame.filter(pl.Series(keep))
    y = y_all[keep]
    if len(y) < MIN_ROWS or not encoding.columns:
        return []
    if len(y) > MAX_ROWS:
        pick = np.random.default_rng(seed).choice(len(y), MAX_ROWS, replace=False)
        rows, y = rows[np.sort(pick)], y[np.sort(pick)]
    if encoding.classes is not None and np.bincount(y).max() == len(y):
        return []  # one class: nothing to predict
    from sklearn.model_selection import train_test_split

    X = encoding.matrix(rows)
    # One split, fitted on two thirds and scored on the rest: a near-perfect column is near-perfect on any split,
    # and one fit per column keeps the check well under a second for most tables. The split depends only on the
    # labels and the seed, so it is drawn once, for every column.
    classify = encoding.classes is not None
    stratify = y if classify and np.bincount(y)[np.bincount(y) > 0].min() >= 2 else None
    fit_rows, out_rows = train_test_split(np.arange(len(y)), test_size=1 / FOLDS, random_state=seed,
                                          stratify=stratify)
    split = (fit_rows, out_rows)

    def one(i: int) -> Finding | None:
        name = encoding.columns[i]
        return _column(name, X[:, i], y, encoding, rows[name], seed, split)

    # The trees are most of the check (a second at 10,000 rows and 20 columns); scikit-learn grows them without
    # the GIL, so they run side by side on the worker's cores. Each is seeded: the findings do not depend on it.
    workers = min(len(encoding.columns), os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(one, range(len(encoding.columns))))
    else:
        results = [one(i) for i in range(len(encoding.columns))]
    findings = [f for f in results if f is not None]
    return sorted(findings, key=lambda f: -f.score)


def _column(name: str, x: np.ndarray, y: np.ndarray, encoding: Encoding, raw: pl.Series,
            seed: int, split: tuple[np.ndarray, np.ndarray]) -> Finding | None:
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    X = x.reshape(-1, 1)
    classify = encoding.classes is not None
    fit_rows, out_rows = split
    X_fit, X_out, y_fit, y_out = X[fit_rows], X[out_rows], y[fit_rows], y[out_rows]
    tree: Any = (DecisionTreeClassifier if classify else DecisionTreeRegressor)(min_samples_leaf=2,
                                                                               random_state=seed)
    predicted = tree.fit(X_fit, y_fit).predict(X_out)
    if classify:
        from sklearn.metrics import balanced_accuracy_score

        measure, score = "balanced_accuracy", float(balanced_accuracy_score(y_out, predicted))
    else:
        from sklearn.metrics import r2_score

        measure, score = "r2", float(r2_score(y_out, predicted))
    if not score >= THRESHOLD:
        return None
    if _identifier(raw):
        kind = "identifier"
        message = (f"column {name!r} is unique per row, like an identifier, yet alone predicts the target "
                   f"({measure} {score:.3f} on held-out rows): the rows were numbered in an order that follows the "
                   "label. Drop it from the data or the contract.")
    elif _determines(x, y, classify, score):
        kind = "determines_target"
        message = (f"the target is a function of column {name!r} ({measure} {score:.3f} on held-out rows from it "
                   "alone): is it derived from the label, or recorded after it? Drop it from the data or the "
                   "contract, or set training.leakage: warn if it is known at prediction time.")
    else:
        kind = "predicts_target"
        message = (f"column {name!r} alone predicts the target almost perfectly ({measure} {score:.3f} on held-out "
                   "rows): check that it is known at prediction time. Drop it, or set training.leakage: warn if "
                   "it is legitimate.")
    return Finding(name, kind, measure, round(score, 6), message)


def _identifier(raw: pl.Series) -> bool:
    """Near-unique integers that number the rows: dense in their range (a row id, an order number). A count or an
    amount (employment in thousands, a price in cents) is unique per row too, but spread thin over its range."""
    values = raw.drop_nulls()
    if not raw.dtype.is_integer() or values.n_unique() < 0.95 * raw.len():
        return False
    span = int(values.max()) - int(values.min()) + 1  # type: ignore[arg-type]
    return values.n_unique() >= 0.25 * span


def _determines(x: np.ndarray, y: np.ndarray, classify: bool, score: float) -> bool:
    """Every repeated value of `x` has one class (classification), or R² from `x` alone is ~1 (regression)."""
    if not classify:
        return score >= DETERMINES
    frame = pl.DataFrame({"x": x, "y": y})
    groups = frame.group_by("x").agg(pl.col("y").n_unique().alias("classes"), pl.len().alias("n"))
    repeated = groups.filter(pl.col("n") > 1)
    # Most rows must share their value with others, or a near-unique column would pass by having few repeats.
    return int(repeated["n"].sum()) >= 0.5 * len(y) and int(repeated["classes"].max()) == 1  # type: ignore[arg-type]


def summary(findings: list[Finding], policy: str) -> dict[str, Any]:
    """What the run records: the policy, what it did, and every finding."""
    action = {"refuse": "promotion refused", "exclude": "columns excluded from training",
              "warn": "trained with the columns; promotion allowed"}[policy] if findings else "none"
    return {"policy": policy, "action": action, "columns": [f.column for f in findings],
            "findings": [f.to_dict() for f in findings]}


def reasons(leakage: dict[str, Any] | None) -> list[str]:
    """The gate's reasons to refuse promotion, from a run's leakage record (none unless the policy refuses)."""
    if not leakage or leakage.get("policy") != "refuse" or not leakage.get("findings"):
        return []
    return [f"leakage: {f['message']} (training.leakage: refuse; set exclude to train without it)"
            for f in leakage["findings"]]
