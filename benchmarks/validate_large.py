"""Benchmark Sluice's streaming CSV validation on a large file, next to polars' CSV reader and pandas + pandera.

What it measures (figures are printed, never asserted):

1. Full file: `sluice.ml.validation.validate_file` on a generated CSV of `--size-gb` (default 2 GB; 12 columns of
   ints, floats, nullable columns, a 5-category string, a date, a datetime and a yes/no target, with ~0.1% of rows
   holding an invalid cell: out-of-range ints, unknown categories, text in a float column), and in the same run,
   interleaved, the reader: `pl.scan_csv(path, infer_schema=False).collect()` of the same file as text, `--repeats`
   times each. Reported: file size, rows, valid and quarantined rows, median wall time, throughput, the ratio
   sluice/reader (goal >= 0.5), and the peak RSS of the process that ran it (goal <= 1.5 GB).
2. Comparison: on a ~200 MB slice of the same CSV (the header and the first lines), Sluice's `validate_file`, the
   reader, a baseline doing the same work with pandas + pandera (`read_csv`; the numeric columns typed with
   `to_numeric`, a cell that does not cast failing its row; a pandera pandas schema with the same checks,
   `validate(lazy=True)`; rows split by the failure cases' index; the valid rows written to LZ4 Parquet and the
   invalid ones to snappy, as Sluice writes them), and pandas' `read_csv` alone, `--repeats` times each,
   interleaved. Reported: median times, CPU seconds, peak RSS, the ratio baseline/sluice (goal >= 5), whether both
   found the same failing cells, and the bare readers' times, which bound the ratio. pandas' reader raises on a
   line with too many fields and on bad UTF-8 as Sluice does, but does not name a line with too few.

The machine's load average is printed before and after: on a shared machine, compare the ratios of one run. Each
operation's CPU seconds (user + system, all threads) are printed too: they depend far less on the load than wall time.

Every measured run is a fresh subprocess of this script, so its peak RSS (`ru_maxrss` from `os.wait4`) is its own;
the parent also polls /proc/<pid>/status for the peak anonymous RSS, which leaves out page-cache pages of a mapped
input file. "op s" is the time of the operation inside the child (imports excluded), "proc s" the whole process.
Before its measured run, each child runs its operation once on the file's first 2,000 lines (not timed), so what
is timed is a warm process, as a worker's is after its first file: pandera imports its backends on the first
validation, and with them hypothesis when it is installed (the test extras; a production install does not have
it), which took 0.25 s of Sluice's first validation and 0.33 s of the baseline's (2026-11-29). `--cold` leaves the
warm-up out.

The CSV is deterministic (seeded), generated in bounded memory a chunk at a time, and cached under `--workdir`
(default /tmp/sluice-bench): it is reused while its size matches its sidecar .json.

Run from the repository root:

    .venv/bin/python benchmarks/validate_large.py --quick      # 200 MB file, 1 repeat: a smoke run
    .venv/bin/python benchmarks/validate_large.py              # 2 GB file, 3 repeats; 3 repeats on a 200 MB slice
    .venv/bin/python benchmarks/validate_large.py --size-gb 0.5 --slice-mb 100   # on a loaded machine
    .venv/bin/python benchmarks/validate_large.py --size-gb 4 --repeats 5 --workdir /data/bench
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sluice.ml.contract import ColumnSpec, Contract, LimitsSpec

KEY = "incoming/bench/big.csv"
SEED = 20240601
FORMAT = 1  # bump when the generated data changes, so cached files are regenerated
CHUNK_ROWS = 1_000_000
MB = 1024 * 1024
GOAL_RSS_MB = 1.5 * 1024
SEGMENTS = ["bronze", "silver", "gold", "platinum", "enterprise"]
SEGMENT_WEIGHTS = [0.40, 0.30, 0.17, 0.09, 0.04]
BAD_SEGMENTS = ["diamond", "Gold ", "unknown"]
BAD_AGES = [-1, 150, 999]
BAD_INCOMES = ["abc", "12.5.1", "unknown", "$1200"]  # none of them is in pandas' default na_values
# Per-row probability of each kind of invalid cell: about 0.1% of rows in all.
P_BAD_AGE, P_BAD_SEGMENT, P_BAD_INCOME = 0.0004, 0.0003, 0.0003
EPOCH_2015_DAYS = (date(2015, 1, 1) - date(1970, 1, 1)).days
EPOCH_2024_S = (date(2024, 1, 1) - date(1970, 1, 1)).days * 86_400


def bench_contract() -> Contract:
    """The contract of the generated CSV: types, nullability, ranges, categories."""
    return Contract(
        dataset="bench", target="churned", task="binary", metric="roc_auc", max_invalid_fraction=0.01,
        # Bigger than the default limits (2 GiB, 10 M rows), as a contract for a big dataset would say.
        limits=LimitsSpec(max_file_bytes=64 << 30, max_rows=1_000_000_000),
        columns={
            "customer_id": ColumnSpec(dtype="int", min=1),
            "age": ColumnSpec(dtype="int", min=18, max=100),
            "tenure_months": ColumnSpec(dtype="int", min=0, max=240),
            "n_purchases": ColumnSpec(dtype="int", nullable=True, min=0, max=10_000),
            "income": ColumnSpec(dtype="float", nullable=True, min=0, max=10_000_000),
            "balance": ColumnSpec(dtype="float", min=-1_000_000, max=1_000_000),
            "score": ColumnSpec(dtype="float", nullable=True, min=0, max=1),
            "discount": ColumnSpec(dtype="float", min=0, max=1),
            "segment": ColumnSpec(dtype="str", categories=SEGMENTS),
            "signup_date": ColumnSpec(dtype="date"),
            "last_seen": ColumnSpec(dtype="datetime"),
            "churned": ColumnSpec(dtype="str", categories=["no", "yes"]),
        },
    )


# -- data ---------------------------------------------------------------------------------------------------------


def make_chunk(index: int, first_id: int, rows: int) -> tuple[pl.DataFrame, int]:
    """Chunk `index` of the CSV (deterministic), and how many of its rows hold an invalid cell."""
    rng = np.random.default_rng([SEED, index])

    def share(p: float) -> np.ndarray:
        return rng.random(rows) < p

    def with_nulls(values: np.ndarray, p: float) -> pl.Series:
        return pl.Series(values).scatter(np.flatnonzero(share(p)), None)

    age = rng.integers(18, 91, rows)
    bad_age = share(P_BAD_AGE)
    age[bad_age] = rng.choice(BAD_AGES, int(bad_age.sum()))
    segment = np.array(SEGMENTS, dtype=object)[rng.choice(len(SEGMENTS), rows, p=SEGMENT_WEIGHTS)]
    bad_segment = share(P_BAD_SEGMENT)
    segment[bad_segment] = rng.choice(BAD_SEGMENTS, int(bad_segment.sum()))
    income = with_nulls(np.round(rng.lognormal(10.8, 0.5, rows), 2), 0.02).cast(pl.Utf8).to_numpy().astype(object)
    bad_income = share(P_BAD_INCOME)
    income[bad_income] = rng.choice(BAD_INCOMES, int(bad_income.sum()))
    frame = pl.DataFrame({
        "customer_id": np.arange(first_id, first_id + rows, dtype=np.int64),
        "age": age,
        "tenure_months": rng.integers(0, 241, rows),
        "n_purchases": with_nulls(rng.poisson(12, rows), 0.01),
        "income": pl.Series(income, dtype=pl.Utf8),
        "balance": np.round(rng.normal(2_000, 5_000, rows), 2),
        "score": with_nulls(np.round(rng.random(rows), 4), 0.05),
        "discount": np.round(rng.beta(2, 8, rows), 3),
        "segment": pl.Series(segment, dtype=pl.Utf8),
        "signup_date": pl.Series(EPOCH_2015_DAYS + rng.integers(0, 3_650, rows), dtype=pl.Int32).cast(pl.Date),
        "last_seen": pl.Series((EPOCH_2024_S + rng.integers(0, 365 * 86_400, rows)) * 1_000_000).cast(
            pl.Datetime("us")),
        "churned": np.where(rng.random(rows) < 0.2, "yes", "no"),
    })
    return frame, int((bad_age | bad_segment | bad_income).sum())


def _cached(path: Path, wanted: dict[str, Any]) -> dict[str, Any] | None:
    meta = path.with_suffix(".json")
    if not (path.exists() and meta.exists()):
        return None
    info: dict[str, Any] = json.loads(meta.read_text())
    same = all(info.get(k) == v for k, v in wanted.items())
    return info if same and path.stat().st_size == info.get("bytes") else None


def generate(path: Path, size_bytes: int) -> dict[str, Any]:
    """Write the CSV (at least `size_bytes`) a chunk at a time, or reuse it; returns its rows, bytes, invalid rows."""
    wanted = {"format": FORMAT, "seed": SEED, "target_bytes": size_bytes}
    if info := _cached(path, wanted):
        print(f"reusing {path} ({info['bytes'] / MB:,.0f} MB, {info['rows']:,} rows)", flush=True)
        return info
    print(f"generating {path} ({size_bytes / MB:,.0f} MB) ...", flush=True)
    started = time.perf_counter()
    partial = path.with_suffix(".partial")
    rows = bad = index = 0
    with open(partial, "wb") as out:
        while (written := out.tell()) < size_bytes:
            # Size the last chunk from the bytes per row so far, so the file ends close to the target.
            n = CHUNK_ROWS if rows == 0 else min(CHUNK_ROWS, math.ceil((size_bytes - written) / (written / rows)))
            frame, n_bad = make_chunk(index, rows + 1, n)
            frame.write_csv(out, include_header=index == 0, date_format="%Y-%m-%d",
                            datetime_format="%Y-%m-%d %H:%M:%S")
            rows, bad, index = rows + n, bad + n_bad, index + 1
    info = {**wanted, "bytes": partial.stat().st_size, "rows": rows, "invalid_rows": bad}
    partial.rename(path)
    path.with_suffix(".json").write_text(json.dumps(info))
    print(f"  {rows:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
    return info


def make_slice(source: Path, path: Path, slice_bytes: int) -> dict[str, Any]:
    """The header and the first whole lines of `source`, up to `slice_bytes` (cached like the source)."""
    wanted = {"source": str(source), "source_bytes": source.stat().st_size, "slice_bytes": slice_bytes}
    if info := _cached(path, wanted):
        return info
    with open(source, "rb") as src:
        head = src.read(slice_bytes)
    head = head[: head.rfind(b"\n") + 1]
    partial = path.with_suffix(".partial")
    partial.write_bytes(head)
    info = {**wanted, "bytes": len(head), "rows": head.count(b"\n") - 1}
    partial.rename(path)
    path.with_suffix(".json").write_text(json.dumps(info))
    return info


# -- the measured work, run in a child process -------------------------------------------------------------------


def _cpu() -> float:
    """User + system seconds of this process so far, all threads."""
    t = os.times()
    return t.user + t.system


def run_sluice(csv: Path, scratch: Path) -> dict[str, Any]:
    """Sluice's validate_file on `csv`, its outputs in a temporary folder under `scratch`."""
    from sluice.ml.validation import validate_file

    contract = bench_contract()
    with tempfile.TemporaryDirectory(dir=scratch, prefix="sluice-out-") as out:
        started, cpu = time.perf_counter(), _cpu()
        split = validate_file(csv, KEY, contract, Path(out))
        seconds, cpu = time.perf_counter() - started, _cpu() - cpu
        outputs = {p.name: p.stat().st_size for p in (split.valid_path, split.invalid_path) if p is not None}
    return {"seconds": seconds, "cpu_s": cpu, "rows": split.rows_total, "valid": split.rows_valid,
            "invalid": split.rows_invalid,
            "outputs_mb": {k: round(v / MB, 1) for k, v in outputs.items()},
            "rules": {f"{c}: {r}": n for (c, r), n in split.rule_counts.most_common()}}


def run_reader(csv: Path, scratch: Path) -> dict[str, Any]:
    """The yardstick: polars' CSV reader, every column as text, the whole file into memory."""
    started, cpu = time.perf_counter(), _cpu()
    frame = pl.scan_csv(csv, infer_schema=False).collect()
    seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    return {"seconds": seconds, "cpu_s": cpu, "rows": frame.height, "valid": frame.height, "invalid": 0}


def pandera_schema(contract: Contract) -> Any:
    """The pandera pandas schema with the contract's checks: dtype (coerced), nullability, ranges, categories."""
    import pandera.pandas as pa

    types = {"int": "int64", "float": "float64", "str": str, "bool": "boolean",
             "date": "datetime64[ns]", "datetime": "datetime64[ns]"}
    columns = {}
    for name, spec in contract.columns.items():
        checks = []
        if spec.min is not None and spec.max is not None:
            checks.append(pa.Check.in_range(spec.min, spec.max))
        elif spec.min is not None:
            checks.append(pa.Check.ge(spec.min))
        elif spec.max is not None:
            checks.append(pa.Check.le(spec.max))
        if spec.categories is not None:
            checks.append(pa.Check.isin(spec.categories))
        # A nullable int column is float64 after read_csv; pandas' Int64 keeps it integer with nulls.
        dtype = "Int64" if spec.dtype == "int" and spec.nullable else types[spec.dtype]
        columns[name] = pa.Column(dtype, checks=checks, nullable=spec.nullable)
    return pa.DataFrameSchema(columns, strict=True, coerce=True, name=contract.dataset)


def run_pandera(csv: Path, scratch: Path) -> dict[str, Any]:
    """The baseline: the same work as Sluice's, the way a pandas user writes it. pandas read_csv; the numeric
    columns typed first (`pd.to_numeric(errors="coerce")`, a non-empty cell that does not cast is its row's
    failure), so pandera's checks run on every column's values, as Sluice's do (with `coerce=True` alone, one bad
    cell in a float column fails its range check for the whole column, with no row, and the check never runs);
    pandera validate(lazy=True) with coercion for the rest; rows split by the failure cases' index; the valid rows
    (LZ4) and the invalid ones with their reasons (snappy) written to Parquet, as Sluice writes them."""
    import pandas as pd
    from pandera.errors import SchemaErrors

    contract = bench_contract()
    schema = pandera_schema(contract)
    started, cpu = time.perf_counter(), _cpu()
    frame = pd.read_csv(csv)
    read_s = time.perf_counter() - started
    cast_failed: dict[str, Any] = {}
    for name, spec in contract.columns.items():
        if spec.dtype in ("int", "float") and not pd.api.types.is_numeric_dtype(frame[name]):
            typed = pd.to_numeric(frame[name], errors="coerce")
            cast_failed[name] = frame.index[typed.isna() & frame[name].notna()]
            frame[name] = typed
    type_s = time.perf_counter() - started - read_s
    cases = None
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as exc:
        cases = exc.failure_cases
    validate_s = time.perf_counter() - started - read_s - type_s
    rules = {f"{c}: dtype {contract.columns[c].dtype}": len(rows) for c, rows in cast_failed.items() if len(rows)}
    whole_column: list[str] = []
    bad = pd.Index([]).append([rows for rows in cast_failed.values()])
    if cases is not None:
        bad = bad.append(pd.Index(cases["index"].dropna()))
        rules |= {f"{c}: {r}": int(n) for (c, r), n in cases.groupby(["column", "check"]).size().items()}
        whole_column = [f"{r.column}: {r.check}: {str(r.failure_case)[:70]}"
                        for r in cases[cases["index"].isna()].itertuples()]
    bad = bad.unique()
    invalid = frame.loc[bad].sort_index()
    valid = frame.drop(index=bad)
    split_s = time.perf_counter() - started - read_s - type_s - validate_s
    with tempfile.TemporaryDirectory(dir=scratch, prefix="pandas-out-") as out:
        valid.to_parquet(Path(out) / "valid.parquet", compression="lz4", index=False)
        invalid.astype(str).to_parquet(Path(out) / "invalid.parquet", compression="snappy")
        write_s = time.perf_counter() - started - read_s - type_s - validate_s - split_s
    seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    return {"seconds": seconds, "cpu_s": cpu, "read_s": read_s, "type_s": type_s, "validate_s": validate_s,
            "split_s": split_s, "write_s": write_s, "rows": len(frame), "valid": len(valid), "invalid": len(invalid),
            "rules": rules, "whole_column_failures": whole_column}


def run_pandas_reader(csv: Path, scratch: Path) -> dict[str, Any]:
    """pandas' CSV reader alone, with its default type inference: the floor of the baseline."""
    import pandas as pd

    started, cpu = time.perf_counter(), _cpu()
    frame = pd.read_csv(csv)
    seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    return {"seconds": seconds, "cpu_s": cpu, "rows": len(frame), "valid": len(frame), "invalid": 0}


WARM_LINES = 2_000


def warm_up(job: Any, csv: Path, scratch: Path) -> None:
    """Run `job` once on the first WARM_LINES lines of `csv` (the header and rows): the lazy imports and first-call
    costs land here, not in the measured run."""
    with open(csv, "rb") as src, tempfile.NamedTemporaryFile(dir=scratch, prefix="warm-", suffix=".csv") as head:
        for _ in range(WARM_LINES + 1):
            head.write(src.readline())
        head.flush()
        job(Path(head.name), scratch)


def child_main(kind: str, csv: Path, scratch: Path, cold: bool = False) -> int:
    """Run one measured job (after a warm-up, unless `cold`) and print its result as the last line of stdout."""
    try:
        job = {"sluice": run_sluice, "reader": run_reader, "pandera": run_pandera,
               "pandas-reader": run_pandas_reader}[kind]
        if not cold:
            warm_up(job, csv, scratch)
        result = job(csv, scratch)
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    print(json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


# -- the parent: spawn, measure, report --------------------------------------------------------------------------


@dataclass
class Run:
    """One measured subprocess."""

    kind: str
    csv_bytes: int
    op_s: float
    proc_s: float
    maxrss_mb: float
    anon_mb: float
    cpu_s: float  # user + system seconds of the operation, all threads: what the load changes far less
    result: dict[str, Any]

    @property
    def error(self) -> str | None:
        return self.result.get("error")

    @property
    def mb_per_s(self) -> float:
        return self.csv_bytes / MB / self.op_s if self.op_s else float("nan")


def _watch(pid: int, stop: threading.Event, peak: dict[str, int]) -> None:
    """Poll the child's resident set; ru_maxrss alone cannot tell anonymous memory from a mapped file's pages."""
    while not stop.is_set():
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile", "VmHWM"):
                peak[name] = max(peak.get(name, 0), int(value.split()[0]))
        stop.wait(0.05)


def measure(kind: str, csv: Path, scratch: Path, cold: bool = False) -> Run:
    """Run one job in a fresh subprocess; its own peak RSS comes from os.wait4."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(csv), "--workdir", str(scratch),
           *(["--cold"] if cold else [])]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    stop, peak = threading.Event(), dict[str, int]()
    watcher = threading.Thread(target=_watch, args=(proc.pid, stop, peak), daemon=True)
    watcher.start()
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc_s = time.perf_counter() - started
    stop.set()
    watcher.join()
    lines = out.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"error": f"child exited {proc.returncode} without a result"}
    return Run(kind, csv.stat().st_size, float(result.get("seconds", float("nan"))), proc_s,
               usage.ru_maxrss / 1024, peak.get("RssAnon", 0) / 1024, float(result.get("cpu_s", float("nan"))),
               result)  # ru_maxrss is in KiB on Linux


def _show(run: Run, label: str) -> None:
    if run.error:
        print(f"  {label}: FAILED {run.error}", flush=True)
        return
    r = run.result
    print(f"  {label}: {r['rows']:,} rows ({r['valid']:,} valid, {r['invalid']:,} quarantined), op {run.op_s:.1f} s, "
          f"proc {run.proc_s:.1f} s, cpu {run.cpu_s:.1f} s, {run.mb_per_s:.0f} MB/s, peak RSS {run.maxrss_mb:,.0f} MB "
          f"(anon {run.anon_mb:,.0f} MB)", flush=True)


def _median(runs: list[Run], attr: str) -> float:
    values = [getattr(r, attr) for r in runs if not r.error]
    return statistics.median(values) if values else float("nan")


def parent_main(args: argparse.Namespace) -> int:
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    size_gb = 0.2 if args.quick else args.size_gb
    repeats = 1 if args.quick else args.repeats
    big = workdir / f"big-{size_gb:g}gb.csv"
    info = generate(big, int(size_gb * 1024 * MB))

    print(f"load average before: {_load()}; {'cold children (no warm-up)' if args.cold else 'warm children'}",
          flush=True)
    print(f"\n[1] Sluice validate_file and the reader on the whole file ({info['bytes'] / MB:,.0f} MB), "
          f"{repeats} repeat(s)", flush=True)
    whole: dict[str, list[Run]] = {"reader": [], "sluice": []}
    for i in range(repeats):
        for kind in whole:
            run = measure(kind, big, workdir, args.cold)
            whole[kind].append(run)
            _show(run, f"{kind} #{i + 1}")

    slice_bytes = int(args.slice_mb * MB)
    if slice_bytes >= info["bytes"]:
        part, part_info = big, info
    else:
        part = workdir / f"slice-{args.slice_mb:g}mb-of-{big.stem}.csv"
        part_info = make_slice(big, part, slice_bytes)
    print(f"\n[2] {part_info['bytes'] / MB:,.0f} MB slice ({part_info['rows']:,} rows): Sluice vs pandas + pandera, "
          f"{repeats} repeat(s)", flush=True)
    runs: dict[str, list[Run]] = {"reader": [], "sluice": [], "pandera": [], "pandas-reader": []}
    for i in range(repeats):
        # Interleaved, so a slow spell on the machine hits both sides alike.
        for kind in runs:
            run = measure(kind, part, workdir, args.cold)
            runs[kind].append(run)
            _show(run, f"{kind} #{i + 1}")

    _summary(args, info, whole, part_info, runs)
    ok = all(not r.error for rs in (*whole.values(), *runs.values()) for r in rs)
    return 0 if ok else 1


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" (1, 5, 15 min; {os.cpu_count()} CPUs)"


def _failures(result: dict[str, Any]) -> int:
    """The failing cells, over all rules: the two sides name and split the rules differently (ge and le for one
    range, say)."""
    return sum(result.get("rules", {}).values())


def _summary(args: argparse.Namespace, info: dict[str, Any], whole: dict[str, list[Run]], part_info: dict[str, Any],
             runs: dict[str, list[Run]]) -> None:
    line = "-" * 100
    print(f"\n{line}\nSUMMARY  (python {sys.version.split()[0]}, polars {pl.__version__}, {os.cpu_count()} CPUs)")
    print(f"load average after: {_load()}")
    print(line)
    print(f"Full file   {info['bytes'] / MB:,.0f} MB, {info['rows']:,} rows, "
          f"{info['invalid_rows']:,} rows generated with an invalid cell; medians of "
          f"{max(len(v) for v in whole.values())} run(s)")
    full = [r for r in whole["sluice"] if not r.error]
    readers = [r for r in whole["reader"] if not r.error]
    if not full:
        print(f"  sluice FAILED: {whole['sluice'][0].error if whole['sluice'] else 'not run'}")
    else:
        r = full[0].result
        peak = max(x.maxrss_mb for x in full)
        goal = "yes" if peak <= GOAL_RSS_MB else "NO"
        print(f"  {'':<8} {'rows':>12} {'valid':>12} {'quarantined':>12} {'op s':>8} {'proc s':>8} {'cpu s':>7} "
              f"{'MB/s':>7} {'peak RSS MB':>12} {'anon MB':>8} {'<=1.5 GB':>9}")
        print(f"  {'sluice':<8} {r['rows']:>12,} {r['valid']:>12,} {r['invalid']:>12,} {_median(full, 'op_s'):>8.1f} "
              f"{_median(full, 'proc_s'):>8.1f} {_median(full, 'cpu_s'):>7.1f} {_median(full, 'mb_per_s'):>7.1f} "
              f"{peak:>12,.0f} {max(x.anon_mb for x in full):>8,.0f} {goal:>9}")
        if readers:
            rr = readers[0].result
            print(f"  {'reader':<8} {rr['rows']:>12,} {'':>12} {'':>12} {_median(readers, 'op_s'):>8.1f} "
                  f"{_median(readers, 'proc_s'):>8.1f} {_median(readers, 'cpu_s'):>7.1f} "
                  f"{_median(readers, 'mb_per_s'):>7.1f} "
                  f"{max(x.maxrss_mb for x in readers):>12,.0f} {max(x.anon_mb for x in readers):>8,.0f}")
            ratio = _median(full, "mb_per_s") / _median(readers, "mb_per_s")
            print(f"  sluice/reader throughput: {ratio:.2f}x (goal >= 0.5x; per run: "
                  + ", ".join(f"{s.mb_per_s / q.mb_per_s:.2f}" for s, q in zip(full, readers, strict=False)) + ")")
            print(f"  CPU seconds of the operation, reader/sluice: "
                  f"{_median(readers, 'cpu_s') / _median(full, 'cpu_s'):.2f}x")
        match = "matches" if r["invalid"] == info["invalid_rows"] else "DIFFERS from"
        print(f"  quarantined rows {match} the generated invalid rows; outputs {r['outputs_mb']} MB")
        print(f"  rules broken: {r['rules']}")
    print(line)
    print(f"Slice       {part_info['bytes'] / MB:,.0f} MB, {part_info['rows']:,} rows; medians of "
          f"{max(len(v) for v in runs.values())} run(s)")
    print(f"  {'':<18} {'op s':>8} {'proc s':>8} {'cpu s':>7} {'MB/s':>7} {'peak RSS MB':>12} {'anon MB':>8} "
          f"{'valid':>12} {'quarantined':>12}")
    for kind, label in (("reader", "reader"), ("sluice", "sluice"), ("pandera", "pandas+pandera"),
                        ("pandas-reader", "pandas read_csv")):
        ok = [r for r in runs[kind] if not r.error]
        if not ok:
            print(f"  {label:<18} FAILED: {runs[kind][0].error if runs[kind] else 'not run'}")
            continue
        print(f"  {label:<18} {_median(ok, 'op_s'):>8.2f} {_median(ok, 'proc_s'):>8.2f} {_median(ok, 'cpu_s'):>7.2f} "
              f"{_median(ok, 'mb_per_s'):>7.1f} {max(r.maxrss_mb for r in ok):>12,.0f} "
              f"{max(r.anon_mb for r in ok):>8,.0f} {ok[0].result['valid']:>12,} {ok[0].result['invalid']:>12,}")
    s_ok = [r for r in runs["sluice"] if not r.error]
    b_ok = [r for r in runs["pandera"] if not r.error]
    r_ok = [r for r in runs["reader"] if not r.error]
    if s_ok and r_ok:
        print(f"  sluice/reader throughput: {_median(s_ok, 'mb_per_s') / _median(r_ok, 'mb_per_s'):.2f}x; CPU seconds "
              f"reader/sluice {_median(r_ok, 'cpu_s') / _median(s_ok, 'cpu_s'):.2f}x")
    if s_ok and b_ok:
        print(f"  ratio baseline/sluice: time {_median(b_ok, 'op_s') / _median(s_ok, 'op_s'):.2f}x (op, goal >= 5x), "
              f"{_median(b_ok, 'proc_s') / _median(s_ok, 'proc_s'):.2f}x (proc), "
              f"{_median(b_ok, 'cpu_s') / _median(s_ok, 'cpu_s'):.2f}x (op CPU seconds); peak RSS "
              f"{max(r.maxrss_mb for r in b_ok) / max(r.maxrss_mb for r in s_ok):.2f}x")
        b = b_ok[0].result
        same = s_ok[0].result["invalid"] == b["invalid"]
        parts = ", ".join(f"{name} {statistics.median(r.result[name + '_s'] for r in b_ok):.2f} s"
                          for name in ("read", "type", "validate", "split", "write"))
        print(f"  quarantined rows agree: {'yes' if same else 'NO'}; rules agree: "
              f"{'yes' if _failures(s_ok[0].result) == _failures(b) else 'NO'} ({_failures(b):,}); baseline: {parts}")
        p_ok = [r for r in runs["pandas-reader"] if not r.error]
        if p_ok and r_ok:
            floor = _median(p_ok, "op_s")
            print(f"  bare readers: pandas read_csv {floor:.2f} s, polars scan_csv().collect() "
                  f"{_median(r_ok, 'op_s'):.2f} s; baseline/sluice could reach 5x only if Sluice took "
                  f"{_median(b_ok, 'op_s') / 5:.2f} s, {_median(b_ok, 'op_s') / 5 / _median(r_ok, 'op_s'):.2f}x "
                  f"the polars reader's time")
        for failure in b["whole_column_failures"]:
            print(f"  baseline check that failed for a whole column (no row index): {failure}")
    print(line)
    print(f"Command: {shlex.join(sys.orig_argv)}")
    print(f"Data: {args.workdir} (reused while the sizes match)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="size of the generated CSV (default 2.0)")
    parser.add_argument("--slice-mb", type=float, default=200.0, help="size of the comparison slice (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side on the slice (default 3)")
    parser.add_argument("--quick", action="store_true", help="a 200 MB file and 1 repeat: a smoke run")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sluice-bench"),
                        help="where the CSV files and the outputs go (default /tmp/sluice-bench)")
    parser.add_argument("--cold", action="store_true",
                        help="no warm-up: the measured run pays the lazy imports (pandera's backends, hypothesis)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "CSV"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child[0], Path(args.child[1]), args.workdir, args.cold)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
