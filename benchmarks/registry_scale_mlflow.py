"""MLflow's model registry on SQLite at the same sizes as benchmarks/registry_scale.py, for comparison.

Run by registry_scale.py with `--mlflow PYTHON` (an interpreter from a venv with `pip install mlflow`), or alone:

    /tmp/registry-mlflow-venv/bin/python benchmarks/registry_scale_mlflow.py [--sizes 10,100,1000,10000]

register = `create_model_version`, alias = `get_model_version_by_alias`, show = `search_model_versions` of one
page of 20, set alias = `set_registered_model_alias`. MLflow has no "which version was the champion at T".
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    import mlflow
    from mlflow import MlflowClient

    workdir = tempfile.mkdtemp(prefix="registry-mlflow-")
    uri = f"sqlite:///{workdir}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = "scale"
    client.create_registered_model(name)
    count = 0
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        t = time.perf_counter()
        while count < size:
            count += 1
            version = client.create_model_version(name, source=f"s3://bucket/models/{count}", run_id=None)
            if count % 50 == 1:
                client.set_registered_model_alias(name, "champion", version.version)
        populate_s = time.perf_counter() - t
        timings: dict[str, list[float]] = {"register": [], "set_alias": [], "alias": [], "show": []}
        for rep in range(args.reps):
            count += 1
            created: list[Any] = []
            ops: dict[str, Callable[[], Any]] = {
                "register": lambda: created.append(client.create_model_version(  # noqa: B023
                    name, source=f"s3://bucket/models/{count}", run_id=None)),  # noqa: B023
                "set_alias": lambda: client.set_registered_model_alias(
                    name, "champion", created[-1].version),  # noqa: B023
                "alias": lambda: client.get_model_version_by_alias(name, "champion"),
                "show": lambda: client.search_model_versions(f"name='{name}'", max_results=20,
                                                             order_by=["version_number DESC"]),
            }
            for op_name, op in ops.items():
                t = time.perf_counter()
                op()
                if rep:
                    timings[op_name].append(time.perf_counter() - t)
        row = {"versions": size, "populate_s": round(populate_s, 1),
               **{f"{k}_ms": round(statistics.median(v) * 1000, 1) for k, v in timings.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(f"MLflow {mlflow.__version__} registry on SQLite (medians of {args.reps - 1} calls, one warm client)")
    print("| versions | populate | register | set alias | alias | show (one page of 20) | --at |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['versions']:,} | {r['populate_s']} s | {r['register_ms']} ms | {r['set_alias_ms']} ms | "
              f"{r['alias_ms']} ms | {r['show_ms']} ms | n/a |")


if __name__ == "__main__":
    main()
