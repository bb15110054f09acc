"""Validation: every bad file gets a message that names the file, row, column and rule."""

from __future__ import annotations

import gzip
import io

import polars as pl
import pytest
from sluice.core.contract import ColumnSpec, Contract, ContractError, infer_contract, parse_contract
from sluice.core.errors import UnreadableFile, ValidationFailed
from sluice.core.tabular import validate

CONTRACT = Contract(
    dataset="people", target="label", task="binary", metric="roc_auc",
    columns={
        "age": ColumnSpec(dtype="int", min=0, max=120),
        "city": ColumnSpec(dtype="str", nullable=True, categories=["paris", "rome"]),
        "score": ColumnSpec(dtype="float", nullable=True),
        "label": ColumnSpec(dtype="str", categories=["no", "yes"]),
    },
)
GOOD = b"age,city,score,label\n30,paris,1.5,yes\n40,,2.5,no\n"


def test_a_good_file_is_typed() -> None:
    frame = validate("incoming/people/a.csv", GOOD, CONTRACT)
    assert frame.schema == pl.Schema({"age": pl.Int64, "city": pl.Utf8, "score": pl.Float64, "label": pl.Utf8})
    assert frame.height == 2


def test_bom_gzip_and_parquet_are_accepted() -> None:
    assert validate("incoming/people/a.csv", b"\xef\xbb\xbf" + GOOD, CONTRACT).height == 2
    assert validate("incoming/people/a.csv.gz", gzip.compress(GOOD), CONTRACT).height == 2
    buf = io.BytesIO()
    pl.read_csv(io.BytesIO(GOOD)).write_parquet(buf)
    assert validate("incoming/people/a.parquet", buf.getvalue(), CONTRACT).height == 2


@pytest.mark.parametrize(("name", "data", "error", "needles"), [
    ("empty", b"", UnreadableFile, ["is empty"]),
    ("header only", b"age,city,score,label\n", UnreadableFile, ["header but no rows"]),
    ("not utf-8", b"age,city,score,label\n30,par\xe9s,1,yes\n", UnreadableFile, ["not UTF-8", "line 2", "offset 27"]),
    ("binary", b"\x00\x01\x02\xff\xfe" * 20, UnreadableFile, ["binary"]),
    ("semicolons", b"age;city;score;label\n30;paris;1;yes\n", UnreadableFile, ["delimiter"]),
    ("duplicate columns", b"age,age,city,score,label\n1,2,paris,1,yes\n", UnreadableFile, ["duplicate", "'age'"]),
    ("ragged", b"age,city,score,label\n30,paris,1,yes,extra,more\n", UnreadableFile, ["field"]),
    ("type mismatch", b"age,city,score,label\n30,paris,1,yes\nforty,rome,2,no\n", ValidationFailed,
     ["column 'age'", "row 2", "dtype int", "'forty'"]),
    ("out of range", b"age,city,score,label\n30,paris,1,yes\n-4,rome,2,no\n", ValidationFailed,
     ["column 'age'", "row 2", "greater_than_or_equal_to(0", "-4"]),
    ("unknown category", b"age,city,score,label\n30,oslo,1,yes\n", ValidationFailed, ["'city'", "isin", "oslo"]),
    ("missing column", b"age,city,label\n30,paris,yes\n", ValidationFailed, ["'score'", "required column"]),
    ("extra column", b"age,city,score,label,zip\n30,paris,1,yes,75001\n", ValidationFailed,
     ["'zip'", "unexpected"]),
    ("null in required", b"age,city,score,label\n,paris,1,yes\n", ValidationFailed, ["'age'", "not_nullable"]),
    ("infinity", b"age,city,score,label\n30,paris,inf,yes\n", ValidationFailed, ["'score'", "finite"]),
    ("wrong extension", b"x", UnreadableFile, ["reads .csv"]),
])
def test_bad_files_get_actionable_messages(name: str, data: bytes, error: type, needles: list[str]) -> None:
    key = "incoming/people/data.txt" if name == "wrong extension" else "incoming/people/data.csv"
    with pytest.raises(error) as info:
        validate(key, data, CONTRACT)
    text = str(info.value)
    assert key in text
    for needle in needles:
        assert needle in text, f"{name}: {needle!r} not in {text!r}"
    assert info.value.hint  # always says what to do next


def test_failures_carry_row_column_and_value() -> None:
    data = b"age,city,score,label\n30,paris,1,yes\nx,rome,2,no\n200,rome,2,no\n"
    with pytest.raises(ValidationFailed) as info:
        validate("incoming/people/d.csv", data, CONTRACT)
    found = {(f.column, f.row, str(f.value)) for f in info.value.failures}
    assert ("age", 2, "x") in found
    assert ("age", 3, "200") in found


def test_extra_columns_policy_drop_and_allow() -> None:
    data = b"age,city,score,label,zip\n30,paris,1,yes,75001\n"
    dropped = validate("k.csv", data, CONTRACT.model_copy(update={"extra_columns": "drop"}))
    allowed = validate("k.csv", data, CONTRACT.model_copy(update={"extra_columns": "allow"}))
    assert "zip" not in dropped.columns and "zip" in allowed.columns


def test_infer_contract_from_a_sample(tmp_path: object) -> None:
    frame = pl.DataFrame({"x": [1.0, 2.5, 3.0, None], "c": ["a", "b", "a", "b"], "y": [0, 1, 0, 1]})
    contract = infer_contract(frame, "demo", "y")
    assert contract.task == "binary" and contract.metric == "roc_auc"
    assert contract.columns["x"] == ColumnSpec(dtype="float", nullable=True, min=1.0, max=3.0)
    assert contract.columns["c"].categories == ["a", "b"]
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
