"""The shipped refit: one fit on every row against a bag of 5 fits, each on all rows but one fold (ml/modeling.py,
BAG_FOLDS), with the same LightGBM configuration (its defaults, and a small one as short searches end on).

Each dataset is split 8 times (seeded, 20 % test rows); both models learn from the same 80 % and score the test
rows. Prints each dataset's mean test score and on how many splits the bag was better.

    .venv/bin/python benchmarks/bag_refit.py [--extra DIR] [--splits 8] [--datasets wine diabetes]

The datasets: benchmarks/quality_data.py's six and scikit-learn's iris; with --extra, every DIR/NAME.parquet that
DIR/datasets.json lists as {"NAME": {"target": ..., "task": "binary" | "multiclass" | "regression"}} (e.g.
statsmodels' and vega_datasets' offline tables, exported with those packages in a virtualenv of their own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.quality_data import all_datasets

CONFIGS = {"default": {}, "small": {"num_leaves": 8, "n_estimators": 150, "learning_rate": 0.05,
                                   "min_child_samples": 10}}


def tables(extra: str | None) -> list[tuple[str, str, str, pd.DataFrame]]:
    from sklearn.datasets import load_iris

    out = [(d.name.split()[0], d.target, d.task, d.frame.to_pandas()) for d in all_datasets()]
    iris = load_iris(as_frame=True).frame
    out.append(("iris", "target", "multiclass", iris))
    if extra:
        for name, meta in json.loads((Path(extra) / "datasets.json").read_text()).items():
            if name not in {t[0] for t in out}:
                out.append((name, meta["target"], meta["task"], pd.read_parquet(Path(extra) / f"{name}.parquet")))
    return out


def prepared(frame: pd.DataFrame) -> pd.DataFrame:
    """Dates as day numbers, text as pandas categories (LightGBM's own categorical handling)."""
    frame = frame.copy()
    for c in frame.columns:
        first = frame[c].dropna().iloc[0] if frame[c].notna().any() else None
        if pd.api.types.is_datetime64_any_dtype(frame[c]) or hasattr(first, "toordinal"):
            frame[c] = pd.to_datetime(frame[c]).astype("int64") // 86_400_000_000_000
        elif not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]):
            frame[c] = frame[c].astype(str).astype("category")
    return frame


def scored(model: Any, X: pd.DataFrame, task: str, classes: np.ndarray) -> np.ndarray:
    """Values, or every class's probability (a class a fit never saw: 0)."""
    if task == "regression":
        return np.asarray(model.predict(X))
    out = np.zeros((len(X), len(classes)))
    out[:, np.searchsorted(classes, model.classes_)] = model.predict_proba(X)
    return out


def metric(p: np.ndarray, y: pd.Series, task: str, classes: np.ndarray) -> float:
    """ROC AUC (binary), log loss (multiclass) or RMSE (regression), as benchmarks/model_quality.py judges."""
    from sklearn.metrics import log_loss, mean_squared_error, roc_auc_score

    if task == "regression":
        return float(mean_squared_error(y, p) ** 0.5)
    if task == "binary":
        return float(roc_auc_score(y, p[:, 1]))
    return float(log_loss(y, np.clip(p, 1e-15, 1), labels=classes))


def main() -> None:
    import lightgbm as lgb
    from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--extra", help="a folder of more datasets (see above)")
    parser.add_argument("--splits", type=int, default=8)
    parser.add_argument("--datasets", nargs="*")
    args = parser.parse_args()
    load0 = os.getloadavg()
    wins = total = 0
    for name, target, task, frame in tables(args.extra):
        if args.datasets and name not in args.datasets:
            continue
        X = prepared(frame.drop(columns=[target]))
        y = pd.Series(pd.factorize(frame[target].astype(str), sort=True)[0]) if task != "regression" \
            else frame[target].astype(float)
        scores: dict[tuple[str, str], list[float]] = {}
        for split in range(args.splits):
            train_X, test_X, train_y, test_y = train_test_split(
                X, y, test_size=0.2, random_state=split, stratify=y if task != "regression" else None)
            classes = np.unique(y)
            est = lgb.LGBMRegressor if task == "regression" else lgb.LGBMClassifier
            folds = (KFold(5, shuffle=True, random_state=split) if task == "regression"
                     else StratifiedKFold(5, shuffle=True, random_state=split))
            for cname, config in CONFIGS.items():
                one = scored(est(verbose=-1, n_jobs=1, random_state=0, **config).fit(train_X, train_y), test_X, task,
                             classes)
                bag = np.mean([scored(est(verbose=-1, n_jobs=1, random_state=0, **config).fit(
                    train_X.iloc[rows], train_y.iloc[rows]), test_X, task, classes)
                    for rows, _ in folds.split(train_X, train_y)], axis=0)
                scores.setdefault((cname, "single"), []).append(metric(one, test_y, task, classes))
                scores.setdefault((cname, "bag"), []).append(metric(bag, test_y, task, classes))
        line = f"{name:16} {task:10}"
        for cname in CONFIGS:
            single, bag = scores[(cname, "single")], scores[(cname, "bag")]
            better = sum((b > s) if task == "binary" else (b < s) for s, b in zip(single, bag, strict=True))
            wins, total = wins + better, total + len(single)
            line += (f"  {cname}: single {np.mean(single):.4f} bag {np.mean(bag):.4f} "
                     f"(bag better on {better}/{len(single)})")
        print(line, flush=True)
    print(f"\nthe bag better than the single fit on {wins} of {total} splits (ROC AUC higher; log loss, RMSE lower)")
    print(f"load average at start {load0[0]:.1f}, at end {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    print("command: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
