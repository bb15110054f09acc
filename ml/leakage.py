"""Leakage checks, run on the training rows before the search: columns that give the answer away.

A model that learns from a leak looks perfect on the holdout (the leak is there too) and fails in production,
where the column is not known at prediction time. Three signs, each measured on one column alone with a small
decision tree, on a third of the rows it was not fitted on, then confirmed out of fold on every row (a column only
counts when it predicts unseen rows, and not by the luck of one split: see `_confirmed`):

    identifier        a near-unique integer column dense in its range (a row id, an order number) that predicts
                      the target: the rows were numbered in an order that follows the label
    determines_target the target is a function of the column: every value of it has one class, or a tree on it
                      explains the regression target, or the target's rank, to R² >= 0.999
    predicts_target   the column alone predicts the target almost perfectly (balanced accuracy, R² or rank R² >= 0.98),
                      on every row, or on the rows where the column is present when it is missing on some

A regression target is looked at twice: its values, and its rank among the rows (`rank_r2`). A tree on one column
cannot extrapolate: on a skewed column (a lognormal usage, a price) its out-of-fold R² of an exact function of it
(bill = 2 * usage + 1, cents = round(dollars * 100)) stayed at 0.97, as the rows in the sparse tail fall beyond the
tree's last split. Ranks have no tail: the same function scores 0.9995 there, and a legitimately strong column scores
about what it scores on the values (R² 0.92 gives rank R² 0.94 at 300 rows, 0.93 at 10,000). Tied targets get a
seeded random order among themselves, so a column that only tells apart a value shared by many rows (zero or not)
does not "rank" them.

A column missing on some rows is also looked at on the rows where it is present, when they are at least
MIN_PRESENT_SHARE of the rows: a score recorded only for some cases gives the answer away there, yet on every row its
missing values (filled with the median) pull its score under the threshold (10 % missing: balanced accuracy 0.95).
Under a quarter of the rows, a perfect fit on them is too easily chance or a narrow legitimate rule, and decides too
little of the holdout to matter much.

The contract's `training.leakage` says what happens: `refuse` (the default) trains but the gate never promotes,
`exclude` trains without the flagged columns, `warn` only records the findings. Every finding names its column.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:  # annotations only: `sluice trace` and `runs show` import this module for `brief`
    from sluice.ml.contract import Contract
    from sluice.ml.modeling import Encoding

THRESHOLD = 0.98  # balanced accuracy or R² of one column alone, on rows the tree was not fitted on
DETERMINES = 0.999
MAX_ROWS = 10_000  # a sample is enough to see a near-perfect column; keeps the check to a second or two
MIN_ROWS = 30
FOLDS = 3  # the share held out of the tree's fit is 1 / FOLDS
MIN_PRESENT_SHARE = 0.25  # a column missing on some rows is also checked on the rows where it is present, if that many
# The extra looks (ranks, rows where present) fit a tree only where the column's neighbours agree this much (`_smooth`):
# a leak scores near 1 there, and most columns far below, which keeps the check's cost near one tree per column.
SMOOTH = 0.8


@dataclass(frozen=True)
class Finding:
    """One column that gives the target away."""

    column: str
    kind: str  # identifier, determines_target, predicts_target
    measure: str  # balanced_accuracy, r2 or rank_r2 (R² of the target's rank among the rows)
    score: float
    message: str
    present_share: float | None = None  # measured on the rows where the column is present: their share of all rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        out = asdict(self)
        if self.present_share is None:
            del out["present_share"]
        return out


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
    ranks = None if classify else _ranks(y, seed)

    def one(i: int) -> Finding | None:
        name = encoding.columns[i]
        return _column(name, X[:, i], y, ranks, encoding, rows[name], seed, split)

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


def _ranks(y: np.ndarray, seed: int) -> np.ndarray:
    """Each row's rank of the target in [0, 1); tied values in a seeded random order."""
    order = np.lexsort((np.random.default_rng(seed).random(len(y)), y))
    ranks = np.empty(len(y))
    ranks[order] = np.arange(len(y)) / len(y)
    return ranks


def _smooth(x: np.ndarray, t: np.ndarray | None, rows: np.ndarray, *, classes: bool = False) -> float:
    """How alike the targets `t` of neighbouring rows by `x` are, among `rows`: 1 - E[(t_i+1 - t_i)²] / (2 Var t),
    a class counting as its indicator vector. Near 1 when the target follows the column (a function of it, in any
    order), near 0 when it does not; a sort instead of a tree's fit. Always 1 when `t` is None."""
    if t is None or len(rows) < 3:
        return 1.0
    t = t[rows][np.argsort(x[rows], kind="stable")]
    if classes:
        shares = np.bincount(t) / len(t)
        spread = 1 - float((shares ** 2).sum())
        return 1.0 if spread == 0 else 1 - float(np.mean(t[1:] != t[:-1])) / spread
    spread = float(np.var(t))
    return 1.0 if spread == 0 else 1 - float(np.mean(np.diff(t) ** 2)) / (2 * spread)


def _tree(classify: bool, seed: int) -> Any:
    """The small one-column decision tree every look fits."""
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    return (DecisionTreeClassifier if classify else DecisionTreeRegressor)(min_samples_leaf=2, random_state=seed)


def _metric(classify: bool, truth: np.ndarray, predicted: np.ndarray) -> float:
    """Balanced accuracy (classes) or R² (values) of a tree's predictions."""
    if classify:
        from sklearn.metrics import balanced_accuracy_score

        return float(balanced_accuracy_score(truth, predicted))
    from sklearn.metrics import r2_score

    return float(r2_score(truth, predicted))


def _score(X: np.ndarray, y: np.ndarray, classify: bool, seed: int, fit_rows: np.ndarray, out_rows: np.ndarray
           ) -> float:
    """A one-column tree's balanced accuracy or R² on `out_rows`, fitted on `fit_rows`."""
    return _metric(classify, y[out_rows], _tree(classify, seed).fit(X[fit_rows], y[fit_rows]).predict(X[out_rows]))


def _confirmed(X: np.ndarray, target: np.ndarray, classify: bool, seed: int, rows: np.ndarray) -> float:
    """A one-column tree's balanced accuracy or R² out of fold on every one of `rows` (FOLDS folds, seeded).

    A column that scores THRESHOLD on the one split is kept only when it does so on all the rows: on a hundred
    rows a third is a few dozen, and a strong legitimate column separates that many perfectly by luck (iris's petal
    width did on 9 of 20 samples of 96 rows, scoring 0.94-0.97 out of fold on all of them), where a leak scores
    near 1 on any rows."""
    from sklearn.model_selection import KFold, StratifiedKFold

    t, Xr = target[rows], X[rows]
    if classify:
        counts = np.bincount(t.astype(np.int64))
        k = min(FOLDS, int(counts[counts > 0].min()))
        if k < 2:
            return 1.0  # a class with one row: no folds to confirm on; the one split stands
        splits = StratifiedKFold(k, shuffle=True, random_state=seed).split(Xr, t)
    else:
        splits = KFold(FOLDS, shuffle=True, random_state=seed).split(Xr)
    predicted = np.empty_like(t)
    for fit, out in splits:
        predicted[out] = _tree(classify, seed).fit(Xr[fit], t[fit]).predict(Xr[out])
    return _metric(classify, t, predicted)


def _measure(X: np.ndarray, y: np.ndarray, ranks: np.ndarray | None, seed: int, fit_rows: np.ndarray,
             out_rows: np.ndarray) -> tuple[str, float, float | None]:
    """(measure, its score, R² of the values when the measure is the rank's) of one column on these rows."""
    if ranks is None:
        return "balanced_accuracy", _score(X, y, True, seed, fit_rows, out_rows), None
    r2 = _score(X, y, False, seed, fit_rows, out_rows)
    if r2 >= DETERMINES or _smooth(X[:, 0], ranks, fit_rows) < SMOOTH:
        return "r2", r2, None
    rank_r2 = _score(X, ranks, False, seed, fit_rows, out_rows)
    return ("rank_r2", rank_r2, r2) if rank_r2 > r2 else ("r2", r2, None)


def _column(name: str, x: np.ndarray, y: np.ndarray, ranks: np.ndarray | None, encoding: Encoding, raw: pl.Series,
            seed: int, split: tuple[np.ndarray, np.ndarray]) -> Finding | None:
    X = x.reshape(-1, 1)
    classify = encoding.classes is not None
    fit_rows, out_rows = split
    measure, score, values_r2 = _measure(X, y, ranks, seed, fit_rows, out_rows)
    if score >= THRESHOLD:
        score = _confirmed(X, ranks if measure == "rank_r2" and ranks is not None else y, classify, seed,
                           np.arange(len(y)))
    if not score >= THRESHOLD:
        return _where_present(name, X, y, ranks, raw, seed, split)
    how = (f"{measure} {score:.3f}" if values_r2 is None else
           f"R² {score:.4f} of the target's rank among the rows, {values_r2:.3f} of its values")
    if _identifier(raw):
        kind = "identifier"
        message = (f"column {name!r} is unique per row, like an identifier, yet alone predicts the target "
                   f"({how} on held-out rows): the rows were numbered in an order that follows the "
                   "label. Drop it from the data or the contract.")
    elif _determines(x, y, classify, score):
        kind = "determines_target"
        message = (f"the target is a function of column {name!r} ({how} on held-out rows from it "
                   "alone): is it derived from the label, or recorded after it? Drop it from the data or the "
                   "contract, or set training.leakage: warn if it is known at prediction time.")
    else:
        kind = "predicts_target"
        message = (f"column {name!r} alone predicts the target almost perfectly ({how} on held-out "
                   "rows): check that it is known at prediction time. Drop it, or set training.leakage: warn if "
                   "it is legitimate.")
    return Finding(name, kind, measure, round(score, 6), message)


def _where_present(name: str, X: np.ndarray, y: np.ndarray, ranks: np.ndarray | None, raw: pl.Series, seed: int,
                   split: tuple[np.ndarray, np.ndarray]) -> Finding | None:
    """A column missing on some rows that predicts the target almost perfectly on the rows where it is present."""
    missing = raw.is_null()
    if raw.dtype.is_float():
        missing = missing | raw.is_nan().fill_null(False)
    present = ~missing.to_numpy()
    share = float(present.mean())
    if share == 1.0 or share < MIN_PRESENT_SHARE or int(present.sum()) < MIN_ROWS:
        return None
    fit_rows, out_rows = (rows[present[rows]] for rows in split)
    if ranks is None and (len(np.unique(y[fit_rows])) < 2 or len(np.unique(y[out_rows])) < 2):
        return None  # one class where present: the check on every row sees that
    if min(len(fit_rows), len(out_rows)) < 2 or _smooth(X[:, 0], y if ranks is None else None, fit_rows,
                                                         classes=ranks is None) < SMOOTH:
        return None
    if ranks is not None:
        ranks = _ranks(y[present], seed)  # ranks among the rows where the column is present
        full = np.full(len(y), np.nan)
        full[present] = ranks
        ranks = full
    measure, score, values_r2 = _measure(X, y, ranks, seed, fit_rows, out_rows)
    if score >= THRESHOLD:
        score = _confirmed(X, ranks if measure == "rank_r2" and ranks is not None else y, ranks is None, seed,
                           np.flatnonzero(present))
    if not score >= THRESHOLD:
        return None
    how = (f"{measure} {score:.3f}" if values_r2 is None else
           f"R² {score:.4f} of the target's rank, {values_r2:.3f} of its values")
    message = (f"column {name!r} predicts the target almost perfectly on the rows where it is present ({how} on "
               f"held-out rows; present on {share:.0%} of the rows, missing on the rest): check that it is known at "
               "prediction time, and why it is missing where it is. Drop it, or set training.leakage: warn if it "
               "is legitimate.")
    return Finding(name, "predicts_target", measure, round(score, 6), message, present_share=round(share, 4))


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


def derived_from(contract: Contract, columns: list[str]) -> list[str]:
    """The declared features computed from `columns`, directly or through other features, in the contract's order:
    a date's parts, a ratio, a window over it. Excluding a leak excludes them too: `last_activity`'s day and
    weekday carried on its leak (and made the model need the date to score) when only the date was left out."""
    out: set[str] = set(columns)
    grew = True
    while grew:
        grew = False
        for t in contract.features:
            if t.name not in out and any(c in out for c in t.columns):
                out.add(t.name)
                grew = True
    return [t.name for t in contract.features if t.name in out and t.name not in columns]


def summary(findings: list[Finding], policy: str, derived: list[str] | None = None) -> dict[str, Any]:
    """What the run records: the policy, what it did, and every finding. `derived`: the features computed from
    the flagged columns, which `exclude` leaves out with them (`excluded` lists both)."""
    derived = list(derived or []) if policy == "exclude" and findings else []
    action = {"refuse": "promotion refused", "exclude": "columns excluded from training",
              "warn": "trained with the columns; promotion allowed"}[policy] if findings else "none"
    if derived:
        action += f" with the features derived from them ({', '.join(derived)})"
    columns = [f.column for f in findings]
    return {"policy": policy, "action": action, "columns": columns,
            **({"excluded": [*columns, *derived]} if policy == "exclude" and findings else {}),
            "findings": [f.to_dict() for f in findings]}


def excluded(leakage: dict[str, Any] | None) -> list[str]:
    """The columns a run left out of training as leaks (a run recorded before `excluded` left out its `columns`)."""
    if not leakage or leakage.get("policy") != "exclude":
        return []
    return list(leakage.get("excluded", leakage.get("columns", [])))


def reasons(leakage: dict[str, Any] | None) -> list[str]:
    """The gate's reasons to refuse promotion, from a run's leakage record (none unless the policy refuses)."""
    if not leakage or leakage.get("policy") != "refuse" or not leakage.get("findings"):
        return []
    return [f"leakage: {f['message']} (training.leakage: refuse; set exclude to train without it)"
            for f in leakage["findings"]]


def brief(leakage: dict[str, Any] | None) -> str | None:
    """One line for `runs show`, `models show` and `trace`: the flagged columns, how, and the policy's action."""
    if not leakage or not leakage.get("findings"):
        return None

    def one(f: dict[str, Any]) -> str:
        where = f", where present ({f['present_share']:.0%} of rows)" if f.get("present_share") is not None else ""
        return f"{f['column']!r} ({f['kind']}, {f['measure']} {f['score']:.3f}{where})"

    return (f"leakage: {', '.join(one(f) for f in leakage['findings'])}; training.leakage: {leakage['policy']}, "
            f"{leakage['action']}")
