"""Streaming validation of a dropped file against its contract, in bounded memory.

The file is on local disk (downloaded once, hashed on the way). It is checked in three layers:

1. file-level (`UnreadableFile`, `ValidationFailed` for the whole file): encoding, binary content, header,
   delimiter, ragged lines, required and unexpected columns, Parquet schema, the target;
2. row-level, batch by batch: every cell is typed here, so a type mismatch names its row, column and value,
   then pandera-polars checks nullability, ranges and categories on the typed batch;
3. the split: valid rows go to one Parquet file, invalid rows (raw values plus their reasons) to another.
   Every row ends in exactly one of them, and the counts reconcile.

Only one batch is in memory at a time, plus a bounded sample for the profile.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandera.polars as pa
import polars as pl
import pyarrow.parquet as pq
from pandera.errors import SchemaErrors

from sluice.core.app import Extensions
from sluice.core.errors import (
    EXAMPLES_PER_RULE,
    Failure,
    LimitExceeded,
    UnreadableFile,
    ValidationFailed,
    clip,
)
from sluice.core.errors import examples as examples  # re-exported: the quarantine report's examples
from sluice.core.errors import summarize as summarize
from sluice.ml.contract import ColumnSpec, Contract

POLARS_TYPES: dict[str, pl.DataType] = {
    "int": pl.Int64(), "float": pl.Float64(), "str": pl.Utf8(), "bool": pl.Boolean(),
    "date": pl.Date(), "datetime": pl.Datetime("us"),
}
SUPPORTED = (".csv", ".csv.gz", ".parquet")
BATCH_ROWS = 250_000  # per-batch fixed costs (pandera, Parquet row groups) amortised; ~0.8 GB peak on wide files
CELLS_PER_BATCH = 4_000_000  # a wide file gets fewer rows per batch, so a batch's memory does not grow with width
RATIO_FLOOR = 64 << 20  # the compression ratio is judged once this much is decompressed: small files may be sparse
RAISE_LIMIT = "If the file is what you meant to send, raise `limits.{name}` in contracts/{dataset}.yaml."
SAMPLE_ROWS = 20_000
ROW = "_sluice_row"  # 1-based data row number in the dropped file
REASONS = "_sluice_reasons"
FIX_ROWS = ("Fix those rows and drop the file again; if the data is right and the contract is too strict, "
            "edit contracts/{dataset}.yaml and upload it with `sluice contract put`.")


@dataclass
class Split:
    """The outcome of validating one file: where every row went, and why."""

    rows_total: int = 0
    rows_valid: int = 0
    rows_invalid: int = 0
    columns: list[str] = field(default_factory=list)
    valid_path: Path | None = None
    invalid_path: Path | None = None
    rule_counts: Counter[tuple[str | None, str]] = field(default_factory=Counter)
    examples: list[Failure] = field(default_factory=list)
    example_rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    sample: pl.DataFrame | None = None
    null_counts: Counter[str] = field(default_factory=Counter)

    @property
    def invalid_fraction(self) -> float:
        """Share of rows that broke a rule."""
        return self.rows_invalid / self.rows_total if self.rows_total else 0.0

    def summary(self) -> list[Failure]:
        """One line per (column, rule), most frequent first, with the first example."""
        first: dict[tuple[str | None, str], Failure] = {}
        for f in self.examples:
            first.setdefault((f.column, f.check), f)
        out = []
        for (column, check), count in self.rule_counts.most_common():
            ex = first.get((column, check))
            out.append(Failure(column, check, ex.row if ex else None, ex.value if ex else None, count=count))
        return out


def validate_file(path: Path, key: str, contract: Contract, workdir: Path, *, batch_rows: int = BATCH_ROWS,
                  extensions: Extensions | None = None) -> Split:
    """Validate the file at `path` (named `key` in the bucket); raises for file-level problems. `extensions`: the
    app's registered checks, which the contract's columns may name."""
    name = key.lower()
    check_size(key, path.stat().st_size, contract)
    if name.endswith(".csv.gz"):
        plain = workdir / "decompressed.csv"
        _gunzip(path, plain, key, contract)
        return validate_file(plain, key.removesuffix(".gz"), contract, workdir, batch_rows=batch_rows,
                             extensions=extensions)
    if name.endswith(".parquet"):
        frame, is_text = _scan_parquet(path, key, contract), False
    elif name.endswith(".csv"):
        frame, is_text = _scan_csv(path, key, contract), True
    else:
        raise UnreadableFile(f"{key}: Sluice reads {', '.join(SUPPORTED)} files.",
                             hint="Rename or convert the file and drop it again.")
    return _split(frame, key, contract, workdir, is_text, batch_rows, extensions)


def over_limit(key: str, what: str, contract: Contract, name: str, **details: Any) -> LimitExceeded:
    """The error for a file over `limits.<name>`, saying which limit and how to raise it."""
    limit = getattr(contract.limits, name)
    return LimitExceeded(f"{key}: {what}, over the limit of {limit:,} (limits.{name}); it was not read further.",
                         hint=RAISE_LIMIT.format(name=name, dataset=contract.dataset) + " Otherwise split or fix the "
                         "file and drop it again.", details={"limit": {"name": name, "value": limit, **details}})


def check_size(key: str, size: int, contract: Contract) -> None:
    """Refuse an object bigger than `limits.max_file_bytes` before it is downloaded."""
    if size > contract.limits.max_file_bytes:
        raise over_limit(key, f"the object is {size:,} bytes", contract, "max_file_bytes", actual=size)


def _gunzip(path: Path, plain: Path, key: str, contract: Contract) -> None:
    """Decompress, stopping as soon as the output passes the size or compression-ratio limit (a gzip bomb)."""
    limits, compressed, written = contract.limits, max(path.stat().st_size, 1), 0
    try:
        with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
            while chunk := src.read(4 << 20):
                written += len(chunk)
                if written > limits.max_file_bytes:
                    raise over_limit(key, f"it decompresses to more than {written:,} bytes", contract,
                                     "max_file_bytes", actual_at_least=written)
                if written > RATIO_FLOOR and written > limits.max_compression_ratio * compressed:
                    raise over_limit(key, f"{compressed:,} bytes decompress to more than {written:,} (a ratio of "
                                          f"{written / compressed:,.0f})", contract, "max_compression_ratio",
                                     actual_at_least=round(written / compressed, 1))
                dst.write(chunk)
    except (OSError, EOFError) as exc:
        raise UnreadableFile(f"{key} is not valid gzip ({exc}).",
                             hint="Compress it again and drop it again.") from exc
    except LimitExceeded:
        plain.unlink(missing_ok=True)
        raise


# -- file level -------------------------------------------------------------------------------------------------


def _scan_csv(path: Path, key: str, contract: Contract) -> pl.LazyFrame:
    _check_text(path, key, contract)
    header = _header(path, key, contract)
    if len(header) == 1 and len(contract.columns) > 1 and any(d in header[0] for d in ";\t|"):
        sep = next(d for d in ";\t|" if d in header[0])
        raise UnreadableFile(f"{key} has a single column {header[0][:60]!r}: it is separated by {sep!r}, not a comma.",
                             hint="Export the file comma-separated and drop it again.")
    duplicates = sorted(c for c, n in Counter(header).items() if n > 1)
    if duplicates:
        raise UnreadableFile(f"{key} has duplicate column names: {[clip(d, 60) for d in duplicates[:20]]}.",
                             hint="Rename the columns so each name appears once, then drop the file again.")
    _check_columns(key, header, contract)
    _check_ragged(path, key, len(header))
    return pl.scan_csv(path, infer_schema=False, encoding="utf8-lossy")


def _check_text(path: Path, key: str, contract: Contract) -> None:
    """UTF-8 (a BOM is fine), not binary, not empty, within the limits on header, line length and rows: one
    streaming pass, naming the line and byte of a fault, stopping at the first."""
    import numpy as np

    limits = contract.limits
    header_cap = limits.max_columns * (limits.max_header_field_bytes + 3) + 2
    max_line: int | None = None  # known once the header is: its width times the longest cell allowed
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = line_start = 0
    with open(path, "rb") as f:
        first = True
        while chunk := f.read(4 << 20):
            if first and b"\x00" in chunk[:8192]:
                raise UnreadableFile(f"{key} is a binary file, not CSV text (NUL bytes near the start).",
                                     hint="Drop the CSV export itself, or a .parquet file with a .parquet name.")
            if first and not chunk.strip(b"\xef\xbb\xbf \r\n\t"):
                raise UnreadableFile(f"{key} is empty.", hint="Drop a file with a header line and at least one row.")
            first = False
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                bad = offset + exc.start
                line = lines + chunk[: exc.start].count(b"\n") + 1
                raise UnreadableFile(
                    f"{key} is not UTF-8: line {line}, byte offset {bad} (byte 0x{chunk[exc.start]:02x}).",
                    hint="Save it as UTF-8 and drop it again.") from exc
            ends = offset + np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
            if ends.size:
                lengths = ends - np.concatenate(([line_start], ends[:-1] + 1))
                if lines == 0:
                    if lengths[0] > header_cap:
                        raise over_limit(key, f"the header line is {int(lengths[0]):,} bytes", contract,
                                         "max_header_field_bytes")
                    width = chunk[: int(ends[0] - offset)].count(b",") + 1
                    max_line = width * (limits.max_cell_bytes + 3) + 2
                    lengths = lengths[1:]
                long = np.flatnonzero(lengths > (max_line or header_cap))
                if long.size:
                    n = int(long[0])
                    raise over_limit(key, f"line {lines + n + (1 if lines else 2)} is {int(lengths[n]):,} bytes, "
                                          "more than its columns can hold", contract, "max_cell_bytes")
                line_start = int(ends[-1]) + 1
            offset += len(chunk)
            lines += int(ends.size)
            if offset - line_start > (max_line or header_cap):
                what = "the header line" if lines == 0 else f"line {lines + 1}"
                raise over_limit(key, f"{what} is longer than {offset - line_start:,} bytes", contract,
                                 "max_header_field_bytes" if lines == 0 else "max_cell_bytes")
            if lines - 1 > limits.max_rows:
                raise over_limit(key, f"it has more than {lines - 1:,} rows", contract, "max_rows",
                                 actual_at_least=lines - 1)
        if first:
            raise UnreadableFile(f"{key} is empty.", hint="Drop a file with a header line and at least one row.")


def _header(path: Path, key: str, contract: Contract) -> list[str]:
    limits = contract.limits
    with open(path, "rb") as f:  # _check_text bounded the header line
        line = f.readline(limits.max_columns * (limits.max_header_field_bytes + 3) + 2)
    try:
        header = next(csv.reader([line.decode("utf-8-sig", "replace").rstrip("\r\n")]), [])
    except csv.Error as exc:
        raise over_limit(key, f"the header cannot be read ({exc})", contract, "max_header_field_bytes") from exc
    if not header:
        raise UnreadableFile(f"{key} has no header line.", hint="Add a header line naming the columns.")
    _check_names(key, header, contract)
    return header


def _check_names(key: str, names: list[str], contract: Contract) -> None:
    """The columns' count and the length of their names, within the limits."""
    if len(names) > contract.limits.max_columns:
        raise over_limit(key, f"it has {len(names):,} columns", contract, "max_columns", actual=len(names))
    long = next((n for n in names if len(n.encode()) > contract.limits.max_header_field_bytes), None)
    if long is not None:
        raise over_limit(key, f"column name {clip(long, 60)!r} is {len(long.encode()):,} bytes", contract,
                         "max_header_field_bytes")


def _check_ragged(path: Path, key: str, width: int) -> None:
    """The first line whose field count differs from the header's (lines with quotes are left to the parser)."""
    lf = pl.scan_lines(path, row_index_name="i")
    bad = (lf.filter((pl.col("i") > 0) & (pl.col("line").str.len_bytes() > 0)
                     & ~pl.col("line").str.contains('"', literal=True)
                     & (pl.col("line").str.count_matches(",", literal=True) != width - 1))
           .head(1).collect())
    if bad.height:
        line, text = int(bad["i"][0]) + 1, bad["line"][0]
        fields = text.count(",") + 1
        raise UnreadableFile(f"{key} line {line} has {fields} fields, the header has {width}: {text[:80]!r}.",
                             hint="Quote fields that contain commas, fix the line, and drop the file again.")


def _check_columns(key: str, names: list[str], contract: Contract) -> None:
    missing = [c for c in contract.columns if c not in names]
    if contract.target in missing:
        raise ValidationFailed(f"{key} has no target column {contract.target!r}; "
                               f"found {[clip(n, 60) for n in names[:20]]}.",
                               hint="Add the target column (or fix its name) and drop the file again.",
                               failures=[Failure(contract.target, "required column")])
    if missing:
        raise ValidationFailed(
            f"{key} is missing required columns {missing}; found {[clip(n, 60) for n in names[:20]]}.",
            hint=f"Add the columns, or if they are gone for good, remove them from contracts/{contract.dataset}.yaml.",
            failures=[Failure(c, "required column") for c in missing])
    extra = [c for c in names if c not in contract.columns]
    if extra and contract.extra_columns == "reject":
        raise ValidationFailed(
            f"{key} has columns the contract does not name: {[clip(n, 60) for n in extra[:20]]} "
            "(extra_columns: reject).",
            hint=f"Remove them, or set `extra_columns: drop` or `allow` in contracts/{contract.dataset}.yaml.",
            failures=[Failure(c, "no unexpected columns (extra_columns: reject)") for c in extra])


def _scan_parquet(path: Path, key: str, contract: Contract) -> pl.LazyFrame:
    try:
        lf = pl.scan_parquet(path)
        schema = lf.collect_schema()
    except Exception as exc:  # polars raises several kinds for a broken file
        raise UnreadableFile(f"{key} is not a readable Parquet file ({type(exc).__name__}: {_first_line(exc)}).",
                             hint="Re-export it as Parquet or CSV and drop it again.") from exc
    _check_parquet_limits(path, key, contract, list(schema.names()))
    _check_columns(key, list(schema.names()), contract)
    wrong = []
    for name, spec in contract.columns.items():
        have = schema[name]
        ok = (have == POLARS_TYPES[spec.dtype] or spec.dtype == "str"
              or (spec.dtype == "float" and have.is_numeric()) or (spec.dtype == "int" and have.is_integer())
              or (spec.dtype == "datetime" and isinstance(have, pl.Datetime)))
        if not ok:
            wrong.append(Failure(name, f"dtype {spec.dtype}", value=str(have)))
    if wrong:
        raise ValidationFailed(
            f"{key} has the wrong Parquet schema: " + "; ".join(f"column {f.column!r} is {f.value}, the contract "
                                                                 f"says {f.check.split()[-1]}" for f in wrong) + ".",
            hint=f"Write the columns with the contract's types, or fix contracts/{contract.dataset}.yaml.",
            failures=wrong)
    if pq.ParquetFile(path).metadata.num_rows == 0:
        raise UnreadableFile(f"{key} has a schema but no rows.", hint="Drop a file with at least one row.")
    return lf


def _check_parquet_limits(path: Path, key: str, contract: Contract, names: list[str]) -> None:
    """Rows, columns and decompressed size from the footer, before any row is read."""
    _check_names(key, names, contract)
    meta = pq.ParquetFile(path).metadata
    if meta.num_rows > contract.limits.max_rows:
        raise over_limit(key, f"it has {meta.num_rows:,} rows", contract, "max_rows", actual=meta.num_rows)
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if size > contract.limits.max_file_bytes:
        raise over_limit(key, f"its rows decompress to {size:,} bytes", contract, "max_file_bytes", actual=size)
    ratio = size / max(path.stat().st_size, 1)
    if size > RATIO_FLOOR and ratio > contract.limits.max_compression_ratio:
        raise over_limit(key, f"its rows decompress to {size:,} bytes, a ratio of {ratio:,.0f}", contract,
                         "max_compression_ratio", actual=round(ratio, 1))


def _check_cells(raw: pl.DataFrame, key: str, contract: Contract, offset: int) -> None:
    """A backstop for cells the line check cannot see (quoted newlines, Parquet): no cell over max_cell_bytes."""
    text = [c for c, t in raw.schema.items() if t == pl.Utf8]
    if not text:
        return
    longest = raw.select(pl.col(text).str.len_bytes().max())
    for column in text:
        size = longest[column][0]
        if size is not None and size > contract.limits.max_cell_bytes:
            row = int(raw[column].str.len_bytes().arg_max() or 0) + offset + 1
            raise over_limit(key, f"row {row}, column {clip(column, 60)!r} holds a cell of {size:,} bytes", contract,
                             "max_cell_bytes", actual=size, row=row, column=clip(column, 60))


# -- row level --------------------------------------------------------------------------------------------------


def build_schema(contract: Contract, extensions: Extensions | None = None) -> pa.DataFrameSchema:
    """The pandera-polars schema of a contract's row rules (column presence is checked before, per file), with the
    app's checks the contract names."""
    extensions = extensions or Extensions()
    columns = {}
    for name, spec in contract.columns.items():
        checks = []
        if spec.min is not None:
            checks.append(pa.Check.ge(spec.min))
        if spec.max is not None:
            checks.append(pa.Check.le(spec.max))
        if spec.categories is not None:
            checks.append(pa.Check.isin(spec.categories))
        checks += [custom_check(extensions, item) for item in spec.checks]
        columns[name] = pa.Column(POLARS_TYPES[spec.dtype], checks=checks, nullable=spec.nullable)
    return pa.DataFrameSchema(columns, strict=False, name=contract.dataset)


def custom_check(extensions: Extensions, item: str | dict[str, dict[str, Any]]) -> pa.Check:
    """A check the app registers, as pandera runs it: a `pandera.Check` as is, or a function of the column (a polars
    expression) and the contract's parameters that gives true for valid rows. Nulls are left to `nullable`."""
    name, params = (item, {}) if isinstance(item, str) else next(iter(item.items()))
    fn = extensions.check(name)  # an AppError naming what is registered when it is not
    if isinstance(fn, pa.Check):
        return fn
    label = name if not params else f"{name}({', '.join(f'{k}={v!r}' for k, v in params.items())})"
    return pa.Check(lambda data: data.lazyframe.select(fn(pl.col(data.key), **params)), name=label, error=label)


def _batches(frame: pl.LazyFrame, batch_rows: int) -> Iterator[pl.DataFrame]:
    yield from frame.collect_batches(chunk_size=batch_rows)


def _split(frame: pl.LazyFrame, key: str, contract: Contract, workdir: Path, is_text: bool,
           batch_rows: int, extensions: Extensions | None = None) -> Split:
    schema = build_schema(contract, extensions)
    split = Split()
    valid_writer: pq.ParquetWriter | None = None
    invalid_writer: pq.ParquetWriter | None = None
    offset = 0
    sampler = _Sampler(SAMPLE_ROWS, seed=0)
    batch_rows = min(batch_rows, max(1_000, CELLS_PER_BATCH // max(len(frame.collect_schema()), 1)))
    try:
        for raw in _batches(frame, batch_rows):
            _check_cells(raw, key, contract, offset)
            if contract.extra_columns == "drop":
                raw = raw.select([c for c in raw.columns if c in contract.columns])
            typed, failures = _type_batch(raw, contract, is_text, offset)
            failures += _check_batch(schema, typed, offset, already=failures)
            bad_rows = sorted({f.row for f in failures if f.row is not None})
            split.rows_total += raw.height
            split.rows_invalid += len(bad_rows)
            split.rows_valid += raw.height - len(bad_rows)
            for f in failures:
                rule = (f.column, f.check)
                split.rule_counts[rule] += 1
                if split.rule_counts[rule] <= EXAMPLES_PER_RULE:
                    split.examples.append(f)
                    if f.row is not None and f.row not in split.example_rows:
                        split.example_rows[f.row] = {k: _jsonable(v) for k, v in raw.row(f.row - offset - 1,
                                                                                            named=True).items()}
            bad_mask = pl.Series("bad", [False] * raw.height)
            if bad_rows:
                bad_mask = pl.int_range(offset + 1, offset + raw.height + 1, eager=True).is_in(bad_rows)
                reasons = _reasons(failures)
                rejected = raw.with_columns(pl.int_range(offset + 1, offset + raw.height + 1, eager=True).alias(ROW)
                                            ).filter(bad_mask).with_columns(
                    pl.col(ROW).replace_strict(reasons, default="", return_dtype=pl.Utf8).alias(REASONS))
                rejected = rejected.with_columns(pl.exclude(ROW).cast(pl.Utf8))
                table = rejected.to_arrow()
                if invalid_writer is None:
                    split.invalid_path = workdir / "invalid.parquet"
                    invalid_writer = pq.ParquetWriter(split.invalid_path, table.schema)
                invalid_writer.write_table(table.cast(invalid_writer.schema))
            good = typed.filter(~bad_mask)
            if good.height:
                table = good.to_arrow()
                if valid_writer is None:
                    split.valid_path = workdir / "valid.parquet"
                    split.columns = good.columns
                    valid_writer = pq.ParquetWriter(split.valid_path, table.schema)
                valid_writer.write_table(table.cast(valid_writer.schema))
                sampler.add(good)
                for c in good.columns:
                    split.null_counts[c] += good[c].null_count()
            offset += raw.height
    except pl.exceptions.PolarsError as exc:
        raise UnreadableFile(f"{key} could not be parsed: {_first_line(exc)}",
                             hint="Check the delimiter (Sluice reads comma-separated files), the quoting, and that "
                                  "every line has as many fields as the header.") from exc
    finally:
        for w in (valid_writer, invalid_writer):
            if w is not None:
                w.close()
    split.sample = sampler.frame()
    if split.rows_total == 0:
        raise UnreadableFile(f"{key} has a header but no rows.", hint="Drop a file with at least one row.")
    return split


def _type_batch(
    raw: pl.DataFrame, contract: Contract, is_text: bool, offset: int
) -> tuple[pl.DataFrame, list[Failure]]:
    failures: list[Failure] = []
    columns = []
    for name in raw.columns:
        spec = contract.columns.get(name)
        if spec is None:
            columns.append(raw[name])
            continue
        series, bad = _typed(raw[name], spec, is_text, offset)
        columns.append(series)
        failures += bad
    return pl.DataFrame(columns), failures


def typed_exprs(name: str, spec: ColumnSpec, is_text: bool) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """How column `name` becomes its contract type, as polars expressions: (typed value, cell did not cast,
    value is not finite). One definition of typing, used by validation and by the model loader alike."""
    target = POLARS_TYPES[spec.dtype]
    raw = pl.col(name)
    if not is_text:
        typed = raw.cast(target, strict=False)
        blank = pl.lit(False)
    else:
        s = raw.str.strip_chars()
        blank = s.str.len_bytes() == 0  # a blank cell is a null, not a type error
        if spec.dtype == "str":
            typed = raw
        elif spec.dtype == "bool":
            typed = s.str.to_lowercase().replace_strict(
                {"true": True, "false": False, "1": True, "0": False}, default=None, return_dtype=pl.Boolean)
        elif spec.dtype == "date":
            typed = s.str.to_date(strict=False)
        elif spec.dtype == "datetime":
            typed = s.str.to_datetime(strict=False, time_unit="us")
        elif spec.dtype == "int":
            # "3.0" is an integer written by a tool that went through floats (pandas does, for a column with nulls).
            as_float = s.cast(pl.Float64, strict=False)
            whole = as_float.is_not_null() & (as_float == as_float.floor()) & (as_float.abs() < 2.0**53)
            direct = s.cast(target, strict=False)
            typed = pl.when(direct.is_null() & whole).then(as_float.cast(pl.Int64, strict=False)).otherwise(direct)
        else:
            typed = s.cast(target, strict=False)
    failed = typed.is_null() & raw.is_not_null()
    if is_text and spec.dtype != "str":
        failed = failed & ~blank.fill_null(False)
    non_finite = (typed.is_nan() | typed.is_infinite()).fill_null(False) if spec.dtype == "float" else pl.lit(False)
    if spec.dtype == "float":
        typed = pl.when(non_finite).then(None).otherwise(typed)
    return typed.alias(name), failed, non_finite


def _typed(raw: pl.Series, spec: ColumnSpec, is_text: bool, offset: int) -> tuple[pl.Series, list[Failure]]:
    """Cast a column to its contract type; every cell that does not cast is a failure with its row."""
    name = raw.name
    typed_e, failed_e, non_finite_e = typed_exprs(name, spec, is_text)
    out = raw.to_frame().select(typed_e, failed_e.alias("_failed"), non_finite_e.alias("_non_finite"))
    failures = [Failure(name, f"dtype {spec.dtype}", row=offset + i + 1, value=raw[i])
                for i in out["_failed"].arg_true().to_list()]
    if spec.dtype == "float":
        failures += [Failure(name, "finite number", row=offset + i + 1, value=str(raw[i]))
                     for i in out["_non_finite"].arg_true().to_list()]
    return out[name], failures


def _check_batch(schema: pa.DataFrameSchema, typed: pl.DataFrame, offset: int, already: list[Failure]) -> list[Failure]:
    try:
        schema.validate(typed, lazy=True)
    except SchemaErrors as exc:
        cast_failed = {(f.column, f.row) for f in already}
        out = []
        for case in exc.failure_cases.iter_rows(named=True):
            index = case.get("index")
            if index is None:
                raise ValidationFailed(f"rule {case.get('check')} failed on column {case.get('column')!r} as a whole: "
                                       f"{case.get('failure_case')}",
                                       hint="Check the file against the contract.") from exc
            row = offset + int(index) + 1
            if (case.get("column"), row) in cast_failed:
                continue  # already reported as a type mismatch; the null left by the cast is not news
            out.append(Failure(case.get("column"), str(case.get("check")), row=row, value=case.get("failure_case")))
        return out
    return []


def _reasons(failures: list[Failure]) -> dict[int, str]:
    out: dict[int, list[str]] = {}
    for f in failures:
        if f.row is not None:
            out.setdefault(f.row, []).append(f"{f.column}: {f.check} (got {clip(repr(f.value))})")
    return {row: "; ".join(items) for row, items in out.items()}


class _Sampler:
    """A uniform sample of bounded size over all batches: keep the rows with the smallest random keys."""

    def __init__(self, size: int, seed: int):
        import numpy as np

        self.size = size
        self.rng = np.random.default_rng(seed)
        self.kept: pl.DataFrame | None = None

    def add(self, batch: pl.DataFrame) -> None:
        import numpy as np

        keys = self.rng.random(batch.height)
        if batch.height > self.size:  # only this batch's smallest keys can make the overall cut
            keep = np.sort(np.argpartition(keys, self.size)[: self.size])
            batch, keys = batch[keep], keys[keep]
        keyed = batch.with_columns(pl.Series("_u", keys))
        merged = keyed if self.kept is None else pl.concat([self.kept, keyed], how="diagonal_relaxed")
        self.kept = merged.bottom_k(self.size, by="_u")

    def frame(self) -> pl.DataFrame | None:
        return None if self.kept is None else self.kept.drop("_u")


def _jsonable(value: Any) -> Any:
    return value if value is None or isinstance(value, (int, float, bool)) else clip(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_sample(key: str, data: bytes) -> pl.DataFrame:
    """A small sample file as a frame with inferred types (for `sluice contract infer`)."""
    name = key.lower()
    if name.endswith(".parquet"):
        return pl.read_parquet(io.BytesIO(data))
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    return pl.read_csv(io.BytesIO(data), infer_schema_length=None, try_parse_dates=True)
