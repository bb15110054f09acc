"""The scenario of Feast issue #3003: 17k labelled entity rows, as-of joined against 1,000 features in Parquet.

Feast reported ~30 minutes and ~50 GB for it. This measures Sluice's point-in-time join (the one training
uses: ml/features.py, polars join_asof, strictly-before, with a TTL) against pandas `merge_asof` doing the
same join, each in its own subprocess so peak RSS is its own, on the same files in the same run.

    .venv/bin/python benchmarks/feast_3003_asof.py [--labels 17000] [--features 1000] [--rows-per-entity 20]

Goal: under 5 s and under 2 GB for Sluice. Figures are medians over --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

WORKDIR = Path("/tmp/sluice-bench/feast3003")
T0 = datetime(2026, 1, 1)


def generate(n_labels: int, n_features: int, rows_per_entity: int) -> tuple[Path, Path]:
    """Feature rows (entity, event time, f0..fN float32) and label rows (entity, label time, target)."""
    import numpy as np
    import polars as pl

    entities = n_labels // 10
    tag = f"{n_labels}-{n_features}-{rows_per_entity}"
    features, labels = WORKDIR / f"features-{tag}.parquet", WORKDIR / f"labels-{tag}.parquet"
    if features.exists() and labels.exists():
        return features, labels
    WORKDIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n_rows = entities * rows_per_entity
    minutes = rng.integers(0, 60 * 24 * 90, n_rows)
    frame = pl.DataFrame({
        "entity": np.repeat(np.arange(entities), rows_per_entity).astype(np.int64),
        "ts": [T0 + timedelta(minutes=int(m)) for m in minutes],
    })
    block = rng.random((n_rows, n_features), dtype=np.float32)
    frame = frame.hstack(pl.DataFrame(block, schema=[f"f{i}" for i in range(n_features)]))
    frame.write_parquet(features)
    label_minutes = rng.integers(60 * 24 * 5, 60 * 24 * 95, n_labels)
    pl.DataFrame({
        "entity": rng.integers(0, entities, n_labels).astype(np.int64),
        "label_time": [T0 + timedelta(minutes=int(m)) for m in label_minutes],
        "y": rng.integers(0, 2, n_labels).astype(str),
    }).write_parquet(labels)
    return features, labels


def run_sluice(features: Path, labels: Path) -> dict[str, float]:
    """Sluice's training-time join."""
    import polars as pl

    from sluice.ml.contract import parse_contract
    from sluice.ml.features import point_in_time_join

    contract = parse_contract("""
dataset: feast
target: y
task: binary
metric: roc_auc
entity: {key: entity, timestamp: ts}
labels: {timestamp: label_time, ttl_days: 30, target: {dtype: str, categories: ["0", "1"]}}
columns: {entity: {dtype: int}, ts: {dtype: datetime}}
""")
    t = time.perf_counter()
    joined = point_in_time_join(pl.read_parquet(labels), pl.read_parquet(features), contract)
    return {"seconds": time.perf_counter() - t, "rows": joined.height, "columns": joined.width,
            "matched": int(joined["f0"].is_not_null().sum())}


def run_pandas(features: Path, labels: Path) -> dict[str, float]:
    """The same join with pandas.merge_asof (sorted inputs, by entity, strictly before, 30-day tolerance)."""
    import pandas as pd

    t = time.perf_counter()
    right = pd.read_parquet(features).sort_values("ts")
    left = pd.read_parquet(labels).sort_values("label_time")
    right["ts"] = right["ts"].astype("datetime64[us]")
    left["label_time"] = left["label_time"].astype("datetime64[us]")
    joined = pd.merge_asof(left, right, left_on="label_time", right_on="ts", by="entity", direction="backward",
                           allow_exact_matches=False, tolerance=pd.Timedelta(days=30))
    return {"seconds": time.perf_counter() - t, "rows": len(joined), "columns": joined.shape[1],
            "matched": int(joined["f0"].notna().sum())}


def child(which: str, features: str, labels: str) -> None:
    """Run one join in this process and print its figures with the peak RSS."""
    result = (run_sluice if which == "sluice" else run_pandas)(Path(features), Path(labels))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(which: str, features: Path, labels: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", which, str(features), str(labels)],
                         check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=17_000)
    parser.add_argument("--features", type=int, default=1_000)
    parser.add_argument("--rows-per-entity", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("WHICH", "FEATURES", "LABELS"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    t = time.perf_counter()
    features, labels = generate(args.labels, args.features, args.rows_per_entity)
    print(f"data: {features.stat().st_size / 1e6:.0f} MB of feature Parquet "
          f"({args.labels // 10 * args.rows_per_entity:,} rows x {args.features} features), "
          f"{args.labels:,} labels; ready in {time.perf_counter() - t:.1f} s")
    results: dict[str, list[dict[str, float]]] = {"sluice": [], "pandas": []}
    for _ in range(args.repeats):
        for which in results:
            results[which].append(measure(which, features, labels))
    print(f"{'':8} {'median s':>9} {'peak RSS MB':>12} {'rows':>7} {'matched':>8}  (runs: {args.repeats})")
    med = {}
    for which, runs in results.items():
        med[which] = statistics.median(r["seconds"] for r in runs)
        rss = statistics.median(r["peak_rss_mb"] for r in runs)
        print(f"{which:8} {med[which]:9.2f} {rss:12.0f} {int(runs[0]['rows']):7} {int(runs[0]['matched']):8}")
    assert results["sluice"][0]["matched"] == results["pandas"][0]["matched"], "the two joins disagree"
    print(f"pandas / sluice wall time: {med['pandas'] / med['sluice']:.1f}x")
    print("goal: sluice under 5 s and 2,048 MB")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
