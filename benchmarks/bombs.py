"""Bounded work for hostile input: big bombs against validation with the default limits, each in its own process.

For each bomb it prints the outcome (the limit that stopped it), the wall time, and the peak RSS of the process
that validated it, so the cost of an attack is a figure, not a guess. Files are generated under --workdir.

    .venv/bin/python benchmarks/bombs.py                 # 1 GiB gzip bomb, 200 MB cell, 200 MB header, ...
    .venv/bin/python benchmarks/bombs.py --quick         # smaller bombs (a smoke run)
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import polars as pl

from sluice.ml.contract import Contract, infer_contract


def sample() -> bytes:
    return resources.files("sluice").joinpath("data/breast_cancer.csv").read_bytes()


def contract(kind: str) -> Contract:
    if kind == "rows":
        return Contract.model_validate({"dataset": "bomb", "target": "y", "task": "binary", "metric": "roc_auc",
                                        "columns": {"a": {"dtype": "int"}, "y": {"dtype": "str"}}})
    return infer_contract(pl.read_csv(io.BytesIO(sample())), "cancer", "diagnosis")


def make(kind: str, workdir: Path, scale: float) -> Path:
    header, row = sample().split(b"\n")[:2]
    mb = 1 << 20
    if kind == "gzip":
        path = workdir / "bomb.csv.gz"
        block = (row + b"\n") * (mb // (len(row) + 1))
        with gzip.open(path, "wb", compresslevel=9) as gz:
            gz.write(header + b"\n")
            for _ in range(int(1024 * scale)):
                gz.write(block)
    elif kind == "cell":
        path = workdir / "cell.csv"
        with open(path, "wb") as f:
            f.write(header + b"\n" + row + b"\n")
            for _ in range(int(200 * scale)):
                f.write(b"9" * mb)
            f.write(row[row.index(b","):] + b"\n")
    elif kind == "header":
        path = workdir / "header.csv"
        with open(path, "wb") as f:
            for _ in range(int(200 * scale)):
                f.write(b"x" * mb)
            f.write(b"," + header + b"\n" + row + b"\n")
    elif kind == "wide":
        path = workdir / "wide.csv"
        n = int(100_000 * scale)
        path.write_bytes(",".join(f"c{i}" for i in range(n)).encode() + b"\n" + b",".join([b"1"] * n) + b"\n")
    elif kind == "rows":
        path = workdir / "rows.csv"
        with open(path, "wb") as f:
            f.write(b"a,y\n")
            for _ in range(int(11 * scale) + 1):
                f.write(b"1,a\n" * 1_000_000)
    else:
        raise SystemExit(f"unknown bomb {kind}")
    return path


def child(kind: str, path: Path) -> None:
    from sluice.core.errors import InputError, clip
    from sluice.ml.validation import validate_file

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sluice-bomb-") as tmp:
        try:
            split = validate_file(path, f"incoming/x/{path.name}", contract(kind), Path(tmp))
            outcome, message = "validated", f"{split.rows_total} rows"
        except InputError as err:
            limit = err.details.get("limit", {}).get("name", "")
            outcome, message = err.reason, f"limits.{limit}: " + clip(err.message.split(", over the limit")[0], 90)
    print(json.dumps({"outcome": outcome, "message": message, "seconds": round(time.perf_counter() - t0, 2),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="bombs a tenth of the size")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "sluice-bombs")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    scale = 0.1 if args.quick else 1.0
    print(f"{'bomb':<8} {'file MB':>9} {'outcome':<16} {'s':>6} {'peak RSS MB':>12}  message")
    for kind in ("gzip", "cell", "header", "wide", "rows"):
        path = make(kind, args.workdir, scale)
        out = subprocess.run([sys.executable, __file__, "--child", kind, str(path)], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{kind:<8} {path.stat().st_size / 2**20:>9.1f} {r['outcome']:<16} {r['seconds']:>6} "
              f"{r['peak_rss_mb']:>12}  {r['message']}")
        path.unlink()


if __name__ == "__main__":
    main()
