"""The train stage's own work outside FLAML, part by part: this checkout against a git ref, in the same run.

    .venv/bin/python benchmarks/training_parts.py [--against main] [--rows 100000] [--repeats 5]

On synthetic rows (`--rows` x 20 numeric features and a class target, as benchmarks/training_overhead.py), times
the parts of the stage that are Sluice's: the holdout split, the encoding, the labels, the drift profile and
the two plots. The ref's `ml/modeling.py` and `ml/drift.py` are read with `git show` and run beside this
checkout's, alternating; their outputs are checked to be identical. Prints medians, ratios and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def module_at(ref: str, path: str, name: str) -> types.ModuleType:
    """`path` as it is at git `ref`, as a module (it imports the rest of sluice from this checkout)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:{path}"], check=True, capture_output=True,
                            text=True).stdout
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, f"{ref}:{path}", "exec"), module.__dict__)
    return module


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    return bool(a == b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="main")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import polars as pl
    from sklearn.datasets import make_classification

    from sluice.handlers.train import plot_importance, plot_loss_curve
    from sluice.ml import drift, modeling
    from sluice.ml.contract import infer_contract

    old_modeling = module_at(args.against, "ml/modeling.py", "old_modeling")
    old_drift = module_at(args.against, "ml/drift.py", "old_drift")
    X, y = make_classification(n_samples=args.rows, n_features=20, n_informative=8, random_state=0)
    frame = pl.DataFrame(X, schema=[f"x{i}" for i in range(20)]).with_columns(target=pl.Series(y).cast(pl.Utf8))
    contract = infer_contract(frame, "bench", "target", 10.0, debounce_s=0)
    encoding = modeling.Encoding.fit(frame, contract)
    old_encoding = old_modeling.Encoding.fit(frame, contract)
    trials = [{"loss": 1 / (i + 1), "wall_clock_s": 0.25 * i} for i in range(60)]
    importance = {f"x{i}": 1 / (i + 1) for i in range(20)}

    parts: dict[str, tuple[Callable[[], Any], Callable[[], Any] | None]] = {
        # The ref's default split against this checkout's (version 2 since the split was versioned: a different
        # split by design, so "identical" is False against a ref that predates it).
        "holdout split (default version)": (lambda: old_modeling.holdout_mask(frame, 0.2, 42),
                                            lambda: modeling.holdout_mask(frame, 0.2, 42)),
        "encoding fit": (lambda: old_modeling.Encoding.fit(frame, contract).to_dict(),
                         lambda: modeling.Encoding.fit(frame, contract).to_dict()),
        "labels": (lambda: old_encoding.labels(frame), lambda: encoding.labels(frame)),
        "drift reference profile": (lambda: old_drift.reference_profile(frame, exclude=("target",)),
                                    lambda: drift.reference_profile(frame, exclude=("target",))),
        "plot: loss curve (png)": (lambda: plot_loss_curve(trials, "run"), None),
        "plot: importance (png)": (lambda: plot_importance(importance, "run"), None),
    }
    print(f"{args.rows:,} rows x 20 features; median of {args.repeats}, {args.against} and this checkout alternating")
    print(f"{'part':32} {args.against + ' ms':>10} {'now ms':>10} {'ratio':>7}  identical")
    total_old = total_new = 0.0
    for name, (old, new) in parts.items():
        old(), new() if new else None  # warm-up: imports, caches
        t_old, t_new = [], []
        for _ in range(args.repeats):
            for fn, into in ((old, t_old), (new or old, t_new)):
                t = time.perf_counter()
                fn()
                into.append(time.perf_counter() - t)
        a, b = statistics.median(t_old) * 1000, statistics.median(t_new) * 1000
        total_old, total_new = total_old + a, total_new + b
        print(f"{name:32} {a:10.1f} {b:10.1f} {a / b:6.1f}x  "
              f"{'(unchanged)' if new is None else same(old(), new())}")
    print(f"{'total':32} {total_old:10.1f} {total_new:10.1f} {total_old / total_new:6.1f}x")
    print(f"load average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
