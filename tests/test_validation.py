"""Validation: the bad-file corpus, row-level splits, and property-based reconciliation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from sluice.core.errors import UnreadableFile
from sluice.core.runtime import Runtime
from sluice.events.s3 import ObjectCreated
from sluice.ml.contract import ColumnSpec, Contract, ContractError, infer_contract, parse_contract
from sluice.ml.validation import validate_file

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
