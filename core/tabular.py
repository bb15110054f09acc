"""Reading a dropped table and checking it against its contract.

Parsing is done here, cell by cell, so that a type mismatch names its row, column and value; pandera-polars
then checks the rules (nullability, ranges, categories, required and unexpected columns) on typed data.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections import defaultdict

import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaErrors
from sluice.core.contract import ColumnSpec, Contract
from sluice.core.errors import Failure, UnreadableFile, ValidationFailed

POLARS_TYPES: dict[str, pl.DataType] = {
    "int": pl.Int64(), "float": pl.Float64(), "str": pl.Utf8(), "bool": pl.Boolean(),
    "date": pl.Date(), "datetime": pl.Datetime("us"),
}
EXAMPLES_PER_RULE = 3
SUPPORTED = (".csv", ".csv.gz", ".parquet")


def read_table(key: str, data: bytes) -> tuple[pl.DataFrame, bool]:
    """The object's rows, and whether it was text (CSV) whose cells still need typing."""
    name = key.lower()
    if name.endswith(".parquet"):
        try:
            return pl.read_parquet(io.BytesIO(data)), False
        except Exception as exc:  # polars raises several kinds for a broken file
            raise UnreadableFile(f"{key} is not a readable Parquet file ({type(exc).__name__}: {exc}).",
                                 hint="Re-export it as Parquet or CSV and drop it again.") from exc
    if name.endswith(".csv.gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise UnreadableFile(f"{key} is not valid gzip ({exc}).", hint="Re-compress it and drop it again.") from exc
    elif not name.endswith(".csv"):
        raise UnreadableFile(f"{key}: Sluice reads {', '.join(SUPPORTED)} files.",
                             hint="Rename or convert the file and drop it again.")
    return _read_csv(key, data), True


def _read_csv(key: str, data: bytes) -> pl.DataFrame:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise UnreadableFile(f"{key} is empty.", hint="Drop a file with a header line and at least one row.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        hint = "Save it as UTF-8 and drop it again."
        if data[: exc.start].count(b"\x00") or b"\x00" in data[:1024]:
            hint = "It looks like a binary file, not CSV. " + hint
        raise UnreadableFile(f"{key} is not UTF-8: line {line}, byte offset {exc.start} "
                             f"(byte 0x{data[exc.start]:02x}).", hint=hint) from exc
    header = next(csv.reader(io.StringIO(text.split("\n", 1)[0])), [])
    seen: set[str] = set()
    duplicates = sorted({c for c in header if c in seen or seen.add(c)})  # type: ignore[func-returns-value]
    if duplicates:
        raise UnreadableFile(f"{key} has duplicate column names: {duplicates}.",
                             hint="Rename the columns so each name appears once.")
    try:
        frame = pl.read_csv(io.BytesIO(data), infer_schema=False)
    except Exception as exc:
        raise UnreadableFile(f"{key} could not be parsed as CSV: {_first_line(exc)}",
                             hint="Check the delimiter (Sluice reads comma-separated files) and that every "
                                  "line has as many fields as the header.") from exc
    if frame.height == 0:
        raise UnreadableFile(f"{key} has a header but no rows.", hint="Drop a file with at least one row.")
    return frame


def validate(key: str, data: bytes, contract: Contract) -> pl.DataFrame:
    """The typed, contract-checked table; raises ValidationFailed with every broken rule."""
    frame, is_text = read_table(key, data)
    expected = set(contract.columns)
    if len(frame.columns) == 1 and len(expected) > 1 and any(d in frame.columns[0] for d in ";\t|"):
        raise UnreadableFile(f"{key} has a single column {frame.columns[0][:60]!r}: the delimiter is not a comma.",
                             hint="Export the file comma-separated and drop it again.")
    failures: list[Failure] = []
    typed = []
    for name in frame.columns:
        spec = contract.columns.get(name)
        if spec is None:
            typed.append(frame[name])
            continue
        series, bad = _typed(frame[name], spec, is_text)
        failures.extend(bad)
        typed.append(series)
    frame = pl.DataFrame(typed)
    extras = [c for c in frame.columns if c not in expected]
    if extras and contract.extra_columns == "drop":
        frame = frame.drop(extras)
    schema = build_schema(contract)
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as exc:
        failures.extend(_from_pandera(exc.failure_cases))
    if failures:
        raise ValidationFailed(
            f"{key} breaks the contract of dataset {contract.dataset!r}: " + "; ".join(
                f.describe() for f in summarize(failures)[:5]),
            hint=("Fix those rows and drop the file again; if the data is right and the contract is too strict, "
                  f"edit contracts/{contract.dataset}.yaml and upload it with `sluice contract put`."),
            failures=failures,
        )
    return frame


def build_schema(contract: Contract) -> pa.DataFrameSchema:
    """The pandera-polars schema a contract stands for."""
    columns = {}
    for name, spec in contract.columns.items():
        checks = []
        if spec.min is not None:
            checks.append(pa.Check.ge(spec.min))
        if spec.max is not None:
            checks.append(pa.Check.le(spec.max))
        if spec.categories is not None:
            checks.append(pa.Check.isin(spec.categories))
        columns[name] = pa.Column(POLARS_TYPES[spec.dtype], checks=checks, nullable=spec.nullable)
    return pa.DataFrameSchema(columns, strict=contract.extra_columns == "reject", name=contract.dataset)


def _typed(raw: pl.Series, spec: ColumnSpec, is_text: bool) -> tuple[pl.Series, list[Failure]]:
    """Cast a column to its contract type; every cell that does not cast is a failure with its row."""
    target = POLARS_TYPES[spec.dtype]
    name = raw.name
    if not is_text:
        if raw.dtype == target or (spec.dtype == "float" and raw.dtype.is_numeric()):
            typed = raw.cast(target)
        elif spec.dtype == "str":
            typed = raw.cast(pl.Utf8)
        else:
            return raw, [Failure(name, f"dtype {spec.dtype}", value=str(raw.dtype))]
    else:
        s = raw.str.strip_chars()
        if spec.dtype == "str":
            typed = raw
        elif spec.dtype == "bool":
            typed = s.str.to_lowercase().replace_strict(
                {"true": True, "false": False, "1": True, "0": False}, default=None, return_dtype=pl.Boolean)
        elif spec.dtype == "date":
            typed = s.str.to_date(strict=False)
        elif spec.dtype == "datetime":
            typed = s.str.to_datetime(strict=False, time_unit="us")
        else:
            typed = s.cast(target, strict=False)
    bad_mask = typed.is_null() & raw.is_not_null()
    if is_text:
        bad_mask = bad_mask & (raw.str.strip_chars() != "")
    failures = [Failure(name, f"dtype {spec.dtype}", row=i + 1, value=raw[i]) for i in bad_mask.arg_true().to_list()]
    if spec.dtype == "float":
        non_finite = (typed.is_nan() | typed.is_infinite()).fill_null(False)
        failures += [Failure(name, "finite number", row=i + 1, value=typed[i]) for i in non_finite.arg_true().to_list()]
    return typed.alias(name), failures


def _from_pandera(cases: pl.DataFrame) -> list[Failure]:
    out = []
    for row in cases.iter_rows(named=True):
        index = row.get("index")
        value = row.get("failure_case")
        check = str(row.get("check"))
        if check == "column_in_dataframe":
            out.append(Failure(str(value), "required column", value=None))
            continue
        if check == "column_in_schema":
            out.append(Failure(str(value), "no unexpected columns (extra_columns: reject)", value=None))
            continue
        out.append(Failure(row.get("column"), check, row=None if index is None else int(index) + 1, value=value))
    return out


def summarize(failures: list[Failure]) -> list[Failure]:
    """One failure per (column, rule): the first example, with how many rows broke it."""
    groups: dict[tuple[str | None, str], list[Failure]] = defaultdict(list)
    for f in failures:
        groups[(f.column, f.check)].append(f)
    out = []
    for (column, check), items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        first = items[0]
        value = first.value
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        out.append(Failure(column, check, first.row, value, count=len(items)))
    return out


def examples(failures: list[Failure]) -> list[dict[str, object]]:
    """Up to a few example failures per rule, JSON-safe, for the quarantine report."""
    per_rule: dict[tuple[str | None, str], int] = defaultdict(int)
    out: list[dict[str, object]] = []
    for f in failures:
        k = (f.column, f.check)
        if per_rule[k] < EXAMPLES_PER_RULE:
            per_rule[k] += 1
            out.append({"column": f.column, "check": f.check, "row": f.row,
                        "line": None if f.row is None else f.row + 1,
                        "value": None if f.value is None else str(f.value)})
    return out


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
