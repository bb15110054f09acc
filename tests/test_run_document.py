"""run.json is a typed, versioned document (events/run.py): today's and older stored runs parse; a newer or
foreign document is refused with a message."""

from __future__ import annotations

from typing import Any

import pytest

from sluice.events.run import SCHEMA_VERSION, TYPE, RunDocumentError, TrainingRun, read

# A run.json as the train stage wrote it before the document had a type: no trials summary, no label versions,
# no bundle (its model is loaded from `artifacts`), no leakage or refit.
OLD: dict[str, Any] = {
    "run_id": "20260301T120000-3f2a", "dataset": "churn", "model": "churn", "task": "classification",
    "metric": "roc_auc", "feature_set_version": "fs-9c1e", "data_versions": ["dv-1", "dv-2"],
    "sources": [{"key": "incoming/churn/a.csv", "etag": "e1"}], "contract_version": "c-77",
    "params": {"time_budget_s": 10, "estimators": ["lgbm"]}, "best_estimator": "lgbm",
    "best_config": {"n_estimators": 4, "num_leaves": 4}, "best_loss": 0.21,
    "holdout": {"rows": 60, "scored_rows": 58, "train_rows": 240, "fraction": 0.2, "seed": 7,
                "metrics": {"roc_auc": 0.79}, "baseline": {"roc_auc": 0.5}},
    "artifacts": {"model": {"key": "runs/churn/20260301T120000-3f2a/model-ab12.txt", "sha256": "ab12" * 16}},
    "durations_s": {"prepare": 0.1, "fit": 2.0, "evaluate_and_store": 0.2, "total": 2.3},
    "environment": {"python": "3.11.9", "packages": {"flaml": "2.3.0"}},
    "finished_at": "2026-03-01T12:00:03.120Z",
}


def test_an_old_run_json_still_parses_and_keeps_what_it_said() -> None:
    run = TrainingRun.from_dict(OLD)
    assert (run.type, run.schema_version) == (TYPE, SCHEMA_VERSION)
    assert run.bundle is None and run.label_versions == [] and run.refit is None
    doc = read(OLD)
    assert {k: doc[k] for k in OLD} == OLD  # nothing it recorded is lost or changed
    assert read(doc) == doc  # and today's form reads back as itself


def test_fields_a_later_sluice_adds_are_kept() -> None:
    assert read({**OLD, "calibration": {"method": "isotonic"}})["calibration"] == {"method": "isotonic"}


@pytest.mark.parametrize(("doc", "message"), [
    ({**OLD, "schema_version": SCHEMA_VERSION + 1}, "newer than this Sluice"),
    ({**OLD, "type": "sluice.data.validated"}, "expected a sluice.run.trained"),
    ({k: v for k, v in OLD.items() if k != "dataset"}, "dataset"),
    ({**OLD, "data_versions": "dv-1"}, "data_versions"),
])
def test_a_document_that_is_not_a_run_is_refused_with_what_is_wrong(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(RunDocumentError, match=message):
        TrainingRun.from_dict(doc)
