"""Validation: the bad-file corpus, row-level splits, and property-based reconciliation."""

from __future__ import annotations

import itertools
import json
import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import numpy as np
import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from sluice.core.errors import UnreadableFile
from sluice.core.runtime import Runtime
from sluice.events.s3 import ObjectCreated
from sluice.ml.contract import ColumnSpec, Contract, ContractError, infer_contract, parse_contract
from sluice.ml.validation import read_sample, validate_file

CORPUS = Path(__file__).parent / "corpus"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((CORPUS / "expected.yaml").read_text())
PEOPLE = parse_contract((CORPUS / "people.yaml").read_text())




def test_every_corpus_file_has_an_expectation() -> None:
    named = {spec.get("file", name) for name, spec in EXPECTED.items()}
    on_disk = {p.name for p in CORPUS.iterdir() if p.name not in ("expected.yaml", "people.yaml")}
    assert named == on_disk


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_corpus(case: str, runtime: Runtime) -> None:
    spec = EXPECTED[case]
    filename = spec.get("file", case)
    contract = PEOPLE.model_copy(update=spec.get("contract", {}))
    runtime.store.put("contracts/people.yaml", contract.to_yaml().encode())
    key = f"incoming/people/{case}"
    runtime.store.put(key, (CORPUS / filename).read_bytes())
    info = runtime.store.head(key)
    assert info is not None
    runtime.execute("validate", ObjectCreated(runtime.settings.bucket, key, info.size, info.etag).to_dict())

    [entry] = [e for k in runtime.store.keys("ledger/people/") if (e := runtime.store.get_json(k))["key"] == key]
    assert entry["outcome"] == spec["outcome"], entry
    if spec["outcome"] == "validated":
        assert (entry["rows"], entry["rows_quarantined"]) == (spec["valid"], spec["quarantined"])
        assert entry.get("rows_empty", 0) == spec.get("empty", 0)
        if spec["quarantined"]:
            report = runtime.store.get_json(f"quarantine/people/{entry['data_version']}/report.json")
            rows = pl.read_parquet(__import__("io").BytesIO(runtime.store.get(report["rows_file"])))
            assert rows.height == spec["quarantined"] == report["rows"]["quarantined"]
            assert report["rows"]["valid"] + report["rows"]["quarantined"] == report["rows"]["total"]
            text = json.dumps(report)
            for needle in spec["quarantine"]:
                assert needle in text, f"{needle!r} not in the report"
        return
    report = runtime.store.get_json(entry["report"])
    assert report["reason"] == spec["reason"]
    assert key in report["message"] and report["what_to_do"]
    for needle in spec["message"]:
        assert needle in entry["message"], f"{case}: {needle!r} not in {entry['message']!r}"
    assert "Traceback" not in json.dumps(report)
    assert runtime.store.get(report["file"]) == (CORPUS / filename).read_bytes()  # the bytes are kept


# -- property: every row ends in exactly one place --------------------------------------------------------------

_values = {
    "int": st.one_of(st.integers(-50, 150).map(str), st.sampled_from(["", "x", "1.5", " 7 "])),
    "float": st.one_of(st.floats(-1e3, 1e3, allow_nan=False).map(repr), st.sampled_from(["", "nan", "inf", "a"])),
    "str": st.sampled_from(["a", "b", "c", "", "zz"]),
}


@st.composite
def frames_and_contracts(draw: st.DrawFn) -> tuple[list[str], list[list[str]], Contract]:
    n_cols = draw(st.integers(1, 4))
    kinds = [draw(st.sampled_from(sorted(_values))) for _ in range(n_cols)]
    names = [f"c{i}" for i in range(n_cols)]
    rows = draw(st.lists(st.tuples(*[_values[k] for k in kinds]), min_size=1, max_size=40))
    columns = {}
    for name, kind in zip(names, kinds, strict=True):
        lo = draw(st.one_of(st.none(), st.integers(-20, 20)))
        columns[name] = ColumnSpec(
            dtype=kind, nullable=draw(st.booleans()),  # type: ignore[arg-type]
            min=None if kind == "str" or lo is None else float(lo),
            max=None if kind == "str" or lo is None else float(lo + draw(st.integers(0, 100))),
            categories=draw(st.one_of(st.none(), st.just(["a", "b"]))) if kind == "str" else None)
    columns["y"] = ColumnSpec(dtype="str", nullable=True)
    contract = Contract(dataset="prop", target="y", task="binary", metric="roc_auc", columns=columns)
    return names, [[*r, "t"] for r in rows], contract


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=frames_and_contracts(), batch=st.integers(1, 16))
def test_every_row_is_valid_or_quarantined_exactly_once(case: Any, batch: int, tmp_path: Path) -> None:
    names, rows, contract = case
    path = tmp_path / "f.csv"
    lines = [",".join([*names, "y"])] + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    work = tmp_path / "w"
    work.mkdir(exist_ok=True)
    try:
        split = validate_file(path, "incoming/prop/f.csv", contract, work, batch_rows=batch)
    except UnreadableFile:
        return  # e.g. every field empty on a one-column file reads as blank lines; file-level, not row-level
    valid = pl.read_parquet(split.valid_path).height if split.valid_path else 0
    invalid = pl.read_parquet(split.invalid_path) if split.invalid_path else None
    n_invalid = invalid.height if invalid is not None else 0
    assert split.rows_total == len(rows) == valid + n_invalid
    assert (split.rows_valid, split.rows_invalid) == (valid, n_invalid)
    if invalid is not None:
        row_numbers = invalid["_sluice_row"].to_list()
        assert len(set(row_numbers)) == len(row_numbers) and all(1 <= r <= len(rows) for r in row_numbers)
        assert invalid["_sluice_reasons"].str.len_chars().min() > 0  # type: ignore[operator]


# -- contracts --------------------------------------------------------------------------------------------------


def test_infer_contract_from_a_sample() -> None:
    frame = pl.DataFrame({"x": [1.0, 2.5, 3.0, None], "c": ["a", "b", "a", "b"], "y": [0, 1, 0, 1]})
    contract = infer_contract(frame, "demo", "y")
    assert contract.task == "binary" and contract.metric == "roc_auc"
    # The observed range 1..3, widened by its span and kept non-negative; text features take any value.
    assert contract.columns["x"] == ColumnSpec(dtype="float", nullable=True, min=0.0, max=5.0)
    assert contract.columns["c"] == ColumnSpec(dtype="str", nullable=True)
    assert contract.columns["y"].categories == ["0", "1"]
    assert parse_contract(contract.to_yaml()) == contract
    regression = infer_contract(pl.DataFrame({"x": list(range(50)), "y": [i * 0.5 for i in range(50)]}), "r", "y")
    assert regression.task == "regression" and regression.metric == "rmse"


@pytest.mark.parametrize(("text", "needle"), [
    ("dataset: a\n", "target"),
    ("[1, 2]", "mapping"),
    ("dataset: a\ntarget: y\ntask: binary\nmetric: rmse\ncolumns: {y: {dtype: str}}\n", "does not fit task"),
    ("dataset: a\ntarget: z\ntask: binary\nmetric: roc_auc\ncolumns: {y: {dtype: str}}\n", "not among the columns"),
    ("dataset: a\ntarget: y\ntask: binary\nmetric: roc_auc\ncolumns: {y: {dtype: str}}\nfeatures:\n"
     "  - {name: f, op: exec, columns: [y]}\n", "features.0.op"),
])
def test_bad_contracts_name_the_field(text: str, needle: str) -> None:
    with pytest.raises(ContractError) as info:
        parse_contract(text, source="people.yaml")
    assert needle in str(info.value) and "people.yaml" in str(info.value)


# -- the fast paths give the slow paths' answers ----------------------------------------------------------------

_cells = {
    "int": st.one_of(st.integers(-10**12, 10**12).map(str),
                     st.sampled_from(["", " ", " 7 ", "3.0", "-2.0", "1e3", "x", "+5", "9" * 25, "1_000"])),
    "float": st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(repr),
                       st.sampled_from(["", " 1.5", "nan", "-inf", "1e400", "a", "1,5"])),
    "bool": st.sampled_from(["true", "False", " TRUE ", "1", "0", "yes", "", "tRuE"]),
    "date": st.one_of(st.dates().map(str), st.sampled_from(["", " 2024-01-02 ", "2024/01/02", "02/01/2024",
                                                            "2024-1-2", "2024-02-30", "x", "2024-01-02 10:00:00",
                                                            "2024-01-02T00:00:00", "2024-01-02T00:00:00Z",
                                                            "2024-01-02 00:00:00+00:00", "2024-01-02T00:00+02:00"])),
    "datetime": st.one_of(st.datetimes().map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S")),
                          st.sampled_from(["", "2024-01-02T03:04:05", "2024-01-02 03:04:05.5", "2024-01-02",
                                           " 2024-01-02 03:04:05", "2024-01-02 03:04", "nope"])),
}


@settings(max_examples=80, deadline=None)
@given(dtype=st.sampled_from(sorted(_cells)), data=st.data())
def test_one_pass_typing_types_every_cell_as_typed_exprs_does(dtype: str, data: st.DataObject) -> None:
    from sluice.ml.validation import _Typing, typed_exprs

    cells = data.draw(st.lists(st.one_of(st.none(), _cells[dtype]), min_size=1, max_size=60))
    raw = pl.DataFrame({"c": pl.Series(cells, dtype=pl.Utf8)})
    spec = ColumnSpec(dtype=dtype, nullable=True)  # type: ignore[arg-type]
    contract = Contract(dataset="t", target="c", task="regression", metric="rmse", columns={"c": spec})
    typed_e, failed_e, non_finite_e = typed_exprs("c", spec, is_text=True)
    try:
        slow = raw.select(typed_e, failed_e.alias("failed"), non_finite_e.alias("non_finite"))
    except pl.exceptions.ComputeError:  # no value polars can infer a date layout from: the file is unreadable
        with pytest.raises(pl.exceptions.ComputeError):
            _Typing(contract, is_text=True).batch(raw, offset=10)
        return
    typed, failures = _Typing(contract, is_text=True).batch(raw, offset=10)
    assert typed["c"].equals(slow["c"], null_equal=True), (cells, typed["c"].to_list(), slow["c"].to_list())
    expected = [(f"dtype {dtype}", 11 + i) for i in slow["failed"].arg_true().to_list()]
    expected += [("finite number", 11 + i) for i in slow["non_finite"].arg_true().to_list()]
    assert [(f.check, f.row) for f in failures] == expected


def test_a_date_format_is_settled_once_per_file_and_other_layouts_still_read(tmp_path: Path) -> None:
    from sluice.ml.validation import _Typing

    contract = Contract(dataset="t", target="y", task="regression", metric="rmse", columns={
        "d": ColumnSpec(dtype="date", nullable=True), "t": ColumnSpec(dtype="datetime", nullable=True),
        "y": ColumnSpec(dtype="float")})
    typing = _Typing(contract, is_text=True)
    first = pl.DataFrame({"d": [None, "2024-03-01", "2024-03-02"], "t": ["2024-03-01 10:00:00", None, None],
                          "y": ["1", "2", "3"]})
    typing.batch(first, 0)
    assert typing.formats == {"d": "%Y-%m-%d", "t": "%Y-%m-%d %H:%M:%S"}
    later = pl.DataFrame({"d": [" 2024-03-05", "2024-3-6", "05/03/2024", "soon"],
                          "t": ["2024-03-05T01:02:03", "2024-03-05 01:02:03", "", "later"], "y": ["1"] * 4})
    typed, failures = typing.batch(later, 3)
    assert typing.formats == {"d": "%Y-%m-%d", "t": "%Y-%m-%d %H:%M:%S"}  # not settled again
    assert typed["d"].to_list()[:2] == [date(2024, 3, 5), date(2024, 3, 6)]
    assert typed["t"].to_list()[:3] == [datetime(2024, 3, 5, 1, 2, 3)] * 2 + [None]
    assert {(f.column, f.row, f.value) for f in failures} >= {("d", 7, "soon"), ("t", 7, "later")}


@st.composite
def typed_batches(draw: st.DrawFn) -> tuple[pl.DataFrame, Contract]:
    n = draw(st.integers(1, 50))
    ints = draw(st.lists(st.one_of(st.none(), st.integers(-20, 120)), min_size=n, max_size=n))
    floats = draw(st.lists(st.one_of(st.none(), st.floats(-2, 2, allow_nan=False)), min_size=n, max_size=n))
    words = draw(st.lists(st.one_of(st.none(), st.sampled_from(["b", "a", "zz", "c"])), min_size=n, max_size=n))
    contract = Contract(dataset="t", target="w", task="binary", metric="roc_auc", columns={
        "i": ColumnSpec(dtype="int", nullable=draw(st.booleans()), min=0, max=100),
        "f": ColumnSpec(dtype="float", nullable=draw(st.booleans()), max=1.5),
        "w": ColumnSpec(dtype="str", nullable=draw(st.booleans()), categories=["b", "a"])})
    frame = pl.DataFrame({"i": pl.Series(ints, dtype=pl.Int64), "f": pl.Series(floats, dtype=pl.Float64),
                          "w": pl.Series(words, dtype=pl.Utf8)})
    return frame, contract


@settings(max_examples=60, deadline=None)
@given(case=typed_batches(), offset=st.integers(0, 1000))
def test_pandera_on_the_suspect_rows_reports_what_pandera_on_the_batch_does(case: Any, offset: int) -> None:
    from sluice.ml.validation import _check_batch, _Rules, build_schema

    frame, contract = case
    schema = build_schema(contract)
    fast = _Rules(schema).check(frame, offset, already=[])
    whole = _check_batch(schema, frame, offset, already=[])
    key = lambda f: (f.column, f.check, f.row, repr(f.value))  # noqa: E731
    assert sorted(map(key, fast)) == sorted(map(key, whole))


def test_the_valid_rows_are_one_parquet_file_in_order_and_the_same_bytes_every_time(tmp_path: Path) -> None:
    rows = [f"{i},{'x' if i % 7 == 0 else i % 90},2024-01-{1 + i % 28:02d}" for i in range(1, 501)]
    path = tmp_path / "f.csv"
    path.write_text("id,age,day\n" + "\n".join(rows) + "\n")
    contract = Contract(dataset="t", target="age", task="regression", metric="rmse", columns={
        "id": ColumnSpec(dtype="int"), "age": ColumnSpec(dtype="int", min=1), "day": ColumnSpec(dtype="date")})
    outputs = []
    for run in range(2):
        work = tmp_path / f"w{run}"
        work.mkdir()
        split = validate_file(path, "incoming/t/f.csv", contract, work, batch_rows=64)
        assert split.valid_path is not None and split.invalid_path is not None
        outputs.append((split.valid_path.read_bytes(), split.invalid_path.read_bytes()))
    assert outputs[0] == outputs[1]
    valid = pl.read_parquet(split.valid_path)
    bad = {i for i in range(1, 501) if i % 7 == 0 or i % 90 == 0}
    assert valid["id"].to_list() == [i for i in range(1, 501) if i not in bad]
    assert valid.schema == pl.Schema({"id": pl.Int64, "age": pl.Int64, "day": pl.Date})
    invalid = pl.read_parquet(split.invalid_path)
    assert invalid["_sluice_row"].to_list() == sorted(bad)
    assert (split.rows_valid, split.rows_invalid, split.columns) == (len(valid), len(bad), ["id", "age", "day"])


def test_pandera_reports_many_batches_at_once_as_it_would_batch_by_batch(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import sluice.ml.validation as validation

    def cells(i: int) -> str:
        age = "x" if i % 11 == 0 else ("150" if i % 7 == 0 else str(20 + i % 50))  # a cast failure, a range
        seg = "gold" if i % 13 else "diamond"  # a category
        score = "" if i % 17 == 0 else f"0.{i % 10}"  # a blank in a column that is not nullable
        return f"{i},{age},{seg},{score}"

    path = tmp_path / "f.csv"
    path.write_text("id,age,segment,score\n" + "\n".join(cells(i) for i in range(1, 2001)) + "\n")
    contract = Contract(dataset="t", target="segment", task="binary", metric="roc_auc", columns={
        "id": ColumnSpec(dtype="int"), "age": ColumnSpec(dtype="int", min=18, max=100),
        "segment": ColumnSpec(dtype="str", categories=["gold", "silver"]), "score": ColumnSpec(dtype="float")})
    calls = []
    check_batch = validation._check_batch
    monkeypatch.setattr(validation, "_check_batch", lambda *a, **k: calls.append(1) or check_batch(*a, **k))

    def run(held_rows: int) -> tuple[Any, ...]:
        monkeypatch.setattr(validation, "HELD_ROWS", held_rows)
        calls.clear()
        work = tmp_path / f"w{held_rows}"
        work.mkdir()
        s = validate_file(path, "incoming/t/f.csv", contract, work, batch_rows=50)
        assert s.valid_path is not None and s.invalid_path is not None
        return (len(calls), s.rows_total, s.rows_valid, s.rows_invalid, list(s.rule_counts.items()), s.examples,
                s.example_rows, s.null_counts, s.sample.to_dicts() if s.sample is not None else None,
                s.valid_path.read_bytes(), s.invalid_path.read_bytes())

    at_once, by_batch = run(validation.HELD_ROWS), run(0)  # 0: pandera reports every batch as it comes
    assert (at_once[0], by_batch[0]) == (1, 40)
    assert at_once[1:] == by_batch[1:]
    counts = dict(at_once[4])
    assert counts[("age", "dtype int")] == 181 and counts[("segment", "isin(['gold', 'silver'])")] == 153
    assert at_once[3] == len({i for i in range(1, 2001) if i % 11 == 0 or i % 7 == 0 or i % 13 == 0 or i % 17 == 0})


def test_a_ragged_line_is_found_across_the_text_pass_chunks(tmp_path: Path) -> None:
    row = "1,2,3\r\n"
    lines = 4_200_000 // len(row)  # past the first 4 MiB chunk
    path = tmp_path / "f.csv"
    with open(path, "w", newline="") as f:
        f.write("a,b,c\r\n" + row * lines + "\r\n" + "4,5\r\n" + row)
    contract = Contract(dataset="t", target="a", task="regression", metric="rmse",
                        columns={c: ColumnSpec(dtype="int") for c in "abc"})
    with pytest.raises(UnreadableFile, match=f"line {lines + 3} has 2 fields, the header has 3: '4,5'"):
        validate_file(path, "incoming/t/f.csv", contract, tmp_path)
    # A short line and a long one: the chunk's comma count adds up, the reader stops at the long one.
    with open(path, "w", newline="") as f:
        f.write("a,b,c\r\n" + row * lines + "4,5\r\n" + row + "6,7,8,9\r\n")
    with pytest.raises(UnreadableFile, match=f"line {lines + 2} has 2 fields, the header has 3: '4,5'"):
        validate_file(path, "incoming/t/f.csv", contract, tmp_path)
    path.write_text("a,b,c\n1,2,3\n1,2")  # the last line, with no newline
    with pytest.raises(UnreadableFile, match="line 3 has 2 fields"):
        validate_file(path, "incoming/t/f.csv", contract, tmp_path)


def test_element_wise_and_whole_column_checks_are_still_pandera_s() -> None:
    import pandera.polars as pa

    from sluice.core.app import Extensions
    from sluice.ml.validation import _check_batch, _Rules, build_schema

    frame = pl.DataFrame({"x": [1, 2, None, 40, 5], "y": ["a", "b", "c", "d", "e"]})
    contract = Contract(dataset="t", target="y", task="binary", metric="roc_auc", columns={
        "x": ColumnSpec(dtype="int", nullable=True, checks=["small", "odd"]), "y": ColumnSpec(dtype="str")})
    extensions = Extensions()
    extensions.checks["small"] = pa.Check(lambda v: v < 10, element_wise=True, name="small")
    extensions.checks["odd"] = lambda col: col % 2 == 1
    schema = build_schema(contract, extensions)
    fast = _Rules(schema).check(frame, 100, already=[])
    assert sorted((f.check, f.row) for f in fast) == sorted(
        (f.check, f.row) for f in _check_batch(schema, frame, 100, already=[])) == [("odd", 102), ("odd", 104),
                                                                                  ("small", 104)]
    extensions.checks["negative_mean"] = pa.Check(lambda d: d.lazyframe.select(pl.col(d.key).mean() < 0),
                                                  name="negative_mean")
    whole = build_schema(contract.model_copy(update={"columns": {
        **contract.columns, "x": ColumnSpec(dtype="int", nullable=True, checks=["negative_mean"])}}), extensions)
    # An aggregate's output is not one value per row: pandera validates the whole batch, as it always did.
    assert _Rules(whole)._suspects(frame) is None
    assert _Rules(whole).check(frame, 0, already=[]) == _check_batch(whole, frame, 0, already=[])
    # A check that reports only its first failure cases reports per validation: each batch is validated on its own.
    extensions.checks["first"] = pa.Check(lambda v: v < 3, element_wise=True, name="first", n_failure_cases=1)
    first = build_schema(contract.model_copy(update={"columns": {
        **contract.columns, "x": ColumnSpec(dtype="int", nullable=True, checks=["first"])}}), extensions)
    assert _Rules(schema).holds and not _Rules(first).holds
    held = _Rules(first).hold(frame, 0, [])
    assert held.failures == _check_batch(first, frame, 0, already=[]) and [f.row for f in held.failures] == [4]


def test_a_character_split_across_the_text_pass_chunks_is_utf8_and_a_truncated_one_is_not(tmp_path: Path) -> None:
    # The pass reads 4 MiB at a time and skips the decoder on ASCII chunks: not while a character runs on.
    contract = Contract(dataset="t", target="a", task="regression", metric="rmse",
                        columns={"a": ColumnSpec(dtype="int"), "b": ColumnSpec(dtype="str")})
    head = b"a,b\n" + b"1,x\n" * ((4 << 20) // 4 - 2) + b"1,"
    head += b"y" * ((4 << 20) - 1 - len(head))  # the chunk ends on the first byte of a two-byte character
    path = tmp_path / "f.csv"
    path.write_bytes(head + "é".encode() + b"\n" + b"2,z\n" * 10)
    split = validate_file(path, "incoming/t/f.csv", contract, tmp_path)
    assert split.rows_total == (4 << 20) // 4 - 2 + 1 + 10
    path.write_bytes(head + b"\xc3" + b"z\n" + b"2,z\n" * 10)  # the next chunk is ASCII, the character is cut
    with pytest.raises(UnreadableFile, match=rf"not UTF-8: line {(4 << 20) // 4}, byte offset {4 << 20} "):
        validate_file(path, "incoming/t/f.csv", contract, tmp_path)


def test_a_long_cell_on_a_short_enough_line_is_over_the_cell_limit(tmp_path: Path) -> None:
    from sluice.core.errors import LimitExceeded
    from sluice.ml.contract import LimitsSpec

    # The line is within what its columns may hold (3 cells of 100 bytes), one cell is not: the batch check sees it.
    contract = Contract(dataset="t", target="a", task="regression", metric="rmse",
                        limits=LimitsSpec(max_cell_bytes=100), columns={c: ColumnSpec(dtype="str") for c in "abc"})
    path = tmp_path / "f.csv"
    path.write_text("a,b,c\n1,2,3\n" + "x" * 150 + ",,\n")
    with pytest.raises(LimitExceeded, match="row 2, column 'a' holds a cell of 150 bytes"):
        validate_file(path, "incoming/t/f.csv", contract, tmp_path)
    path.write_text("a,b,c\n1,2,3\n" + "x" * 100 + ",,\n")
    assert validate_file(path, "incoming/t/f.csv", contract, tmp_path).rows_total == 2


def test_the_sample_is_the_rows_with_the_smallest_keys_whatever_the_batches() -> None:
    import numpy as np

    from sluice.ml.validation import _Sampler

    def reference(batches: list[pl.DataFrame], size: int, seed: int) -> pl.DataFrame:
        rng = np.random.default_rng(seed)
        keyed = pl.concat([b.with_columns(pl.Series("_u", rng.random(b.height))) for b in batches])
        return keyed.sort("_u").head(size).drop("_u")

    for sizes in ([3, 10, 2, 50, 7, 1, 40], [5], [1, 1, 1, 1, 1, 1, 1, 1], [12, 8, 9, 10, 7, 11], [200, 20, 30]):
        start = np.cumsum([0, *sizes])
        batches = [pl.DataFrame({"i": range(a, b), "s": [str(x) for x in range(a, b)]}) for a, b in
                   itertools.pairwise(start)]
        for seed in range(30):
            sampler = _Sampler(6, seed=seed)
            for b in batches:
                sampler.add(b)
            frame = sampler.frame()
            assert frame is not None
            assert frame.sort("i").equals(reference(batches, 6, seed).sort("i")), (sizes, seed)


# -- users' data: Parquet written by pandas, dates as ISO datetimes ---------------------------------------------


def _pandas_shop(n: int, seed: int, tz: str | None = None) -> Any:
    """The mixed shop rows as pandas holds them: visits (an int column with nulls) as float64, signup as
    midnight timestamps (pandas has no date type), in `tz` if given."""
    import pandas as pd

    from tests import mixed

    df = mixed.frame(n, seed).to_pandas()
    df["signup"] = pd.to_datetime(df["signup"])
    if tz is not None:
        df["signup"] = df["signup"].dt.tz_localize(tz)
    assert df["visits"].dtype == "float64" and df["visits"].isna().any() and df["signup"].isna().any()
    return df


def _validate(tmp_path: Path, name: str, data: bytes, batch_rows: int = 250_000) -> Any:
    from tests import mixed

    work = tmp_path / name.replace(".", "-")
    work.mkdir()
    (work / name).write_bytes(data)
    return validate_file(work / name, f"incoming/{mixed.DATASET}/{name}", mixed.contract(), work,
                         batch_rows=batch_rows)


@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Paris"])
def test_a_parquet_file_written_by_pandas_validates_as_its_csv_does(tz: str | None, tmp_path: Path) -> None:
    import io

    import pandas as pd

    from tests import mixed

    df = _pandas_shop(400, 3, tz)
    # Two bad rows: a float that is no int, a timestamp that is no date (13:00 in its own time zone).
    df.loc[4, "visits"] = 3.5
    df.loc[8, "signup"] = pd.Timestamp("2024-06-18 13:00", tz=tz)
    buf = io.BytesIO()
    df.to_parquet(buf)
    parquet = _validate(tmp_path, "x.parquet", buf.getvalue(), batch_rows=150)

    # The same rows as CSV (what `contract infer` and a first drop usually see), the bad ones as text.
    text = mixed.frame(400, 3).with_columns(pl.col("visits").cast(pl.Utf8), pl.col("signup").cast(pl.Utf8))
    text = text.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("3.5")).otherwise("visits")
                             .alias("visits"),
                             pl.when(pl.int_range(pl.len()) == 8).then(pl.lit("2024-06-18T13:00:00"))
                             .otherwise("signup").alias("signup"))
    csv = _validate(tmp_path, "x.csv", mixed.csv_bytes(text), batch_rows=150)

    for split in (parquet, csv):
        assert (split.rows_total, split.rows_valid, split.rows_invalid) == (400, 398, 2)
        assert sorted(pl.read_parquet(split.invalid_path)["_sluice_row"].to_list()) == [5, 9]
    assert pl.read_parquet(parquet.valid_path).equals(pl.read_parquet(csv.valid_path))
    failures = {(f.row, f.column, f.check, f.value) for f in parquet.examples}
    stamp = "2024-06-18 13:00:00" + {None: "", "UTC": "+00:00", "Europe/Paris": "+02:00"}[tz]
    assert failures == {(5, "visits", "dtype int", 3.5), (9, "signup", "dtype date", stamp)}
    reasons = pl.read_parquet(parquet.invalid_path)["_sluice_reasons"].to_list()
    assert any("signup: dtype date" in r and "13:00" in r for r in reasons), reasons


def test_a_date_column_reads_iso_datetimes_at_midnight_as_their_dates(tmp_path: Path) -> None:
    from tests import mixed

    shop = mixed.frame(300, 5)
    plain = _validate(tmp_path, "plain.csv", mixed.csv_bytes(shop))
    suffixes = ["T00:00:00", "T00:00:00Z", " 00:00:00+00:00", "T00:00:00.000", "T00:00"]
    iso = shop.with_columns(pl.col("signup").cast(pl.Utf8) + pl.Series(
        [suffixes[i % len(suffixes)] for i in range(shop.height)]))
    # batches of 40: the first rows settle the plain layout where they are plain, the others are read the slow way
    mixed_rows = shop.with_columns(pl.when(pl.int_range(pl.len()) < 100).then(pl.col("signup").cast(pl.Utf8))
                                   .otherwise(iso["signup"]).alias("signup"))
    for name, frame in (("iso.csv", iso), ("mixed.csv", mixed_rows)):
        split = _validate(tmp_path, name, mixed.csv_bytes(frame), batch_rows=40)
        assert (split.rows_valid, split.rows_invalid) == (300, 0), split.summary()
        assert pl.read_parquet(split.valid_path).equals(pl.read_parquet(plain.valid_path))

    late = shop.with_columns(pl.col("signup").cast(pl.Utf8)).with_columns(
        pl.when(pl.int_range(pl.len()) == 200).then(pl.lit("2024-05-01T09:30:00")).otherwise("signup").alias("signup"))
    split = _validate(tmp_path, "late.csv", mixed.csv_bytes(late), batch_rows=40)
    assert split.rows_invalid == 1
    assert [(f.row, f.column, f.check, f.value) for f in split.examples] == [
        (201, "signup", "dtype date", "2024-05-01T09:30:00")]


def test_a_pandas_parquet_drop_passes_the_contract_inferred_from_its_csv(runtime: Runtime) -> None:
    # The newcomer's path: `sluice contract infer` on the CSV export, then `sluice drop x.parquet` of the same frame.
    import io

    from sluice.ml.validation import read_sample

    df = _pandas_shop(300, 7)
    df.loc[11, "signup"] = df.loc[11, "signup"] + __import__("pandas").Timedelta(hours=6)  # one bad row
    text = df.drop(index=11).to_csv(index=False).encode()
    contract = infer_contract(read_sample("x.csv", text), "shop", "price")
    assert (contract.columns["signup"].dtype, contract.columns["visits"].dtype) == ("date", "float")
    contract = contract.model_copy(update={"columns": {**contract.columns, "visits": ColumnSpec(
        dtype="int", nullable=True)}})  # a user tightening visits to the integers it holds
    runtime.store.put("contracts/shop.yaml", contract.to_yaml().encode())
    buf = io.BytesIO()
    df.to_parquet(buf)
    key = "incoming/shop/x.parquet"
    runtime.store.put(key, buf.getvalue())
    info = runtime.store.head(key)
    assert info is not None
    runtime.execute("validate", ObjectCreated(runtime.settings.bucket, key, info.size, info.etag).to_dict())

    [entry] = [runtime.store.get_json(k) for k in runtime.store.keys("ledger/shop/")]
    assert (entry["outcome"], entry["rows"], entry["rows_quarantined"]) == ("validated", 299, 1), entry
    report = runtime.store.get_json(f"quarantine/shop/{entry['data_version']}/report.json")
    assert "06:00:00" in json.dumps(report) and "signup" in json.dumps(report)
    data = pl.read_parquet(io.BytesIO(runtime.store.get(f"validated/shop/{entry['data_version']}/data.parquet")))
    assert data.schema["signup"] == pl.Date and data.schema["visits"] == pl.Int64


def test_contract_infer_leaves_blank_lines_out() -> None:
    # polars 2 reads a blank line as a row of nulls, which the inferred contract counted as missing values.
    from sluice.ml.validation import read_sample

    text = b"age,city,score,label\r\n30,paris,1.5,yes\r\n\r\n40,rome,2.5,no\r\n50,rome,3.5,yes\r\n\r\n"
    frame = read_sample("people.csv", text)
    assert frame.height == 3
    text_yaml = infer_contract(frame, "people", "label").to_yaml()
    assert text_yaml.count("# 0 missing of 3") == 3, text_yaml  # the features; the target says its classes


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_bool_target_written_by_pandas_passes_the_contract_inferred_from_it(fmt: str, tmp_path: Path) -> None:
    # statsmodels' `fair` with `had_affair = affairs > 0`: pandas writes True/False, the inferred contract pinned
    # the classes as 'false'/'true', and every row of the very file it was inferred from was quarantined.

    import pandas as pd

    from sluice.ml.validation import read_sample

    df = pd.DataFrame({"age": [32.0, 27.0, 22.0, 37.0] * 10, "had_affair": [True, False, False, True] * 10})
    data = _written_by_pandas(df, fmt)
    contract = parse_contract(infer_contract(read_sample(f"x.{fmt}", data), "fair", "had_affair").to_yaml())
    assert contract.task == "binary"
    (tmp_path / f"x.{fmt}").write_bytes(data)
    split = validate_file(tmp_path / f"x.{fmt}", f"incoming/fair/x.{fmt}", contract, tmp_path)
    assert (split.rows_valid, split.rows_invalid) == (40, 0), split.summary()
    assert pl.read_parquet(split.valid_path)["had_affair"].to_list() == df["had_affair"].tolist()


def test_a_class_target_with_missing_labels_passes_the_contract_inferred_from_it(tmp_path: Path) -> None:
    # Real exports have rows whose label is not known yet (vega's cars has no mpg for 8 of 406 cars); for a
    # classification target the inferred contract said `nullable: false`, and with 5 % missing the whole file it
    # was inferred from was quarantined.
    from sluice.ml.validation import read_sample

    text = "size,label\n" + "".join(f"{i},{'' if i % 20 == 0 else ('big' if i > 50 else 'small')}\n"
                                     for i in range(100))
    contract = parse_contract(infer_contract(read_sample("x.csv", text.encode()), "d", "label").to_yaml())
    assert contract.task == "binary" and contract.columns["label"].nullable
    (tmp_path / "x.csv").write_text(text)
    split = validate_file(tmp_path / "x.csv", "incoming/d/x.csv", contract, tmp_path)
    assert (split.rows_valid, split.rows_invalid) == (100, 0), split.summary()
    # A sample with every label: the next file of the source may lack some (labels not known yet), and one such row
    # in 40 stopped it whole (1 % may be quarantined). It passes, and training leaves it out.
    complete = infer_contract(read_sample("y.csv", b"size,label\n1,a\n2,b\n3,a\n"), "d", "label")
    assert complete.columns["label"].nullable and "A row without a label passes" in complete.to_yaml()
    for sample, target in ((b"size,label\n1,1.5\n2,2.5\n3,0.5\n", "label"), (b"size,ok\n1,true\n2,false\n", "ok")):
        assert infer_contract(read_sample("z.csv", sample), "d", target).columns[target].nullable  # regression, bool


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_next_batch_with_its_whole_number_labels_written_as_decimals_passes(fmt: str, tmp_path: Path) -> None:
    # `contract infer` on a file labelled 0/1 pinned the classes ['0', '1']; the next file of the same source,
    # written by pandas once one label was missing, holds 0.0/1.0 and every row of it was quarantined ("got '0.0'").
    # Inferred from 0.0/1.0, the next file's 0/1 was refused alike. The classes keep the first file's spelling.
    import pandas as pd

    from sluice.ml.modeling import Encoding
    from sluice.ml.validation import read_sample

    labels = [0, 1, 1, 0, 1] * 8
    ints = pd.DataFrame({"x": [float(i) for i in range(40)], "churned": labels})
    # pandas writes 0.0/1.0 once a label is missing: the next file has a row without one, which passes too
    floats = pd.DataFrame({"x": [float(i) for i in range(40)], "churned": [*map(float, labels[:-1]), None]})
    for first, then, classes in ((ints, floats, ["0", "1"]), (floats, ints, ["0.0", "1.0"])):
        sample = read_sample("first.csv", _written_by_pandas(first, "csv"))
        contract = parse_contract(infer_contract(sample, "churn", "churned").to_yaml())
        assert contract.columns["churned"].categories == classes
        (tmp_path / f"next.{fmt}").write_bytes(_written_by_pandas(then, fmt))
        split = validate_file(tmp_path / f"next.{fmt}", f"incoming/churn/next.{fmt}", contract, tmp_path)
        assert split.rows_invalid == 0, split.summary()
        valid = pl.read_parquet(split.valid_path)
        assert sorted(valid["churned"].drop_nulls().unique().to_list()) == classes
        first_rows = pl.from_pandas(first).with_columns(pl.col("churned").cast(pl.Utf8))
        if first["churned"].dtype.kind == "f":
            first_rows = first_rows.with_columns(pl.col("churned").str.replace(r"^(\d+)$", "${1}.0"))
        both = pl.concat([first_rows, valid], how="vertical_relaxed")
        assert Encoding.fit(both, contract).classes == classes  # the model reports the first file's class names
    # A class that is no whole number of a category stays refused; and a code with a leading zero is not a number.
    contract = parse_contract(infer_contract(pl.DataFrame({"x": [1.0, 2.0, 3.0], "y": ["7", "8", "7"]}), "d", "y")
                              .to_yaml())
    (tmp_path / "odd.csv").write_text("x,y\n1,7.0\n2,8.5\n3,07\n4,9\n5, 8 \n")
    split = validate_file(tmp_path / "odd.csv", "incoming/d/odd.csv", contract, tmp_path)
    assert [(f.row, f.value) for f in split.examples] == [(2, "8.5"), (3, "07"), (4, "9")], split.examples
    assert pl.read_parquet(split.valid_path)["y"].to_list() == ["7", "8"]  # ' 8 ' is the number 8, as for numbers


def test_a_zoned_datetime_column_written_by_pandas_reads_as_its_parquet_does(tmp_path: Path) -> None:
    # pandas writes a zoned column as `2024-03-01 08:00:00+01:00`; polars refused to read it with no zone and the
    # whole CSV was quarantined as unparseable ("check the delimiter"), while its Parquet twin passed.
    import io

    import pandas as pd

    from sluice.ml.validation import read_sample

    df = pd.DataFrame({"when": pd.date_range("2024-03-01 08:00", periods=60, freq="7h", tz="Europe/Paris"),
                       "y": ["b", "a", "c"] * 20})
    df.loc[7, "when"] = pd.NaT
    buf = io.BytesIO()
    df.to_parquet(buf)
    typed = {}
    for fmt, data in (("csv", df.to_csv(index=False).encode()), ("parquet", buf.getvalue())):
        contract = parse_contract(infer_contract(read_sample(f"x.{fmt}", data), "tz", "y").to_yaml())
        assert contract.columns["when"].dtype == "datetime"
        (tmp_path / f"x.{fmt}").write_bytes(data)
        split = validate_file(tmp_path / f"x.{fmt}", f"incoming/tz/x.{fmt}", contract, tmp_path)
        assert (split.rows_valid, split.rows_invalid) == (60, 0), split.summary()
        typed[fmt] = pl.read_parquet(split.valid_path)["when"].to_list()
    assert typed["csv"] == typed["parquet"] and typed["csv"][0] == datetime(2024, 3, 1, 7, 0)  # the UTC instant


@pytest.mark.parametrize("marker", ["NA", "N/A", "null", "-", "?", "#N/A"])
def test_numbers_with_missing_markers_are_numbers_to_infer_and_to_validation(marker: str, tmp_path: Path) -> None:
    # vega's cars with its missing mpg and horsepower written as R (NA), Excel (-, #N/A), SQL (null) or UCI (?) write
    # them: the columns were inferred as text, so the model took horsepower for a category (an unseen value scored
    # as missing).
    from sluice.ml.validation import read_sample

    rows = [f"{i},{'' if i % 7 == 0 else 100 + i},{'' if i % 5 == 0 else i / 4},{'NA' if i % 2 else 'EU'}"
            for i in range(60)]
    text = ("id,horsepower,mpg,origin\n" + "\n".join(rows) + "\n").replace(",,", f",{marker},")
    text = text.replace(",\n", f",{marker}\n")
    assert marker in text
    contract = parse_contract(infer_contract(read_sample("cars.csv", text.encode()), "cars", "origin").to_yaml())
    assert (contract.columns["horsepower"].dtype, contract.columns["mpg"].dtype) == ("int", "float")
    assert contract.columns["origin"].categories == ["EU", "NA"]  # a text column keeps "NA" as written
    (tmp_path / "cars.csv").write_text(text)
    split = validate_file(tmp_path / "cars.csv", "incoming/cars/cars.csv", contract, tmp_path)
    assert (split.rows_valid, split.rows_invalid) == (60, 0), split.summary()
    data = pl.read_parquet(split.valid_path)
    assert (data["horsepower"].null_count(), data["mpg"].null_count()) == (9, 12)
    assert data["origin"].to_list().count("NA") == 30


@pytest.mark.parametrize(("data", "message"), [
    (b"name;price;label\nx;1,5;a\ny;2,5;b\n", "separated by ';', not a comma"),
    ("name,label\ncafé,a\nthé,b\n".encode("latin-1"), "is not UTF-8: line 2"),
    (b"a,b,a,label\n1,2,3,x\n4,5,6,y\n", "duplicate column names: ['a']"),
    (b'a,label\n"1,x\n', "could not be parsed as CSV"),
    (b"a,label,,\n1,x,,\n2,y,,\n", "2 columns without a name (columns 3, 4 of 4)"),
])
def test_contract_infer_refuses_what_validation_refuses_without_a_traceback(data: bytes, message: str) -> None:
    # Excel's French export (; and decimal commas) and its Windows "CSV" (cp1252) made `sluice contract infer` print
    # polars' traceback; duplicate names were renamed (a_duplicated_0) into a contract every drop then broke.
    from sluice.ml.validation import read_sample

    with pytest.raises(UnreadableFile, match=re.escape(message)):
        read_sample("export.csv", data)


def test_contract_infer_leaves_out_pandas_index_column(tmp_path: Path) -> None:
    # `df.to_csv(path)` without index=False writes pandas' index as a first column named "": inferred as a feature,
    # it numbered the rows in the file's order (sorted by class in many public datasets: a leak the gate refused),
    # and LightGBM lost its empty name (training was dead-lettered).
    import pandas as pd

    from sluice.ml.validation import read_sample

    frame = pd.DataFrame({"age": [30, 40, 50, 60], "city": ["rome", "paris", "rome", "paris"],
                          "score": [1.5, 2.5, 3.5, 4.5], "label": ["no", "no", "yes", "yes"]})
    path = tmp_path / "people.csv"
    frame.to_csv(path)
    assert path.read_text().startswith(",age,")
    contract = infer_contract(read_sample(path.name, path.read_bytes()), "people", "label")
    assert list(contract.columns) == ["age", "city", "score", "label"] and contract.extra_columns == "drop"
    assert "pandas' index" in contract.to_yaml()
    split = validate_file(path, "incoming/people/people.csv", contract, tmp_path)
    assert (split.rows_valid, split.rows_invalid, split.columns) == (4, 0, ["age", "city", "score", "label"])
    # a split keeps the original rows' numbers (here in class order: a leak if it were a feature)
    frame.index = [7, 2, 90, 41]
    frame.to_csv(path)
    assert "" not in infer_contract(read_sample(path.name, path.read_bytes()), "people", "label").columns
    # a named first column is data
    frame.rename_axis("n").to_csv(path)
    assert "n" in infer_contract(read_sample(path.name, path.read_bytes()), "people", "label").columns


def test_us_dates_are_dates_in_their_layout_to_infer_and_to_validation(tmp_path: Path) -> None:
    # vega's seattle-weather with its dates written mm/dd/yyyy (Excel in the US): polars did not read them, so
    # `contract infer` made the column text (a category per day: new days scored as missing); and a contract that
    # said `date` had them guessed per value, day first where a day could be a month (02/03/2024 read as 2 March).
    from sluice.ml.validation import read_sample

    days = [date(2024, 1, 25) + timedelta(days=9 * i) for i in range(40)]
    text = "day,rain,weather\n" + "".join(f"{d:%m/%d/%Y},{i % 5},{'sun' if i % 3 else 'rain'}\n"
                                           for i, d in enumerate(days))
    contract = parse_contract(infer_contract(read_sample("w.csv", text.encode()), "w", "weather").to_yaml())
    assert (contract.columns["day"].dtype, contract.columns["day"].format) == ("date", "%m/%d/%Y")
    assert {t.name for t in contract.features} >= {"day_month", "day_dayofweek"}
    (tmp_path / "w.csv").write_text(text)
    split = validate_file(tmp_path / "w.csv", "incoming/w/w.csv", contract, tmp_path)
    assert (split.rows_valid, split.rows_invalid) == (40, 0), split.summary()
    assert pl.read_parquet(split.valid_path)["day"].to_list() == days
    # the next file's days are all 12 or under: still month first, as the contract says
    (tmp_path / "w2.csv").write_text("day,rain,weather\n02/03/2024,1,sun\n12/01/2024,2,rain\n2024-05-06,0,sun\n")
    split = validate_file(tmp_path / "w2.csv", "incoming/w/w2.csv", contract, tmp_path)
    assert pl.read_parquet(split.valid_path)["day"].to_list() == [date(2024, 2, 3), date(2024, 12, 1), date(2024, 5, 6)]
    day_first = infer_contract(read_sample("d.csv", b"day,y\n25/01/2024,a\n03/02/2024,b\n"), "d", "y").columns["day"]
    assert day_first.dtype == "date"
    with pytest.raises(ContractError, match="format"):
        parse_contract(contract.to_yaml().replace("dtype: date", "dtype: str", 1))


def test_contract_infer_says_when_a_text_column_holds_numbers_written_for_people() -> None:
    # "3,504" lbs and "9.5%" (a spreadsheet's display format) were inferred as text without a word: the user got a
    # model that took each weight for a category.
    from sluice.ml.validation import read_sample

    text = b'weight,share,code,y\n"3,504",9.5%,"1,2",a\n"12,000,100",12 %,"3,4",b\n"1,230.5",100%,"5,6",a\n'
    doc = infer_contract(read_sample("x.csv", text), "x", "y").to_yaml()
    weight, share, code = (doc.split(f"\n  {c}:")[0].rsplit("\n  # 0 missing", 1)[1]
                           for c in ("weight", "share", "code"))
    assert "NUMBERS WRITTEN AS TEXT" in weight and "NUMBERS WRITTEN AS TEXT" in share, doc
    assert "NUMBERS WRITTEN AS TEXT" not in code  # "1,2" is not a thousands separator


def test_a_csv_with_the_empty_columns_a_spreadsheet_exports_is_refused_saying_so(tmp_path: Path) -> None:
    # Every line ending in ",," (columns once touched in the sheet): refused as "duplicate column names: ['']",
    # which named nothing the user could see.
    contract = parse_contract(infer_contract(pl.DataFrame({"a": [1, 2], "label": ["x", "y"]}), "s", "label").to_yaml())
    (tmp_path / "s.csv").write_bytes(b"a,label,,\r\n1,x,,\r\n2,y,,\r\n")
    with pytest.raises(UnreadableFile, match=r"2 columns without a name \(columns 3, 4 of 4\)") as caught:
        validate_file(tmp_path / "s.csv", "incoming/s/s.csv", contract, tmp_path)
    assert "empty columns a spreadsheet exported" in caught.value.hint


def test_contract_infer_refuses_a_target_of_numbers_written_for_people() -> None:
    # A price column exported as "12,340": the target was text, so every price became a class of its own.
    from sluice.ml.validation import read_sample

    text = "x,price\n" + "".join(f'{i},"{i * 1234:,}"\n' for i in range(60))
    with pytest.raises(ContractError, match="target 'price' holds numbers written for people"):
        infer_contract(read_sample("p.csv", text.encode()), "p", "price")


def test_a_pandas_parquet_with_category_nullable_int_and_zoned_datetime_passes_its_inferred_contract(
        tmp_path: Path) -> None:
    # vega's cars as a pandas user saves it: `category`, `Int64` and `datetime64[ns, UTC]` columns. contract infer
    # asked a categorical column for its text (thousands separators, date layouts) and printed polars' traceback.
    import pandas as pd

    from sluice.ml.validation import read_sample

    df = pd.DataFrame({"origin": pd.Categorical(["USA", "Europe", "Japan"] * 20),
                       "cylinders": pd.array([4, 6, None, 8] * 15, dtype="Int64"),
                       "year": pd.date_range("1970-01-01", periods=60, freq="90D", tz="UTC"),
                       "mpg": [18.5 + 0.7 * (i % 37) for i in range(60)]})
    path = tmp_path / "cars.parquet"
    df.to_parquet(path)
    contract = parse_contract(infer_contract(read_sample(path.name, path.read_bytes()), "cars", "mpg").to_yaml())
    assert {n: c.dtype for n, c in contract.columns.items()} == {
        "origin": "str", "cylinders": "int", "year": "datetime", "mpg": "float"}
    split = validate_file(path, "incoming/cars/cars.parquet", contract, tmp_path)
    assert (split.rows_valid, split.rows_invalid) == (60, 0), split.summary()


def test_contract_infer_leaves_out_pandas_index_in_a_parquet_file(tmp_path: Path) -> None:
    # `df.to_parquet()` of a filtered or split frame (its index not 0..n-1) writes the index as `__index_level_0__`:
    # inferred as a feature, the model then refused every row of a frame or file without it ("column
    # '__index_level_0__' is missing"), and the numbers told the class in a file sorted by it.
    import pandas as pd

    from sluice.ml.validation import read_sample

    frame = pd.DataFrame({"age": [30, 40, 50, 60, 70, 80], "score": [1.5, 2.5, 3.5, 4.5, 5.5, 6.5],
                          "label": ["no", "no", "no", "yes", "yes", "yes"]})
    kept = frame[frame["age"] != 40]
    path = tmp_path / "people.parquet"
    kept.to_parquet(path)
    assert "__index_level_0__" in pl.read_parquet(path).columns
    contract = infer_contract(read_sample(path.name, path.read_bytes()), "people", "label")
    assert list(contract.columns) == ["age", "score", "label"] and contract.extra_columns == "drop"
    assert "to_parquet()" in contract.to_yaml()
    split = validate_file(path, "incoming/people/people.parquet", contract, tmp_path)
    assert (split.rows_valid, split.rows_invalid, split.columns) == (5, 0, ["age", "score", "label"])
    kept.reset_index(drop=True).to_parquet(path)  # a plain range index is not written
    assert infer_contract(read_sample(path.name, path.read_bytes()), "people", "label").extra_columns == "reject"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_class_labels_with_a_gap_written_as_floats_stay_classes(fmt: str, tmp_path: Path) -> None:
    # pandas turns an integer column with a missing value into floats: wine's classes 0, 1, 2 with three labels not
    # known yet were written 0.0, 1.0, 2.0 and inferred as a regression, so the user got an RMSE and a regressor.

    import pandas as pd

    from sluice.ml.validation import read_sample

    df = pd.DataFrame({"x": [float(i) for i in range(60)], "y": [float(i % 3) for i in range(60)]})
    df.loc[[4, 31], "y"] = None
    data = _written_by_pandas(df, fmt)
    contract = parse_contract(infer_contract(read_sample(f"x.{fmt}", data), "w", "y").to_yaml())
    assert (contract.task, contract.metric) == ("multiclass", "log_loss")
    assert contract.columns["y"].categories == ["0.0", "1.0", "2.0"] and contract.columns["y"].nullable
    (tmp_path / f"x.{fmt}").write_bytes(data)
    split = validate_file(tmp_path / f"x.{fmt}", f"incoming/w/x.{fmt}", contract, tmp_path)
    assert (split.rows_valid, split.rows_invalid) == (60, 0), split.summary()
    # amounts stay a regression: decimals, or more whole values than classes usually have
    amounts = pd.DataFrame({"x": range(60), "y": [i * 0.5 for i in range(60)]})
    assert infer_contract(read_sample("a.csv", amounts.to_csv(index=False).encode()), "a", "y").task == "regression"
    counts = pd.DataFrame({"x": range(60), "y": [float(i) for i in range(60)]})
    assert infer_contract(read_sample("c.csv", counts.to_csv(index=False).encode()), "c", "y").task == "regression"


def _written_by_pandas(df: Any, fmt: str) -> bytes:
    """`df` as pandas writes it: CSV without the index, or Parquet."""
    import io

    if fmt == "csv":
        return str(df.to_csv(index=False)).encode()
    buf = io.BytesIO()
    df.to_parquet(buf)
    return buf.getvalue()


def test_contract_infer_leaves_identifiers_out_so_the_next_files_new_ids_pass(tmp_path: Path) -> None:
    """A customer number unique per row was inferred as a feature with a range: next month's customers (new, higher
    numbers) were quarantined wholesale and could not be scored. Identifiers are left out of the features (and so
    out of the ranges); a column that repeats, or one that is unique by chance but not named or shaped like an
    id, stays."""
    rng = np.random.default_rng(3)
    n = 200

    def month(first_id: int) -> pl.DataFrame:
        return pl.DataFrame({
            "customer_id": np.arange(first_id, first_id + n), "orderRef": [f"R-{first_id + i:07d}" for i in range(n)],
            "email": [f"user{first_id + i}@example.com" for i in range(n)],
            "plan": rng.choice(["pro", "basic", "team"], n), "visits": rng.integers(0, 30, n),
            "balance": rng.normal(100, 20, n), "paid": rng.permutation(n),  # unique, but a count: not an id
            "churned": rng.choice(["yes", "no"], n)})

    first, second = tmp_path / "march.csv", tmp_path / "april.csv"
    month(97_001).write_csv(first)
    month(105_999).write_csv(second)
    contract = infer_contract(read_sample(first.name, first.read_bytes()), "churn", "churned")
    assert list(contract.columns) == ["plan", "visits", "balance", "paid", "churned"]
    assert contract.extra_columns == "drop"
    text = re.sub(r"\n\s*#\s*", " ", contract.to_yaml())  # the comments, unwrapped
    assert "'customer_id', 'orderRef', 'email' are unique per row, like an identifier" in text
    [attention] = contract.attention()
    assert attention.startswith("extra_columns: drop") and "'customer_id'" in attention
    split = validate_file(second, "incoming/churn/april.csv", contract, tmp_path)
    assert (split.rows_valid, split.rows_invalid) == (n, 0)
    assert "customer_id" not in split.columns


def test_contract_infer_says_when_a_date_column_mixes_layouts() -> None:
    """A file stitched from two exports (ISO and US dates) was kept as text without a word: each date a category."""
    days = ["2024-03-01", "03/15/2024", "2024-04-02", "12/31/2023"]
    import datetime as dt

    joined = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(40)]
    frame = pl.DataFrame({"signup": [*days * 10], "joined": [d.strftime("%Y-%m-%d" if i % 2 else "%m/%d/%Y")
                                                              for i, d in enumerate(joined)],
                          "visits": list(range(40)), "churned": ["yes", "no"] * 20})
    contract = infer_contract(frame, "churn", "churned")
    text = re.sub(r"\n\s*#\s*", " ", contract.to_yaml())
    assert "DATES IN 2 LAYOUTS (%Y-%m-%d, %m/%d/%Y)" in text
    # `contract infer` prints these on stderr too: `> contract.yaml` would hide them in the file.
    assert [line.split(":")[0] for line in contract.attention()] == ["signup", "joined"]
    # unique per row, but dates: kept (as text, with the same warning), not taken for an identifier
    assert {"signup", "joined"} <= set(contract.columns) and contract.columns["signup"].dtype == "str"


def test_a_pandas_parquet_with_dates_numbers_and_bools_held_as_text_reads_them_as_its_csv_does(
        tmp_path: Path) -> None:
    # A CSV of US dates read with pandas and saved as Parquet keeps the dates as text (pandas writes an object column
    # as strings): the whole file was refused ("column 'signup' is String, the contract says date") while the same
    # rows as CSV passed. Text in a Parquet file is read as a CSV cell is, its bad values quarantined row by row.
    import io

    import pandas as pd

    from sluice.core.errors import ValidationFailed
    from sluice.ml.validation import read_sample

    n = 60
    df = pd.DataFrame({"signup": [f"{date(2024, 1, 1) + timedelta(days=7 * i):%m/%d/%Y}" for i in range(n)],
                       "amount": [f"{41000.25 + i}" for i in range(n)],
                       "visits": pd.Categorical([str(i % 7) for i in range(n)]),
                       "active": ["true" if i % 3 else "False" for i in range(n)],
                       "seen": [f"2024-03-{1 + i % 28:02d} 08:{i % 60:02d}:00" for i in range(n)],
                       "label": ["yes" if i % 2 else "no" for i in range(n)]})
    df.loc[1, "signup"] = None
    contract = parse_contract(infer_contract(read_sample("x.csv", df.to_csv(index=False).encode()), "shop",
                                             "label").to_yaml())
    assert {c: s.dtype for c, s in contract.columns.items()} == {
        "signup": "date", "amount": "float", "visits": "int", "active": "bool", "seen": "datetime", "label": "str"}
    df.loc[4, "amount"] = "41,004.25"  # not a number to a CSV reader either
    buf = io.BytesIO()
    df.to_parquet(buf)
    assert {c: str(t) for c, t in pl.read_parquet(buf.getvalue()).schema.items()} == {
        "signup": "String", "amount": "String", "visits": "Categorical", "active": "String", "seen": "String",
        "label": "String"}
    splits = {}
    for fmt, data in (("parquet", buf.getvalue()), ("csv", df.to_csv(index=False).encode())):
        (tmp_path / f"x.{fmt}").write_bytes(data)
        work = tmp_path / fmt
        work.mkdir()
        split = splits[fmt] = validate_file(tmp_path / f"x.{fmt}", f"incoming/shop/x.{fmt}", contract, work,
                                            batch_rows=25)
        assert (split.rows_total, split.rows_valid, split.rows_invalid) == (n, n - 1, 1), split.summary()
        assert [(f.row, f.column, f.check, f.value) for f in split.examples] == [(5, "amount", "dtype float",
                                                                                  "41,004.25")]
        invalid = pl.read_parquet(split.invalid_path)
        assert invalid["_sluice_row"].to_list() == [5]
        assert invalid["_sluice_reasons"].to_list() == ["amount: dtype float (got '41,004.25')"]
    valid = pl.read_parquet(splits["parquet"].valid_path)
    assert valid.equals(pl.read_parquet(splits["csv"].valid_path))
    assert valid.schema == pl.Schema({"signup": pl.Date, "amount": pl.Float64, "visits": pl.Int64,
                                      "active": pl.Boolean, "seen": pl.Datetime("us"), "label": pl.Utf8})
    assert valid.row(0) == (date(2024, 1, 1), 41000.25, 0, False, datetime(2024, 3, 1, 8, 0), "no")
    assert valid["signup"][1] is None and valid["signup"][3] == date(2024, 1, 22)  # 01/22/2024: month first
    assert valid["active"].to_list()[:3] == [False, True, True]

    # A column that is no text and not of the contract's type is still refused, naming it.
    df["visits"] = [[i] for i in range(n)]
    df.to_parquet(tmp_path / "list.parquet")
    with pytest.raises(ValidationFailed, match=r"column 'visits' is List\(Int64\), the contract says int"):
        validate_file(tmp_path / "list.parquet", "incoming/shop/list.parquet", contract, tmp_path)


def test_a_parquet_text_column_of_iso_dates_or_numbers_infers_as_its_csv(tmp_path: Path) -> None:
    # vega's stocks saved by pandas: `date` an object column of "2008-11-01". From the Parquet file it was inferred
    # as text (each day a category, a new day scored as missing) where the CSV copy gave a date.
    import io

    import pandas as pd

    df = pd.DataFrame({"symbol": ["MSFT", "AMZN", "IBM"] * 20,
                       "date": [f"{2000 + i // 12}-{i % 12 + 1:02d}-01" for i in range(60)],
                       "price": [f"{30 + 0.25 * i}" for i in range(60)],
                       "shares": [str(i) if i % 9 else "" for i in range(60)],
                       "up": ["yes", "no", "no"] * 20})
    parquet = tmp_path / "stocks.parquet"
    df.to_parquet(parquet)
    assert pl.read_parquet(parquet).schema["date"] == pl.Utf8
    from_parquet = infer_contract(read_sample(parquet.name, parquet.read_bytes()), "stocks", "up")
    from_csv = infer_contract(read_sample("stocks.csv", df.to_csv(index=False).encode()), "stocks", "up")
    assert from_parquet.to_yaml() == from_csv.to_yaml()
    assert {n: c.dtype for n, c in from_parquet.columns.items()} == {
        "symbol": "str", "date": "date", "price": "float", "shares": "int", "up": "str"}
    split = validate_file(parquet, "incoming/stocks/stocks.parquet", from_parquet, tmp_path)
    assert (split.rows_valid, split.rows_invalid) == (60, 0), split.summary()
    assert pl.read_parquet(split.valid_path)["date"][0] == date(2000, 1, 1)
    # a later export whose dates are timestamps passes as dates
    later = df.assign(date=pd.to_datetime(df["date"]))
    buffer = io.BytesIO()
    later.to_parquet(buffer)
    (tmp_path / "later.parquet").write_bytes(buffer.getvalue())
    split = validate_file(tmp_path / "later.parquet", "incoming/stocks/later.parquet", from_parquet, tmp_path)
    assert (split.rows_valid, split.rows_invalid) == (60, 0), split.summary()
    assert pl.read_parquet(split.valid_path).schema["date"] == pl.Date


@pytest.mark.parametrize("compression", ["snappy", "zstd"])
def test_large_repetitive_parquet_files_stay_under_the_decoded_compression_ratio(compression: str,
                                                                                  tmp_path: Path) -> None:
    """The Parquet ratio is judged on decoded sizes (rows x each column's width): ordinary tables with very
    repetitive columns, over the 64 MiB it is judged from, are not refused under the default limit."""
    import pyarrow.parquet as pq

    from sluice.ml.validation import _check_parquet_limits, parquet_decoded_bytes
    from tests.chain import sample_contract

    rng = np.random.default_rng(0)
    n = 400_000
    frame = pl.DataFrame({
        "country": rng.choice(["FR", "DE", "US", "UK"], n, p=[.7, .1, .1, .1]),
        "plan": rng.choice(["free", "pro"], n, p=[.95, .05]), "status": ["active"] * n,
        **{f"flag{i}": (rng.random(n) < 0.02).astype(np.int64) for i in range(20)},
        **{f"count{i}": rng.poisson(0.1, n) for i in range(5)},
        "target": rng.choice(["no", "yes"], n, p=[.97, .03]),
    })
    contract = sample_contract()
    for name, table in (("flags", frame), ("with-amount", frame.with_columns(
            amount=np.round(rng.lognormal(3, 1, n), 2), id=np.arange(n)))):
        path = tmp_path / f"{name}.parquet"
        table.to_pandas().to_parquet(path, index=False, compression=compression)
        decoded = parquet_decoded_bytes(pq.ParquetFile(path).metadata)
        assert decoded >= 64 << 20 and decoded / path.stat().st_size < 1_000
        _check_parquet_limits(path, f"incoming/x/{name}.parquet", contract, table.columns)  # does not raise
