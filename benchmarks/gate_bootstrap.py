"""The gate's paired bootstrap on roc_auc: ranking every resample (before) against sorting once (now).

    .venv/bin/python benchmarks/gate_bootstrap.py [--rows 2000 20000] [--resamples 1000] [--repeats 5]

For each holdout size, times `gate.paired_bootstrap("roc_auc", ...)` as the gate calls it (candidate and reference,
the same resampled rows) with the AUC computed two ways in the same run, alternating:
- before: `scipy.stats.rankdata` on every resample (the implementation this replaced, kept here verbatim);
- now: `gate.resampled_auc`, one sort of the scores and a count per (score, class) per resample.
Prints the medians, the ratio, whether the intervals are identical, and the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rankdata_auc(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The AUC before: average ranks of every resample (ties count half)."""
    from scipy.stats import rankdata

    with np.errstate(divide="ignore", invalid="ignore"):
        yy = (y[idx] == 1).astype(float)
        ranks = rankdata(s[idx], axis=1)
        pos = yy.sum(axis=1)
        neg = idx.shape[1] - pos
        auc = ((ranks * yy).sum(axis=1) - pos * (pos + 1) / 2) / (pos * neg)
        return np.where((pos > 0) & (neg > 0), auc, np.nan)


def run(auc: Callable[..., np.ndarray], y: np.ndarray, candidate: np.ndarray, reference: np.ndarray,
        resamples: int) -> tuple[float, Any]:
    """Seconds for the gate's bootstrap with `auc` as its AUC, and the interval it gave."""
    from sluice.ml import gate

    fast = gate.resampled_auc
    gate.resampled_auc = auc  # type: ignore[assignment]
    try:
        t = time.perf_counter()
        ci = gate.paired_bootstrap("roc_auc", True, y, candidate, reference, resamples=resamples, seed=0)
        return time.perf_counter() - t, ci
    finally:
        gate.resampled_auc = fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000, 20_000])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from sluice.ml import gate

    fast = gate.resampled_auc
    print(f"paired bootstrap, roc_auc, {args.resamples} resamples, median of {args.repeats} (alternating)")
    print(f"{'rows':>8} {'before s':>10} {'now s':>10} {'speed-up':>9}  identical intervals")
    for n in args.rows:
        rng = np.random.default_rng(n)
        y = (rng.random(n) < 0.3).astype(int)
        candidate = np.round(y + rng.normal(0, 0.8, n), 3)  # rounded: model scores tie, as trees' do
        reference = np.round(y + rng.normal(0, 1.2, n), 3)

        scores = (y, candidate, reference, args.resamples)
        before, now = [], []
        run(fast, *scores), run(rankdata_auc, *scores)  # warm-up: imports, caches
        for _ in range(args.repeats):
            t_old, ci_old = run(rankdata_auc, *scores)
            t_new, ci_new = run(fast, *scores)
            before.append(t_old)
            now.append(t_new)
        b, a = statistics.median(before), statistics.median(now)
        same = (ci_old.estimate, ci_old.low, ci_old.high, ci_old.candidate, ci_old.reference) == \
            (ci_new.estimate, ci_new.low, ci_new.high, ci_new.candidate, ci_new.reference)
        print(f"{n:>8} {b:>10.3f} {a:>10.3f} {b / a:>8.1f}x  {same}  "
              f"[{ci_new.low:+.4f}, {ci_new.high:+.4f}]")
    print(f"load average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
