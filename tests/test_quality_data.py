"""Contracts inferred by `sluice contract infer` accept the next file of the same source."""

from __future__ import annotations

import io
import re
from pathlib import Path

import polars as pl
import pytest

from benchmarks.quality_data import all_datasets, diamonds, halves
from sluice.ml.contract import infer_contract, parse_contract
from sluice.ml.validation import read_sample, validate_file

DATASETS = [*all_datasets(), diamonds(n=5000)]  # the larger one smaller: the same columns and rules


@pytest.mark.parametrize("data", DATASETS, ids=[d.name.split()[0] for d in DATASETS])
def test_a_contract_inferred_from_the_first_half_accepts_the_second(data: object, tmp_path: Path) -> None:
    first, second = halves(data.frame)  # type: ignore[attr-defined]
    buffer = io.BytesIO()
    first.write_csv(buffer)
    # As `sluice contract infer FILE` does: the sample read from its CSV, the YAML written and read back.
    sample = read_sample("first.csv", buffer.getvalue())
    contract = parse_contract(infer_contract(sample, "bench", data.target).to_yaml())  # type: ignore[attr-defined]
    assert contract.task == data.task  # type: ignore[attr-defined]
    path = tmp_path / "second.csv"
    second.write_csv(path)
    split = validate_file(path, "incoming/bench/second.csv", contract, tmp_path)
    assert split.rows_total == second.height
    assert split.rows_invalid == 0, split.summary()


def test_the_tolerance_and_limits_come_with_their_reasons() -> None:
    frame = pl.DataFrame({"x": [1.0, 2.5, 3.0, None], "n": [3, 4, 5, 6], "c": ["a", "b", "a", "b"],
                          "y": [0, 1, 0, 1]})
    contract = infer_contract(frame, "demo", "y")
    assert 0 < contract.max_invalid_fraction <= 0.05
    text = contract.to_yaml()
    assert "# Up to 1% of a file's rows may break a rule" in text and "Set 0 to stop" in text
    prose = re.sub(r"\n *# ", " ", text)  # the comments as written, whatever their line breaks
    assert "observed 1 to 3" in text and "Tighten them to the observed range" in prose
    assert parse_contract(text) == contract


def test_the_limits_promotion_and_drift_blocks_say_what_each_value_means() -> None:
    # The inferred YAML explained its columns and max_invalid_fraction, but left `limits:`, `promotion:` and `drift:`
    # bare: a user tightening the contract had to find each value in the README.
    frame = pl.DataFrame({"x": [1.0, 2.5, 3.0, None], "y": [0, 1, 0, 1]})
    contract = infer_contract(frame, "demo", "y")
    text = contract.to_yaml()
    lines = text.splitlines()
    for block in ("promotion", "drift", "limits"):
        at = lines.index(f"{block}:")
        assert lines[at - 1].startswith("# "), (block, lines[at - 1])
        entries = [i for i, line in enumerate(lines) if i > at and re.match(r"^  [a-z_]+:", line)
                   and not any(re.match(r"^[a-z_]+:", x) for x in lines[at + 1:i])]
        assert entries and all(lines[i - 1].startswith("  # ") for i in entries), block
    assert "# a column has drifted when its PSI is above this" in text and "lower them to what" in text
    assert parse_contract(text) == contract


def test_dates_get_their_parts_as_features() -> None:
    from datetime import date

    frame = pl.DataFrame({"d": [date(2024, 1, i) for i in range(1, 11)], "y": [float(i) for i in range(10)]})
    contract = infer_contract(frame, "demo", "y")
    assert [(t.name, t.op) for t in contract.features] == [("d_month", "month"), ("d_day", "day"),
                                                          ("d_dayofweek", "dayofweek")]


def _seasons(years: list[int], n: int = 120) -> pl.DataFrame:
    return pl.DataFrame({"year": [years[i % len(years)] for i in range(n)],
                         "rain": [float((i * 37) % 50) for i in range(n)],
                         "wins": [float((i * 37) % 50) * 0.4 + (i % len(years)) for i in range(n)]})


@pytest.mark.parametrize("years", [[1930, 1931, 1932, 1933], [1931, 1932]])
def test_a_year_column_accepts_the_next_seasons(years: list[int], tmp_path: Path) -> None:
    # Widened by its span alone, years 1931..1932 got max 1933 and 1930..1933 max 1936: next season's rows were
    # quarantined ("year: 1935 is above the contract's max 1933.0").
    inferred = infer_contract(_seasons(years), "league", "wins")
    assert "10% of its largest absolute value" in re.sub(r"\n *# ", " ", inferred.to_yaml())
    contract = parse_contract(inferred.to_yaml())
    spec = contract.columns["year"]
    assert spec.min is not None and spec.max is not None and spec.min <= 1900 and spec.max >= 1940
    path = tmp_path / "next.csv"
    _seasons(list(range(1934, 1940))).write_csv(path)
    split = validate_file(path, "incoming/league/next.csv", contract, tmp_path)
    assert split.rows_invalid == 0, split.summary()
    # a range near zero is still widened by its span, never across zero
    small = infer_contract(pl.DataFrame({"n": [3, 4, 5, 6], "y": [0.5, 1.5, 2.5, 3.5]}), "s", "y").columns["n"]
    assert (small.min, small.max) == (0.0, 9.0)
