"""Would an equal-weight blend of LightGBM and a linear model help where Sluice loses? A probe, not the chain.

On the small datasets of benchmarks/model_quality.py (breast cancer, wine, digits, diabetes), on the same seeded
test splits, it scores a default LightGBM, a standardised linear model (logistic regression C=1, or ridge alpha=1)
and the average of their predictions. Both members are formats Sluice stores without pickle (LightGBM text, the
linear JSON of ml/linear.py), so a blend of them could ship; this measures whether it is worth building.

    .venv/bin/python benchmarks/blend_probe.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.model_quality import SPLIT_SEED, labels, split
from benchmarks.quality_data import all_datasets
from sluice.ml import modeling
from sluice.ml.contract import DEFAULT_METRIC, HIGHER_IS_BETTER

SMALL = ("breast_cancer", "wine", "digits", "diabetes")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import lightgbm as lgb
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    warnings.filterwarnings("ignore")
    print(f"{'dataset':14} {'metric':9} {'lgbm':>9} {'linear':>9} {'blend':>9}   (mean over {args.repeats} splits)")
    for data in all_datasets():
        if data.name.split()[0] not in SMALL:
            continue
        metric = DEFAULT_METRIC[data.task]  # type: ignore[index]
        classes = None if data.task == "regression" else sorted({str(v) for v in data.frame[data.target]})
        k = len(classes) if classes else None
        totals: dict[str, list[float]] = {"lgbm": [], "linear": [], "blend": []}
        for repeat in range(args.repeats):
            dev, test = split(data.frame, SPLIT_SEED + repeat)
            X, Xt = dev.drop(data.target).to_numpy(), test.drop(data.target).to_numpy()
            y, yt = labels(dev, data.target, classes), labels(test, data.target, classes)
            scaler = StandardScaler().fit(X)
            if classes is None:
                a = lgb.LGBMRegressor(verbose=-1, n_jobs=1).fit(X, y).predict(Xt)
                b = Ridge(alpha=1.0).fit(scaler.transform(X), y).predict(scaler.transform(Xt))
            else:
                a = lgb.LGBMClassifier(verbose=-1, n_jobs=1).fit(X, y).predict_proba(Xt)
                b = LogisticRegression(C=1.0, max_iter=500).fit(scaler.transform(X), y).predict_proba(
                    scaler.transform(Xt))
                if k == 2:
                    a, b = a[:, 1], b[:, 1]
            for name, scores in (("lgbm", a), ("linear", b), ("blend", (a + b) / 2)):
                totals[name].append(modeling.score(metric, yt, scores, k))
        means = {name: float(np.mean(v)) for name, v in totals.items()}
        arrow = "↑" if HIGHER_IS_BETTER[metric] else "↓"
        print(f"{data.name.split()[0]:14} {metric + ' ' + arrow:9} "
              + " ".join(f"{means[n]:9.4f}" for n in ("lgbm", "linear", "blend")))
    print(f"load average {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
