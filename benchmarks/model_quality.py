"""Model quality of Sluice's training stage at 10, 30 and 60 s budgets, against a default LightGBM.

Three datasets that ship with scikit-learn (no download): breast cancer (binary, ROC AUC), digits
(multiclass, log loss) and diabetes (regression, RMSE). Each uses Sluice's deterministic holdout (20 %, seed
42) and Sluice's training path (core/modeling.train: FLAML AutoML, the contract's metric, lgbm). The baseline,
in the same run on the same rows, is `lightgbm.LGBMClassifier()` / `LGBMRegressor()` with default settings.

    .venv/bin/python benchmarks/model_quality.py [--budgets 10 30 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
from sklearn import datasets

from sluice.core import modeling
from sluice.core.contract import infer_contract

SETS = {
    "breast_cancer (binary, roc_auc ↑)": (datasets.load_breast_cancer, "binary"),
    "digits (multiclass, log_loss ↓)": (datasets.load_digits, "multiclass"),
    "diabetes (regression, rmse ↓)": (datasets.load_diabetes, "regression"),
}


def frame_of(loader: object, task: str) -> pl.DataFrame:
    bunch = loader(as_frame=True)  # type: ignore[operator]
    frame = pl.from_pandas(bunch.frame.rename(columns=lambda c: str(c).replace(" ", "_")))
    if task != "regression":
        frame = frame.with_columns(pl.col("target").cast(pl.Utf8))
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[10, 30, 60])
    args = parser.parse_args()
    import lightgbm as lgb

    rows = []
    for name, (loader, task) in SETS.items():
        frame = frame_of(loader, task)
        contract = infer_contract(frame, "bench", "target", debounce_s=0)
        if contract.task != task:
            contract = contract.model_copy(update={"task": task})
        mask = modeling.holdout_mask(frame, 0.2, 42)
        train, hold = frame.filter(pl.Series(~mask)), frame.filter(pl.Series(mask))
        enc = modeling.Encoding.fit(train, contract)
        X, y, Xh, yh = enc.features(train), enc.labels(train), enc.features(hold), enc.labels(hold)
        n_classes = len(enc.classes) if enc.classes else None
        t = time.perf_counter()
        base = (lgb.LGBMRegressor(verbose=-1) if task == "regression" else lgb.LGBMClassifier(verbose=-1)).fit(X, y)
        base_s = time.perf_counter() - t
        base_scores = base.predict(Xh) if task == "regression" else base.predict_proba(Xh)
        if task == "binary":
            base_scores = base_scores[:, 1]
        base_metric = modeling.score(contract.metric, yh, np.asarray(base_scores), n_classes)
        rows.append((name, "default LightGBM", base_s, base_metric, len(yh)))
        for budget in args.budgets:
            spec = contract.training.model_copy(update={"time_budget_s": budget})
            trained = modeling.train(train, enc, contract.model_copy(update={"training": spec}))
            scores = modeling.Predictor(trained.model_format, trained.model_bytes, contract.task, enc).score(hold)
            metric = modeling.score(contract.metric, yh, scores, n_classes)
            rows.append((name, f"Sluice/FLAML {budget:g}s", trained.fit_seconds, metric, len(yh)))
            print(f"  {name}: {budget:g}s -> {metric:.4f} (default LightGBM {base_metric:.4f})", flush=True)
    print(f"\n{'dataset':38} {'model':20} {'fit s':>7} {'holdout':>9} {'rows':>5}")
    for name, model, seconds, metric, n in rows:
        print(f"{name:38} {model:20} {seconds:7.1f} {metric:9.4f} {n:5}")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
