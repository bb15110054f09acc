"""Online feature lookups: p50 and p99 latency of `sluice features get` reads, against the offline store.

Writes the latest vector of --entities entities (--features features each) to Redis through the online store
(infra/online.py), then times --lookups single-entity reads of random entities. The baseline, in the same
run, is the same read from the offline Parquet feature set (a polars filter on the file), which is what a
service without an online store would do.

    .venv/bin/python benchmarks/online_lookup.py [--redis redis://127.0.0.1:6379/14]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import polars as pl

from sluice.infra.online import RedisOnline

WORKDIR = Path("/tmp/sluice-bench/online")


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99, in milliseconds."""
    a = np.asarray(samples) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--lookups", type=int, default=5_000)
    parser.add_argument("--offline-lookups", type=int, default=200)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    frame = pl.DataFrame({"entity": [f"e{i}" for i in range(args.entities)],
                          "ts": ["2026-01-01T00:00:00"] * args.entities}).hstack(
        pl.DataFrame(rng.random((args.entities, args.features)), schema=[f"f{i}" for i in range(args.features)]))
    WORKDIR.mkdir(parents=True, exist_ok=True)
    offline = WORKDIR / "features.parquet"
    frame.write_parquet(offline)

    namespace = f"sluice-bench-{uuid.uuid4().hex[:6]}"
    store = RedisOnline(args.redis, namespace)
    vectors = {row.pop("entity"): row for row in frame.iter_rows(named=True)}
    t = time.perf_counter()
    written = store.put_many("bench", "fs-bench", vectors, "ts")
    load_s = time.perf_counter() - t

    keys = rng.choice(args.entities, size=args.lookups)
    online = []
    for k in keys:
        t = time.perf_counter()
        got = store.get("bench", f"e{k}")
        online.append(time.perf_counter() - t)
        assert got is not None
    offline_times = []
    for k in keys[: args.offline_lookups]:
        t = time.perf_counter()
        row = pl.scan_parquet(offline).filter(pl.col("entity") == f"e{k}").collect()
        offline_times.append(time.perf_counter() - t)
        assert row.height == 1
    store.redis.delete(*store.redis.keys(f"{namespace}:*"))

    on50, on99 = percentiles(online)
    off50, off99 = percentiles(offline_times)
    print(f"wrote {written:,} vectors of {args.features} features to Redis in {load_s:.2f} s "
          f"({written / load_s:,.0f} entities/s)")
    print(f"{'':22} {'p50 ms':>8} {'p99 ms':>8} {'lookups':>8}")
    print(f"{'online (Redis)':22} {on50:8.3f} {on99:8.3f} {len(online):8}")
    print(f"{'offline (Parquet scan)':22} {off50:8.3f} {off99:8.3f} {len(offline_times):8}")
    print(f"offline / online p50: {off50 / on50:.0f}x, mean online {statistics.mean(online) * 1000:.3f} ms")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
