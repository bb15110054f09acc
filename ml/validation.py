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

import bisect
import codecs
import csv
import dataclasses
import gzip
import io
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, time
from pathlib import Path
from typing import Any

import numpy as np
import pandera.polars as pa
import polars as pl
import pyarrow.parquet as pq
from pandera.errors import SchemaErrors
from polars.io.plugins import register_io_source

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
from sluice.core.keys import DROP_FORMATS
from sluice.ml.contract import ColumnSpec, Contract

POLARS_TYPES: dict[str, pl.DataType] = {
    "int": pl.Int64(), "float": pl.Float64(), "str": pl.Utf8(), "bool": pl.Boolean(),
    "date": pl.Date(), "datetime": pl.Datetime("us"),
}
SUPPORTED = DROP_FORMATS
BATCH_ROWS = 250_000  # per-batch fixed costs (pandera, Parquet row groups) amortised; ~0.8 GB peak on wide files
CELLS_PER_BATCH = 4_000_000  # a wide file gets fewer rows per batch, so a batch's memory does not grow with width
RATIO_FLOOR = 64 << 20  # the compression ratio is judged once this much is decompressed: small files may be sparse
RAISE_LIMIT = "If the file is what you meant to send, raise `limits.{name}` in contracts/{dataset}.yaml."
SAMPLE_ROWS = 20_000
ROW_GROUP_ROWS = 250_000
# Quarantined rows held for pandera's reasons before it reports them: its cost is mostly per validation (~10 ms), so
# it validates the suspect rows of many batches at once, and memory stays bounded by these rows (and one batch's).
HELD_ROWS = 100_000
FORMAT_SAMPLE = 1_000  # values a date column's format is settled on
DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%d/%m/%Y", "%m/%d/%Y", "%d-%m-%Y", "%d.%m.%Y", "%Y%m%d")
DATETIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f",
                    "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y/%m/%d %H:%M:%S", "%d/%m/%Y %H:%M:%S", "%m/%d/%Y %H:%M:%S")
# An ISO datetime whose time is exactly midnight, optionally in UTC: group 1 is its date. Shared with the serving
# fast path (ml/bundle.py), which must type a value exactly as this module does.
ISO_MIDNIGHT = re.compile(r"^([0-9]{4}-[0-9]{2}-[0-9]{2})[T ]00:00(?::00(?:\.0+)?)?(?:Z|\+00:?00)?$")
# How tools write a missing value in a text file: R and pandas (NA, <NA>), Excel (#N/A, -), SQL exports (NULL,
# null, None), UCI's data sets (?). In a column of numbers, dates or booleans such a cell is missing (a blank),
# as pandas' reader has it; a text column keeps it as written ("NA" may be North America). NaN is missing too, as
# pandas, R and numpy users mean it (a pandas frame's NaN is its null): the text "NaN" in a CSV and a float NaN in
# Parquet or a frame alike, so a row scores the same from a file and from `pd.read_csv` of it. An infinity is no
# missing value: it stays refused.
MISSING_MARKERS = frozenset({"NA", "N/A", "n/a", "na", "<NA>", "#N/A", "NULL", "null", "None", "none", "-", "?",
                             "NaN", "nan", "NAN", "-nan", "-NaN"})
_FAILED, _NON_FINITE = "\x00failed", "\x00non-finite"
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
    rows_empty: int = 0  # blank lines and lines of empty cells, left out (not in rows_total)
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
        frame, is_text, cells_fit, skip_empty = _scan_parquet(path, key, contract), False, False, False
    elif name.endswith(".csv"):
        frame, lines = _scan_csv(path, key, contract)
        is_text = True
        # No line longer than a cell may be, and no quote (a quoted cell may span lines): no cell is too long.
        cells_fit = not lines.quoted and lines.longest <= contract.limits.max_cell_bytes
        skip_empty = lines.empty_rows
    else:
        raise UnreadableFile(f"{key}: Sluice reads {', '.join(SUPPORTED)} files.",
                             hint="Rename or convert the file and drop it again.")
    try:
        return _split(frame, key, contract, workdir, is_text, batch_rows, extensions, cells_fit=cells_fit,
                      skip_empty=skip_empty)
    except UnreadableFile as exc:
        if is_text and isinstance(exc.__cause__, pl.exceptions.PolarsError):
            _check_ragged(path, key, len(frame.collect_schema()))  # a line with too many fields: name it
        raise


def over_limit(key: str, what: str, contract: Contract, name: str, *, shown: str | None = None,
               **details: Any) -> LimitExceeded:
    """The error for a file over `limits.<name>`, saying which limit and how to raise it (`shown`: the limit as
    applied, when it is not the value itself)."""
    limit = getattr(contract.limits, name)
    shown = shown or f"{limit:,} (limits.{name})"
    return LimitExceeded(f"{key}: {what}, over the limit of {shown}; it was not read further.",
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


def _scan_csv(path: Path, key: str, contract: Contract) -> tuple[pl.LazyFrame, _Lines]:
    lines = _check_text(path, key, contract)
    header = _header(path, key, contract)
    if len(header) == 1 and len(contract.columns) > 1 and any(d in header[0] for d in ";\t|"):
        sep = next(d for d in ";\t|" if d in header[0])
        raise UnreadableFile(f"{key} has a single column {header[0][:60]!r}: it is separated by {sep!r}, not a comma.",
                             hint="Export the file comma-separated and drop it again.")
    _check_duplicates(key, header, " and drop the file again")
    _check_columns(key, header, contract)
    if lines.header_commas != len(header) - 1:
        _check_ragged(path, key, len(header))  # quoted commas in the header: its comma count is no guide
    elif lines.ragged is not None:
        line, start, length, commas = lines.ragged
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read(min(length, 4096)).decode("utf-8", "replace").rstrip("\r\n")
        raise _ragged(key, line, commas + 1, len(header), text)
    # _check_text decoded every byte as UTF-8 already; polars' lossy decoding would cost a third of the read again
    return pl.scan_csv(path, infer_schema=False, encoding="utf8"), lines


@dataclass
class _Lines:
    """What the text pass saw of the lines: the first unquoted line whose field count is not the header's, the
    longest line, and whether there was a quote anywhere."""

    header_commas: int = 0
    ragged: tuple[int, int, int, int] | None = None  # (line number, byte offset, length, commas) of the first one
    longest: int = 0  # bytes, without the newline
    quoted: bool = False
    # A row line no longer than the header's commas (and a \r): a blank line, or one of empty cells (",,,"), which
    # the reader gives as a row of nulls (polars 2 does not skip blank lines). `_split` leaves such rows out.
    empty_rows: bool = False


def _check_text(path: Path, key: str, contract: Contract) -> _Lines:
    """UTF-8 (a BOM is fine), not binary, not empty, within the limits on header, line length and rows: one
    streaming pass, naming the line and byte of a fault, stopping at the first. The same pass counts each line's
    commas, so a ragged line is found without reading the file again."""

    limits = contract.limits
    header_cap = limits.max_columns * (limits.max_header_field_bytes + 3) + 2
    max_line: int | None = None  # known once the header is: its width times the longest cell allowed
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = line_start = 0
    seen = _Lines()
    carry_commas = carry_quotes = 0  # in the line that runs on past the end of the previous chunk
    with open(path, "rb") as f:
        first = True
        while chunk := f.read(4 << 20):
            if first and chunk.startswith((b"\xff\xfe", b"\xfe\xff")):  # a UTF-16 BOM (Excel's "Unicode text")
                raise UnreadableFile(f"{key} is UTF-16 text, not UTF-8 (it starts with a UTF-16 byte order mark).",
                                     hint="Save it as CSV UTF-8 (in Excel: Save As, 'CSV UTF-8') and drop it again.")
            if first and b"\x00" in chunk[:8192]:
                raise UnreadableFile(f"{key} is a binary file, not CSV text (NUL bytes near the start).",
                                     hint="Drop the CSV export itself, or a .parquet file with a .parquet name.")
            if first and not chunk.strip(b"\xef\xbb\xbf \r\n\t"):
                raise UnreadableFile(f"{key} is empty.", hint="Drop a file with a header line and at least one row.")
            first = False
            try:
                # ASCII is UTF-8: skip the decoder (a third of this pass) unless a character runs on from before
                if not chunk.isascii() or decoder.getstate()[0]:
                    decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                bad = offset + exc.start
                line = lines + chunk[: exc.start].count(b"\n") + 1
                raise UnreadableFile(
                    f"{key} is not UTF-8: line {line}, byte offset {bad} (byte 0x{chunk[exc.start]:02x}).",
                    hint="Save it as UTF-8 and drop it again.") from exc
            data = np.frombuffer(chunk, dtype=np.uint8)
            newlines = np.flatnonzero(data == 10)
            ends = offset + newlines
            seen.quoted = seen.quoted or b'"' in chunk
            if ends.size:
                lengths = ends - np.concatenate(([line_start], ends[:-1] + 1))
                seen.longest = max(seen.longest, int(lengths.max()))
                last = int(newlines[-1])
                # An empty line (or a lone \r) is not ragged (`_split` leaves its row out); a quoted line is left to the
                # parser.
                blank = (lengths == 0) | ((lengths == 1) & (data[np.maximum(newlines - 1, 0)] == 13))
                commas = quotes = None
                # Every line of a chunk has the header's comma count if their sum is right, since a line with more
                # fields than the header stops the reader (and `_check_ragged` names it then). Else count per line.
                if lines == 0 or (seen.ragged is None and (
                        carry_quotes or chunk.find(b'"', 0, last) >= 0
                        or carry_commas + int(np.count_nonzero(data[:last] == 44))
                        != int(np.count_nonzero(~blank)) * seen.header_commas)):
                    commas = _per_line(np.flatnonzero(data == 44), newlines, carry_commas)
                    quotes = (_per_line(np.flatnonzero(data == 34), newlines, carry_quotes) if b'"' in chunk
                              else np.full(newlines.size, carry_quotes))
                if lines == 0:
                    assert commas is not None
                    if lengths[0] > header_cap:
                        raise over_limit(key, f"the header line is {int(lengths[0]):,} bytes", contract,
                                         "max_header_field_bytes")
                    seen.header_commas = int(commas[0])
                    max_line = (seen.header_commas + 1) * (limits.max_cell_bytes + 3) + 2
                short = lengths <= seen.header_commas + 1
                if lines == 0:
                    short[0] = False
                seen.empty_rows = seen.empty_rows or bool(short.any())
                long = np.flatnonzero(lengths > (max_line or header_cap))
                long = long[long > 0] if lines == 0 else long
                if long.size:
                    n = int(long[0])
                    raise over_limit(key, f"line {lines + n + 1} is {int(lengths[n]):,} bytes, "
                                          "more than its columns can hold", contract, "max_cell_bytes")
                if seen.ragged is None and commas is not None:
                    odd = (commas != seen.header_commas) & (quotes == 0) & ~blank
                    if lines == 0:
                        odd[0] = False
                    hit = np.flatnonzero(odd)
                    if hit.size:
                        n = int(hit[0])
                        start = int(ends[n - 1]) + 1 if n else line_start
                        seen.ragged = (lines + n + 1, start, int(lengths[n]), int(commas[n]))
                carry_commas = int(np.count_nonzero(data[last + 1:] == 44))
                carry_quotes = chunk.count(b'"', last + 1)
                line_start = int(ends[-1]) + 1
            else:
                carry_commas += int(np.count_nonzero(data == 44))
                carry_quotes += chunk.count(b'"')
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
        if (seen.ragged is None and lines > 0 and offset > line_start  # the last line, with no newline at its end
                and carry_quotes == 0 and carry_commas != seen.header_commas):
            seen.ragged = (lines + 1, line_start, offset - line_start, carry_commas)
        seen.longest = max(seen.longest, offset - line_start)
        if lines > 0 and 0 < offset - line_start <= seen.header_commas + 1:  # the last line, unended
            seen.empty_rows = True
    return seen


def _per_line(positions: Any, newlines: Any, carry: int) -> Any:
    """How many of the byte `positions` fall in each line ending at `newlines` (the first line has `carry` more)."""
    before = np.searchsorted(positions, newlines)
    counts = np.diff(before, prepend=0)
    counts[0] += carry
    return counts


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
        text = bad["line"][0]
        raise _ragged(key, int(bad["i"][0]) + 1, text.count(",") + 1, width, text)


def _ragged(key: str, line: int, fields: int, width: int, text: str) -> UnreadableFile:
    return UnreadableFile(f"{key} line {line} has {fields} fields, the header has {width}: {text[:80]!r}.",
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
    wrong, as_text = [], []
    for name, spec in contract.columns.items():
        have = schema[name]
        if spec.dtype != "str" and isinstance(have, (pl.Categorical, pl.Enum, pl.Null)):
            as_text.append(name)  # read as the text it holds (a pandas category, a column of None)
            continue
        # An int column may arrive as floats and a date column as timestamps (pandas writes them so): each value
        # is then checked to be exactly of the contract's type, row by row, as a CSV file's cells are. A column of
        # text (pandas writes an object column so: never parsed, or of mixed types) is read as a CSV cell is.
        ok = (have == POLARS_TYPES[spec.dtype] or spec.dtype == "str" or have == pl.Utf8
              or (spec.dtype == "float" and have.is_numeric()) or (spec.dtype == "int" and have.is_integer())
              or (spec.dtype == "int" and have.is_float())
              or (spec.dtype in ("date", "datetime") and isinstance(have, pl.Datetime)))
        if not ok:
            wrong.append(Failure(name, f"dtype {spec.dtype}", value=str(have)))
    if wrong:
        raise ValidationFailed(
            f"{key} has the wrong Parquet schema: " + "; ".join(f"column {f.column!r} is {f.value}, the contract "
                                                                 f"says {f.check.split()[-1]}" for f in wrong) + ".",
            hint="Write the columns with the contract's types (or as text, which is read as a CSV cell is), or fix "
                 f"contracts/{contract.dataset}.yaml.",
            failures=wrong)
    if pq.ParquetFile(path).metadata.num_rows == 0:
        raise UnreadableFile(f"{key} has a schema but no rows.", hint="Drop a file with at least one row.")
    return lf.with_columns(pl.col(as_text).cast(pl.Utf8)) if as_text else lf


def _check_parquet_limits(path: Path, key: str, contract: Contract, names: list[str]) -> None:
    """Rows, columns and decompressed size from the footer, before any row is read."""
    _check_names(key, names, contract)
    meta = pq.ParquetFile(path).metadata
    if meta.num_rows > contract.limits.max_rows:
        raise over_limit(key, f"it has {meta.num_rows:,} rows", contract, "max_rows", actual=meta.num_rows)
    # Sizes are judged on what the rows decode to, not on the footer's uncompressed sizes: those count the pages
    # as encoded, and a dictionary- or run-length-encoded column of one value is a few bytes for millions of rows
    # (9.9 M rows x 31 constant columns: a 1.4 MB file, 2.4 MB in the footer, 2.4 GB decoded).
    footer = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    file_bytes, decoded = max(path.stat().st_size, 1), max(footer, parquet_decoded_bytes(meta))
    if decoded > contract.limits.max_file_bytes:
        raise over_limit(key, f"its rows decode to {decoded:,} bytes", contract, "max_file_bytes", actual=decoded)
    ratio, limit = decoded / file_bytes, contract.limits.max_compression_ratio * PARQUET_DECODED_RATIO
    if decoded > RATIO_FLOOR and ratio > limit:
        raise over_limit(key, f"its {file_bytes:,} bytes decode to {decoded:,} ({meta.num_rows:,} rows of "
                              f"{meta.num_columns:,} columns), a ratio of {ratio:,.0f}", contract,
                         "max_compression_ratio", shown=f"{limit:,.0f} (limits.max_compression_ratio x "
                                                         f"{PARQUET_DECODED_RATIO} for Parquet's decoded sizes)",
                         actual=round(ratio, 1), parquet_limit=limit, file_bytes=file_bytes, decoded_bytes=decoded)


# Parquet's ratio is judged on decoded sizes against max_compression_ratio times this. The same rows decode wider
# than their text (an int64 flag is 8 bytes, "0," in a CSV 2) and dictionary, run-length and bit-packed pages beat
# gzip on repetitive columns: 3 M rows of sparse 0/1 flags and low-cardinality text are 25:1 as a .csv.gz but 94:1
# (snappy) to 134:1 (zstd) as Parquet decoded, while an ordinary table (the benchmark's, a pandas export) is 3:1
# to 8:1 and one with an id or a measurement among repetitive columns 28:1 to 65:1. A bomb of constant columns
# written by pyarrow's defaults is ~1,700:1, over 10 x the default; a milder one is bounded by max_file_bytes,
# which is judged on the same decoded size.
PARQUET_DECODED_RATIO = 10
# Bytes a value of each Parquet physical type decodes to (a boolean is a byte, as numpy and polars' casts hold it).
_DECODED_WIDTH = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12}
# The least a text value decodes to: polars holds each string as a 16-byte view (short strings inline), Arrow as
# a 4-byte offset plus its bytes. 8 counts an offset and a short value, below what the reader really holds.
MIN_TEXT_BYTES = 8


def parquet_decoded_bytes(meta: pq.FileMetaData) -> int:
    """What a Parquet file's rows decode to, from its footer: rows x each column's decoded width (fixed-width types
    by their width; text by the column chunk's uncompressed size or MIN_TEXT_BYTES a value, whichever is larger)."""
    widths: list[int | None] = []
    for j in range(meta.num_columns):
        column = meta.schema.column(j)
        kind = column.physical_type
        widths.append(column.length if kind == "FIXED_LEN_BYTE_ARRAY" else _DECODED_WIDTH.get(kind))
    total = 0
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        rows = group.num_rows
        for j, width in enumerate(widths):
            if width is not None:
                total += rows * max(width, 1)
            else:  # BYTE_ARRAY: text or binary
                total += max(group.column(j).total_uncompressed_size, rows * MIN_TEXT_BYTES)
    return total


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


def check_parts(item: str | dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """A contract's `checks:` entry as (name, parameters): `positive`, or `{at_most: {limit: 30}}`."""
    if isinstance(item, str):
        return item, {}
    name, params = next(iter(item.items()))
    return name, params or {}


def custom_check(extensions: Extensions, item: str | dict[str, dict[str, Any]]) -> pa.Check:
    """A check the app registers, as pandera runs it: a `pandera.Check` as is, or a function of the column (a polars
    expression) and the contract's parameters that gives true for valid rows. Nulls are left to `nullable`."""
    name, params = check_parts(item)
    fn = extensions.check(name)  # an AppError naming what is registered when it is not
    if isinstance(fn, pa.Check):
        return fn
    label = name if not params else f"{name}({', '.join(f'{k}={v!r}' for k, v in params.items())})"
    return pa.Check(lambda data: data.lazyframe.select(fn(pl.col(data.key), **params)), name=label, error=label)


def _batches(frame: pl.LazyFrame, batch_rows: int) -> Iterator[pl.DataFrame]:
    yield from frame.collect_batches(chunk_size=batch_rows)


def _split(frame: pl.LazyFrame, key: str, contract: Contract, workdir: Path, is_text: bool,
           batch_rows: int, extensions: Extensions | None = None, *, cells_fit: bool = False,
           skip_empty: bool = False) -> Split:
    """Type and check the rows batch by batch; valid rows stream into polars' Parquet sink (one file, bounded
    memory), quarantined rows (usually few) into a second file with their reasons. `skip_empty`: the text has
    blank lines or lines of empty cells; rows with no value at all are counted in `rows_empty` and left out, as
    pandas' reader skips blank lines (row numbers count the rows kept)."""
    schema = build_schema(contract, extensions)
    split = Split()
    read = frame.collect_schema()
    names = [c for c in read.names() if contract.extra_columns != "drop" or c in contract.columns]
    typed_schema = {c: POLARS_TYPES[contract.columns[c].dtype] if c in contract.columns else read[c] for c in names}
    typing, rules = _Typing(contract, is_text), _Rules(schema)
    sampler = _Sampler(SAMPLE_ROWS, seed=0)
    batch_rows = min(batch_rows, max(1_000, CELLS_PER_BATCH // max(len(read), 1)))
    invalid_writer: pq.ParquetWriter | None = None
    errors: list[BaseException] = []
    held: list[_Held] = []  # batches split already, their quarantined rows waiting for pandera's reasons

    def report() -> None:
        # pandera's reports of the held batches (one validation for them all), then per batch, in file order, as
        # if each had been reported on its own: the tallies and examples, and the quarantined rows with reasons.
        nonlocal invalid_writer
        for h, failures in zip(held, rules.report(held), strict=True):
            _count(split, failures, h.rejected)
            if h.rejected.height:
                invalid_writer = _write_rejected(h.rejected, failures, invalid_writer, workdir, split)
        held.clear()

    def valid_batches(*_: Any) -> Iterator[pl.DataFrame]:
        # Runs inside the sink: an error is kept and raised after it, as itself, not as the sink's error.
        offset = 0
        try:
            for raw in _batches(frame, batch_rows):
                if skip_empty:
                    empty = raw.select(no_value()).to_series()
                    if n_empty := int(empty.sum()):
                        split.rows_empty += n_empty
                        raw = raw.filter(~empty)
                if not cells_fit:
                    _check_cells(raw, key, contract, offset)
                if contract.extra_columns == "drop":
                    raw = raw.select(names)
                typed, failures = typing.batch(raw, offset)
                batch = rules.hold(typed, offset, failures)
                split.rows_total += raw.height
                bad_rows = sorted(batch.bad_rows())
                split.rows_invalid += len(bad_rows)
                split.rows_valid += raw.height - len(bad_rows)
                good = typed
                if bad_rows:
                    bad = np.zeros(raw.height, dtype=bool)
                    bad[np.asarray(bad_rows) - offset - 1] = True
                    numbered = raw.with_columns(pl.int_range(offset + 1, offset + raw.height + 1, eager=True)
                                                .alias(ROW))
                    batch.rejected = _own(numbered.filter(pl.Series(bad)))
                    good = typed.filter(pl.Series(~bad))
                held.append(batch)
                if batch.failures is not None or sum(h.rejected.height for h in held) >= HELD_ROWS:
                    report()
                if good.height:
                    sampler.add(good)
                    for c in good.columns:
                        split.null_counts[c] += good[c].null_count()
                    yield good
                offset += raw.height
            report()
        except BaseException as exc:  # re-raised below, once the sink has closed its file
            errors.append(exc)

    valid_path = workdir / "valid.parquet"
    try:
        # LZ4 (LZ4_RAW): the size of snappy (+0.7 % on the benchmark's CSV), 10 % less CPU to write and 30 % less to
        # read back (benchmarks/validate_large.py's data, 2026-11-29); zstd-1 is 17 % smaller and slower both ways. No
        # min/max statistics: every reader of data.parquet reads it whole.
        register_io_source(valid_batches, schema=typed_schema).sink_parquet(
            valid_path, compression="lz4", statistics=False, row_group_size=ROW_GROUP_ROWS)
    except pl.exceptions.PolarsError as exc:
        errors.append(exc)
    finally:
        if invalid_writer is not None:
            invalid_writer.close()
    if errors:
        error = errors[0]
        if isinstance(error, pl.exceptions.PolarsError):
            raise UnreadableFile(f"{key} could not be parsed: {_first_line(error)}",
                                 hint="Check the delimiter (Sluice reads comma-separated files), the quoting, and "
                                      "that every line has as many fields as the header.") from error
        raise error
    if split.rows_valid:
        split.valid_path, split.columns = valid_path, names
    else:
        valid_path.unlink(missing_ok=True)
    split.sample = sampler.frame()
    if split.rows_total == 0:
        raise UnreadableFile(f"{key} has a header but no rows.", hint="Drop a file with at least one row.")
    return split


def _count(split: Split, failures: list[Failure], rejected: pl.DataFrame) -> None:
    """Tally the rules broken, keeping the first examples of each (and the raw rows they came from: every failing
    row is among the batch's `rejected` rows, numbered in ROW)."""
    for f in failures:
        rule = (f.column, f.check)
        split.rule_counts[rule] += 1
        if split.rule_counts[rule] <= EXAMPLES_PER_RULE:
            split.examples.append(f)
            if f.row is not None and f.row not in split.example_rows:
                at = bisect.bisect_left(rejected[ROW].to_list(), f.row)
                split.example_rows[f.row] = {k: _jsonable(v) for k, v in rejected.drop(ROW).row(at,
                                                                                              named=True).items()}


def _write_rejected(rejected: pl.DataFrame, failures: list[Failure], writer: pq.ParquetWriter | None, workdir: Path,
                    split: Split) -> pq.ParquetWriter:
    """Append a batch's invalid rows (`rejected`: their raw text with row numbers) with their reasons to the
    quarantine file."""
    reasons = _reasons(failures)
    rejected = rejected.with_columns(
        pl.col(ROW).replace_strict(reasons, default="", return_dtype=pl.Utf8).alias(REASONS))
    table = rejected.with_columns(pl.exclude(ROW).cast(pl.Utf8)).to_arrow()
    if writer is None:
        split.invalid_path = workdir / "invalid.parquet"
        writer = pq.ParquetWriter(split.invalid_path, table.schema)
    writer.write_table(table.cast(writer.schema))
    return writer


class _Typing:
    """How one file's cells become their contract types, one select per batch.

    A date or datetime column's format is settled once per file, on the first values seen, as the known format
    that reads them exactly as polars does with no format (reading with a format is 2-3x faster). Every cell is
    first cast directly (no stripping, the settled format); only the cells that did not cast (blanks, padding,
    "3.0" in an int column, another date layout, non-finite floats) are typed again the slow way, by
    `typed_exprs`, on those rows alone, a date column's after the value its format was settled on (polars infers
    a layout from the first value it can read). So every cell is typed as `typed_exprs` types a batch that starts
    with the file's first readable value."""

    def __init__(self, contract: Contract, is_text: bool):
        self.contract, self.is_text = contract, is_text
        self.formats: dict[str, str | None] = {}
        self.anchors: dict[str, str] = {}  # a date column's first readable value, which settled its format

    def batch(self, raw: pl.DataFrame, offset: int) -> tuple[pl.DataFrame, list[Failure]]:
        """The typed batch, and a failure for every cell that does not cast (in column, then row order)."""
        specs = {n: s for n in raw.columns if (s := self.contract.columns.get(n)) is not None}
        exprs: list[pl.Expr] = []
        slow: list[str] = []
        for name in raw.columns:
            spec = specs.get(name)
            fast = None if spec is None else self._fast(raw, name, spec)
            if spec is None:
                exprs.append(pl.col(name))
            elif self._text(raw, name) and spec.dtype == "str":  # text is text: no cell fails
                exprs.append(as_categories(pl.col(name), spec.categories).alias(name))
            elif fast is not None:
                exprs.append(fast.alias(name))
            else:  # typed the slow way on every row: its failures come with it
                typed_e, failed_e, non_finite_e = typed_exprs(name, spec, self._text(raw, name), raw.schema[name])
                exprs += [typed_e, failed_e.alias(name + _FAILED), non_finite_e.alias(name + _NON_FINITE)]
                slow.append(name)
        out = raw.select(exprs)  # eager: polars' streaming engine costs ~10 % more on a batch in memory
        failures: list[Failure] = []
        for name, spec in specs.items():
            if self._text(raw, name) and spec.dtype == "str":
                continue
            if name in slow:
                failed, non_finite = out[name + _FAILED], out[name + _NON_FINITE]
                rows, non_finite_rows = failed.arg_true(), non_finite.arg_true()
            else:
                typed, source = out[name], raw[name]
                if typed.null_count() == source.null_count() and (spec.dtype != "float" or typed.is_finite().all()):
                    continue  # every cell cast
                if spec.dtype == "float":
                    redo = (typed.is_null() & source.is_not_null()) | (typed.is_nan() | typed.is_infinite())
                else:
                    redo = typed.is_null() & source.is_not_null()
                at = redo.fill_null(False).arg_true()
                if not at.len():
                    continue
                typed_e, failed_e, non_finite_e = typed_exprs(name, spec, self._text(raw, name), raw.schema[name])
                cells = source.gather(at)
                anchor = self.anchors.get(name)
                if anchor is not None:  # polars infers a date layout from the first value: the file's, as settled
                    cells = pl.concat([pl.Series(name, [anchor]), cells])
                again = cells.to_frame().select(typed_e, failed_e.alias("f"), non_finite_e.alias("n"))
                if anchor is not None:
                    again = again.slice(1)
                out = out.with_columns(typed.scatter(at, again[name].cast(typed.dtype, strict=False)))
                rows, non_finite_rows = at.gather(again["f"].arg_true()), at.gather(again["n"].arg_true())
            failures += [Failure(name, f"dtype {spec.dtype}", row=offset + i + 1, value=shown(raw[name][i]))
                         for i in rows.to_list()]
            if spec.dtype == "float":
                failures += [Failure(name, "finite number", row=offset + i + 1, value=str(raw[name][i]))
                             for i in non_finite_rows.to_list()]
        return out.select(raw.columns), failures

    def _text(self, raw: pl.DataFrame, name: str) -> bool:
        """Whether the column's cells are text, typed as a CSV file's are: every column of a CSV file, and a
        Parquet file's text columns (pandas writes an object column as text: dates never parsed, mixed types)."""
        return self.is_text or raw.schema[name] == pl.Utf8

    def _fast(self, raw: pl.DataFrame, name: str, spec: ColumnSpec) -> pl.Expr | None:
        """The direct cast of a text column, or None where only the slow way types it right."""
        col, target = pl.col(name), POLARS_TYPES[spec.dtype]
        if not self._text(raw, name):
            return None
        if spec.dtype in ("int", "float"):
            return col.cast(target, strict=False)
        if spec.dtype == "bool":
            return col.replace_strict({"true": True, "false": False, "1": True, "0": False, "True": True,
                                       "False": False, "TRUE": True, "FALSE": False}, default=None,
                                      return_dtype=pl.Boolean)
        if spec.dtype in ("date", "datetime"):
            fmt = spec.format or self._format(raw[name], spec.dtype)
            if fmt is None:
                return None
            if spec.dtype == "date":
                return col.str.to_date(fmt, strict=False, cache=False)  # the cache costs more than it saves
            return col.str.to_datetime(fmt, strict=False, time_unit="us", cache=False)
        return None

    def _format(self, values: pl.Series, dtype: str) -> str | None:
        """The column's format, settled on the first batch that has a readable value: the first known format that
        reads a sample exactly as polars reads it with no format. None: none does, or not yet (the slow way)."""
        if values.name in self.formats:
            return self.formats[values.name]
        sample = values.drop_nulls().head(FORMAT_SAMPLE).str.strip_chars()
        sample = sample.filter(sample.str.len_bytes() > 0)
        if not sample.len():
            return None  # settled on a later batch
        try:
            if dtype == "date":
                reference = sample.str.to_date(strict=False)
            else:
                reference = sample.str.to_datetime(strict=False, time_unit="us")
        except pl.exceptions.ComputeError:
            reference = pl.Series([None], dtype=pl.Date)
        if reference.null_count() == reference.len():
            return None  # nothing readable yet: this batch is typed the slow way, and a later one settles it
        if dtype == "date":
            found = next((f for f in DATE_FORMATS
                          if sample.str.to_date(f, strict=False).equals(reference, null_equal=True)), None)
        else:
            found = next((f for f in DATETIME_FORMATS if reference.dtype == pl.Datetime("us")
                          and sample.str.to_datetime(f, strict=False, time_unit="us").equals(
                              reference, null_equal=True)), None)
        self.formats[values.name] = found
        if found is not None:  # polars infers a layout from the first value it can read
            self.anchors[values.name] = sample.filter(reference.is_not_null())[0]
        return self.formats[values.name]


# A class written as a whole number: 0, 1, -2, and the same as decimals (1.0: pandas writes an integer column that has
# a missing value as floats). No leading zeros: 007 and 7 are codes, not one number.
WHOLE_NUMBER = r"^-?(?:0|[1-9][0-9]{0,14})(?:\.0+)?$"


def as_categories(value: pl.Expr, categories: list[str] | None) -> pl.Expr:
    """Text `value` with a whole-number category written another way (`1.0` for the class `1`, `0` for `0.0`)
    spelled as the contract has it; any other value as it is. The contract inferred from one file of a source keeps
    the labels as that file wrote them, and the next file, written by pandas once a label was missing, writes them
    as decimals: the same classes, and the model's classes stay named as the user first wrote them."""
    numbers: dict[int, list[str]] = {}
    for c in categories or ():
        if re.match(WHOLE_NUMBER, c):
            numbers.setdefault(int(float(c)), []).append(c)
    spelled = {n: cs[0] for n, cs in numbers.items() if len(cs) == 1}  # "1" and "1.0" both listed: left as written
    if not spelled:
        return value
    s = value.str.strip_chars()
    number = pl.when(s.str.contains(WHOLE_NUMBER)).then(s.cast(pl.Float64, strict=False).cast(pl.Int64))
    respelled = number.replace_strict(list(spelled), list(spelled.values()), default=None, return_dtype=pl.Utf8)
    return pl.when(value.is_in(categories or [])).then(value).otherwise(pl.coalesce(respelled, value))


def typed_exprs(name: str, spec: ColumnSpec, is_text: bool,
                source: pl.DataType | None = None) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """How column `name` becomes its contract type, as polars expressions: (typed value, cell did not cast,
    value is not finite). One definition of typing, used by validation and by the model loader alike. `source`:
    the column's type when it is not text (a Parquet file's, a frame's)."""
    target = POLARS_TYPES[spec.dtype]
    raw = pl.col(name)
    if not is_text:
        typed = raw.cast(target, strict=False)
        blank = pl.lit(False)
        # pandas writes an int column with nulls as float64 and a date column as midnight timestamps: a value is
        # taken when its contract type holds it exactly, never truncated (3.5 is not the int 3, 13:00 not a date).
        if spec.dtype == "int" and source is not None and source.is_float():
            typed = pl.when(raw == raw.floor()).then(typed)
        elif spec.dtype in ("date", "datetime") and source is not None and source.is_numeric():
            # A number is no date: polars would read it as days (or microseconds) since 1970, where JSON writers
            # send milliseconds (pandas' to_json) or seconds: a silent guess at the unit scored the wrong day.
            typed = pl.lit(None, dtype=target)
        elif spec.dtype == "date" and isinstance(source, pl.Datetime):
            # the wall clock in the value's own time zone: a UTC cast would move a Paris midnight to the day before
            typed = pl.when(raw.dt.time() == pl.lit(time(0))).then(raw.dt.date())
    else:
        s = raw.str.strip_chars()
        blank = s.str.len_bytes() == 0  # a blank cell is a null, not a type error
        if spec.dtype == "str":
            typed = raw
        elif spec.dtype == "bool":
            typed = s.str.to_lowercase().replace_strict(
                {"true": True, "false": False, "1": True, "0": False}, default=None, return_dtype=pl.Boolean)
        elif spec.dtype == "date" and spec.format is not None:
            # the contract's layout (US dates), or an ISO date: never polars' guess, which reads 02/03 as 2 March
            typed = pl.coalesce(s.str.to_date(spec.format, strict=False), s.str.to_date("%Y-%m-%d", strict=False),
                                s.str.extract(ISO_MIDNIGHT.pattern, 1).str.to_date("%Y-%m-%d", strict=False))
        elif spec.dtype == "datetime" and spec.format is not None:
            typed = s.str.to_datetime(spec.format, strict=False, time_unit="us")
        elif spec.dtype == "date":
            typed = s.str.to_date(strict=False)
            # An ISO datetime at exactly midnight ("2025-04-05T00:00:00", what pandas' to_json and many APIs write)
            # is that date; any other time of day is not a date and stays refused.
            midnight = s.str.extract(ISO_MIDNIGHT.pattern, 1).str.to_date("%Y-%m-%d", strict=False)
            typed = pl.when(typed.is_null()).then(midnight).otherwise(typed)
        elif spec.dtype == "datetime":
            # Read in UTC: a value with an offset (pandas writes `2024-03-01 08:00:00+01:00` for a zoned column)
            # is its instant in UTC, as a zoned Parquet timestamp is, where reading it with no zone raised for the
            # whole file; a value without one stays as written.
            typed = s.str.to_datetime(strict=False, time_unit="us", time_zone="UTC").dt.replace_time_zone(None)
        elif spec.dtype == "int":
            # "3.0" is an integer written by a tool that went through floats (pandas does, for a column with nulls).
            as_float = s.cast(pl.Float64, strict=False)
            whole = as_float.is_not_null() & (as_float == as_float.floor()) & (as_float.abs() < 2.0**53)
            direct = s.cast(target, strict=False)
            typed = pl.when(direct.is_null() & whole).then(as_float.cast(pl.Int64, strict=False)).otherwise(direct)
        else:
            typed = s.cast(target, strict=False)
    if spec.dtype == "str":
        typed = as_categories(typed, spec.categories)
    failed = typed.is_null() & raw.is_not_null()
    if is_text and spec.dtype != "str":
        # A blank cell, or NA, N/A, null, -, ? (which no type reads: they are null already), is missing, not a
        # type error.
        blank = blank | s.is_in(list(MISSING_MARKERS))
        failed = failed & ~blank.fill_null(False)
    non_finite = typed.is_infinite().fill_null(False) if spec.dtype == "float" else pl.lit(False)
    if spec.dtype == "float":  # NaN is missing (MISSING_MARKERS); an infinity is refused
        typed = pl.when(non_finite | typed.is_nan().fill_null(False)).then(None).otherwise(typed)
    return typed.alias(name), failed, non_finite


class _Rules:
    """pandera's schema, run where it can fail.

    pandera validating a whole batch cost as much as reading it (a collect per check, then its reports). Here the
    schema's checks, applied by pandera's own check backend (nulls pass unless `ignore_na=False`, as pandera
    has it), and its nullability, run first in one polars pass, giving the rows that break a rule, so the batch is
    split at once; pandera then validates those rows alone and reports them, for many batches in one validation
    (`hold`, `report`: its cost is mostly per call). A check whose output is not one value per row (an aggregate),
    a dataframe-level check, or one that reports only its first failure cases makes pandera validate each whole
    batch, as before."""

    def __init__(self, schema: pa.DataFrameSchema):
        self.schema = schema
        self.row_wise = not schema.checks
        # A check that reports only its first failure cases reports per validation: such a schema is validated
        # batch by batch, as the rows it reports are the rows that fail.
        self.holds = self.row_wise and all(check.n_failure_cases is None for column in schema.columns.values()
                                           for check in column.checks)
        self.narrowed: dict[tuple[str, ...], pa.DataFrameSchema] = {}
        schema.register_default_backends(pl.LazyFrame)  # what validate() does first: the polars checks' backends

    def check(self, typed: pl.DataFrame, offset: int, already: list[Failure]) -> list[Failure]:
        """The failures of the batch's rows, as pandera reports them."""
        suspects = self._suspects(typed) if self.row_wise else None
        if suspects is None:
            return _check_batch(self.schema, typed, offset, already)
        mask, columns = suspects
        at = mask.arg_true()
        if not at.len():
            return []
        failures = _check_batch(self._narrow(columns), typed[at], 0, [])
        rows = at.to_list()
        cast_failed = {(f.column, f.row) for f in already}
        out = []
        for f in failures:
            assert f.row is not None  # a failure of the whole column sent the batch to pandera whole, above
            f = dataclasses.replace(f, row=offset + rows[f.row - 1] + 1)
            if (f.column, f.row) not in cast_failed:
                out.append(f)
        return out

    def hold(self, typed: pl.DataFrame, offset: int, cast: list[Failure]) -> _Held:
        """The batch with the rows a rule fails, found by pandera's check backend, for `report` to have pandera
        report later (with other batches); or, for a schema whose checks are not all row-wise, with pandera's
        failures of the whole batch now. `cast`: the batch's typing failures."""
        suspects = self._suspects(typed) if self.holds else None
        if suspects is None:
            return _Held(offset, cast, failures=cast + self.check(typed, offset, already=cast))
        mask, columns = suspects
        at = mask.arg_true()
        return _Held(offset, cast, suspects=_own(typed[at]), rows=(at + offset + 1).to_list(), columns=columns)

    def report(self, held: list[_Held]) -> list[list[Failure]]:
        """Each held batch's failures, its typing failures then pandera's: pandera validates the suspect rows of
        all the batches at once, and each batch gets its own in the order pandera reports them (check by check,
        row by row), as if it had validated that batch alone."""
        out = [[*h.cast] if h.failures is None else h.failures for h in held]
        waiting = [h for h in held if h.failures is None and h.suspects.height]
        if not waiting:
            return out
        wanted = {c for h in waiting for c in h.columns}
        schema = self._narrow(tuple(c for c in self.schema.columns if c in wanted))
        failures = _check_batch(schema, pl.concat([h.suspects for h in waiting]), 0, [])
        rows = [(i, row) for i, h in enumerate(held) if h.failures is None for row in h.rows]
        cast_failed = [{(f.column, f.row) for f in h.cast} for h in held]
        for f in failures:
            assert f.row is not None  # a failure of the whole column sent the batch to pandera whole, in hold()
            i, row = rows[f.row - 1]
            if (f.column, row) not in cast_failed[i]:
                out[i].append(dataclasses.replace(f, row=row))
        for h, failures in zip(held, out, strict=True):
            # the rows split out before pandera reported them are the rows it reports (or that did not cast)
            assert h.failures is not None or set(h.rows) <= {f.row for f in failures}, "pandera and its checks differ"
        return out

    def _narrow(self, columns: tuple[str, ...]) -> pa.DataFrameSchema:
        """The schema with only the columns where a row may fail: pandera's cost is per column and check, and
        the others' checks passed on every row already (by pandera's own check backend)."""
        if len(columns) == len(self.schema.columns):
            return self.schema
        if columns not in self.narrowed:
            self.narrowed[columns] = self.schema.select_columns(list(columns))
        return self.narrowed[columns]

    def _suspects(self, typed: pl.DataFrame) -> tuple[pl.Series, tuple[str, ...]] | None:
        """Rows a rule may fail (a mask) and the columns whose rules they may fail (in the schema's order), or None
        if a check's output is not one value per row."""
        from pandera.api.polars.types import PolarsData
        from pandera.backends.polars.checks import PolarsCheckBackend

        lf, parts, owners = typed.lazy(), [], []
        for name, column in self.schema.columns.items():
            if name not in typed.columns:
                return None
            if not column.nullable:
                parts.append(lf.select(pl.col(name).is_null()))
                owners.append(name)
            for check in column.checks:
                builtin = getattr(check._check_fn, "__name__", None)
                if builtin is not None and check.is_builtin_check(builtin):
                    check._check_fn = check.get_builtin_check_fn(builtin)  # as Check.__call__ does, for polars
                backend = pa.Check.get_backend(lf)(check)
                if not isinstance(backend, PolarsCheckBackend):
                    return None
                out = backend.apply(PolarsData(lf, name))
                if not isinstance(out, pl.LazyFrame):
                    return None
                ok = pl.first()  # as PolarsCheckBackend.postprocess_lazyframe_output reads it
                parts.append(out.select(~(ok | ok.is_null()) if check.ignore_na else ~ok.fill_null(False)))
                owners.append(name)
        if not parts:
            return pl.Series([False] * typed.height), ()
        masks = pl.collect_all(parts, engine="in-memory")  # the batch is in memory: ~10 % less than streaming
        if any(m.height != typed.height for m in masks):
            return None
        frame = pl.DataFrame([m.to_series().alias(str(i)) for i, m in enumerate(masks)])
        hit = frame.select(pl.all().any()).row(0)
        columns = tuple(dict.fromkeys(name for name, h in zip(owners, hit, strict=True) if h))
        return frame.select(pl.any_horizontal(pl.all())).to_series(), columns


@dataclass
class _Held:
    """A batch whose rows are split, waiting for pandera's report of its quarantined rows (`_Rules.report`)."""

    offset: int
    cast: list[Failure]  # the typing failures, in column then row order
    failures: list[Failure] | None = None  # all of them, when pandera validated the batch at once
    suspects: pl.DataFrame = field(default_factory=pl.DataFrame)  # typed rows a rule fails
    rows: list[int] = field(default_factory=list)  # their row numbers
    columns: tuple[str, ...] = ()  # the columns of the rules they fail
    rejected: pl.DataFrame = field(default_factory=pl.DataFrame)  # the quarantined rows' raw text, numbered (ROW)

    def bad_rows(self) -> set[int]:
        """The rows that go to the quarantine: a cell did not cast, or a rule fails."""
        failures = self.cast if self.failures is None else self.failures
        return {f.row for f in failures if f.row is not None} | set(self.rows)


def _own(rows: pl.DataFrame) -> pl.DataFrame:
    """The rows with text of their own: a text column's rows taken out of a batch point into the whole batch's text,
    which a held batch would keep alive (on a 2 GB file, peak RSS 1.55 GB instead of 1.0)."""
    text = [c for c, t in rows.schema.items() if t == pl.Utf8]
    if not text or not rows.height:
        return rows
    copied = pl.from_arrow(rows.select(text).to_arrow(compat_level=pl.CompatLevel.oldest()))
    assert isinstance(copied, pl.DataFrame)
    return rows.with_columns(copied.get_columns())


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
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.kept: pl.DataFrame | None = None

    def add(self, batch: pl.DataFrame) -> None:
        keys = self.rng.random(batch.height)
        keep = None
        if self.kept is not None and self.kept.height == self.size:  # a key over the largest kept cannot make it
            keep = np.flatnonzero(keys <= self.kept["_u"].to_numpy().max())
        if (batch.height if keep is None else keep.size) > self.size:  # only the smallest keys can make the cut
            keep = (np.sort(np.argpartition(keys, self.size)[: self.size]) if keep is None
                    else keep[np.sort(np.argpartition(keys[keep], self.size)[: self.size])])
        if keep is not None:
            batch, keys = batch[keep], keys[keep]
        keyed = batch.with_columns(pl.Series("_u", keys))
        merged = keyed if self.kept is None else pl.concat([self.kept, keyed], how="diagonal_relaxed")
        self.kept = merged.bottom_k(self.size, by="_u")

    def frame(self) -> pl.DataFrame | None:
        return None if self.kept is None else self.kept.drop("_u")


def shown(value: Any) -> Any:
    """A cell as a failure shows it: a timestamp as its ISO text (what the user sent; a repr would be
    datetime.datetime(...)). Shared with the model loader's refusals (ml/bundle.py)."""
    return value.isoformat(sep=" ") if isinstance(value, datetime) else value


def no_value() -> pl.Expr:
    """True for a row with no value at all: what polars 2 reads a blank line as (and a line of empty cells)."""
    return pl.all_horizontal(pl.all().is_null())


def _jsonable(value: Any) -> Any:
    return value if value is None or isinstance(value, (int, float, bool)) else clip(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_sample(key: str, data: bytes) -> pl.DataFrame:
    """A small sample file as a frame with inferred types (for `sluice contract infer`). A file validation would
    refuse as a whole (not UTF-8, another delimiter, duplicate column names, unparseable) is refused here with the
    same words, not with the reader's traceback."""
    name = key.lower()
    if name.endswith(".parquet"):
        try:
            frame = pl.read_parquet(io.BytesIO(data))
        except Exception as exc:  # polars raises several kinds for a broken file
            raise UnreadableFile(f"{key} is not a readable Parquet file ({type(exc).__name__}: {_first_line(exc)}).",
                                 hint="Re-export it as Parquet or CSV.") from exc
        # Validation reads a Parquet column of text as CSV cells (pandas writes an object column so: ISO dates or
        # numbers never parsed): typed here as its CSV export would be, so both files infer the same contract (a
        # date column inferred as text made each day a category, and a later real timestamp column passed as text).
        text = [c for c in frame.columns if frame.schema[c] == pl.Utf8]
        if text and frame.height:
            blank_as_csv = [pl.when(pl.col(c) != "").then(pl.col(c)).alias(c) for c in text]  # "" is no value
            cells = _read_csv_cells(frame.select(blank_as_csv).write_csv().encode())
            frame = frame.with_columns(cells[c] for c in text if cells.schema[c] not in (pl.Utf8, pl.Null))
        return frame
    if name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise UnreadableFile(f"{key} is not valid gzip ({exc}).", hint="Compress it again.") from exc
    _check_sample_text(key, data)
    try:
        frame = _read_csv_cells(data)
    except pl.exceptions.PolarsError as exc:
        raise UnreadableFile(f"{key} could not be parsed as CSV: {_first_line(exc)}",
                             hint="Check the delimiter (Sluice reads comma-separated files), the quoting, and that "
                                  "every line has as many fields as the header.") from exc
    # Blank lines (and lines of empty cells) are rows of nulls to polars 2: left out, as validation leaves them out,
    # or they would make every column look nullable.
    return frame.filter(~no_value()) if frame.width else frame


def _read_csv_cells(data: bytes) -> pl.DataFrame:
    """CSV text as a frame with the types polars infers for its cells (dates, numbers, bools)."""
    frame = pl.read_csv(io.BytesIO(data), infer_schema_length=None, try_parse_dates=True)
    # A number or date column that writes its missing values as NA, N/A, null, - or ? (R, Excel, UCI): those
    # cells are missing, as validation reads them (typed_exprs), not a reason to call the column text.
    marked = pl.read_csv(io.BytesIO(data), infer_schema_length=None, try_parse_dates=True,
                         null_values=list(MISSING_MARKERS))
    return frame.with_columns(marked[c] for c in frame.columns
                              if frame.schema[c] == pl.Utf8 and marked.schema[c] not in (pl.Utf8, pl.Null))


def _check_sample_text(key: str, data: bytes) -> None:
    """What `_check_text` and `_scan_csv` refuse in a dropped file, for a sample in memory."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UnreadableFile(f"{key} is UTF-16 text, not UTF-8 (it starts with a UTF-16 byte order mark).",
                             hint="Save it as CSV UTF-8 (in Excel: Save As, 'CSV UTF-8').")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UnreadableFile(f"{key} is not UTF-8: line {line}, byte offset {exc.start} (byte "
                             f"0x{data[exc.start]:02x}).",
                             hint="Save it as UTF-8 (in Excel: Save As, 'CSV UTF-8').") from exc
    header = next(csv.reader([text.split("\n", 1)[0].rstrip("\r")]), [])
    if len(header) == 1 and any(d in header[0] for d in ";\t|"):
        sep = next(d for d in ";\t|" if d in header[0])
        raise UnreadableFile(f"{key} has a single column {header[0][:60]!r}: it is separated by {sep!r}, not a comma.",
                             hint="Export the file comma-separated (in Excel: Save As, 'CSV UTF-8 (Comma "
                                  "delimited)').")
    _check_duplicates(key, header, "")


def _check_duplicates(key: str, header: list[str], then: str) -> None:
    """Refuse a header that names a column twice; several unnamed columns are told as what they usually are: the
    empty columns a spreadsheet exports after the last one used (every line ends in `,,`)."""
    unnamed = [i + 1 for i, c in enumerate(header) if not c.strip()]
    if len(unnamed) > 1:
        raise UnreadableFile(f"{key} has {len(unnamed)} columns without a name (columns "
                             f"{', '.join(map(str, unnamed[:10]))}{', ...' if len(unnamed) > 10 else ''} of "
                             f"{len(header)}), so their names repeat.",
                             hint="If they are empty columns a spreadsheet exported (every line ends in commas), "
                                  "delete those columns in the sheet and export again; otherwise give each a name"
                                  f"{then}.")
    duplicates = sorted(c for c, n in Counter(header).items() if n > 1)
    if duplicates:
        raise UnreadableFile(f"{key} has duplicate column names: {[clip(d, 60) for d in duplicates[:20]]}.",
                             hint=f"Rename the columns so each name appears once{then}.")
