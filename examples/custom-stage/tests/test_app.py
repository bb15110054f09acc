"""The project's own stage and check on moto in-process (no AWS account, no broker): `pytest`."""

from __future__ import annotations

import io
from importlib import resources
from pathlib import Path

import polars as pl
import pytest
from app import app

from sluice.testing import local_runtime

CONTRACT = Path(__file__).resolve().parents[1] / "contract.yaml"


def export(rows: pl.DataFrame) -> bytes:
    """Rows as the partner system writes them: JSON lines."""
    out = io.BytesIO()
    rows.write_ndjson(out)
    return out.getvalue()


@pytest.fixture
def sample() -> pl.DataFrame:
    return pl.read_csv(resources.files("sluice").joinpath("data/breast_cancer.csv").read_bytes())


def test_an_export_becomes_a_drop_that_the_builtin_chain_validates(sample: pl.DataFrame) -> None:
    with local_runtime(app) as rt:
        rt.store.put("contracts/cancer.yaml", CONTRACT.read_bytes())
        rt.store.put("exports/cancer/day1.jsonl", export(sample))
        assert rt.run("export_to_csv", "exports/cancer/day1.jsonl")["outputs"] == ["incoming/cancer/day1.csv"]
        assert rt.run("validate", "incoming/cancer/day1.csv")["outcome"] == "done"
        [manifest] = [k for k in rt.store.keys("validated/cancer/") if k.endswith("manifest.json")]
        assert rt.store.get_json(manifest)["rows"] == sample.height


def test_a_row_that_breaks_our_check_is_quarantined_by_name(sample: pl.DataFrame) -> None:
    bad = sample.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(0.0).otherwise(pl.col("mean_area"))
                              .alias("mean_area"))
    with local_runtime(app) as rt:
        rt.store.put("contracts/cancer.yaml", CONTRACT.read_bytes())
        rt.store.put("exports/cancer/day2.jsonl", export(bad))
        rt.run("export_to_csv", "exports/cancer/day2.jsonl")
        result = rt.run("validate", "incoming/cancer/day2.csv")
        assert result["outcome"] == "quarantined"
        [failure] = rt.store.get_json(result["report"])["summary"]
        assert (failure["column"], failure["check"], failure["example_row"]) == ("mean_area", "positive", 3)


def test_bad_json_lines_are_quarantined_not_retried() -> None:
    with local_runtime(app) as rt:
        rt.store.put("exports/cancer/broken.jsonl", b"{not json\n")
        result = rt.run("export_to_csv", "exports/cancer/broken.jsonl")
        assert result["outcome"] == "quarantined"
        assert "not JSON lines" in rt.store.get_json(result["report"])["message"]
