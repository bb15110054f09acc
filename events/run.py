"""`runs/<dataset>/<run id>/run.json`: what a training run did, as a typed, versioned document.

The train stage writes it (its creation wakes the benchmark stage); the registry, the gate, rescoring, the CLI and
the dashboard read it back through `TrainingRun.from_dict`. Like the manifests (pipeline.py) it carries a `type` and
a `schema_version`; a document from before either existed (schema version 0) still parses, and one from a newer
Sluice is refused rather than misread.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

TYPE: Final = "sluice.run.trained"
SCHEMA_VERSION: Final = 1


class RunDocumentError(ValueError):
    """A run.json that is not a training run this Sluice understands."""


class TrainingRun(BaseModel):
    """One training run. Nested parts (holdout, artifacts, bundle...) stay plain JSON objects: their own
    readers (the gate, the bundle loader) check what they use."""

    # Fields a later Sluice adds are kept as they are (a newer *schema version* is refused instead).
    model_config = ConfigDict(extra="allow", frozen=True)

    type: Literal["sluice.run.trained"] = TYPE
    schema_version: int = SCHEMA_VERSION

    run_id: str
    dataset: str
    model: str
    task: str
    metric: str
    feature_set_version: str
    data_versions: list[str]
    label_versions: list[str] = []
    sources: list[dict[str, Any]] = []
    contract_version: str
    params: dict[str, Any]
    best_estimator: str
    best_config: dict[str, Any]
    best_loss: float | None = None
    trials: dict[str, Any] = {}
    warm_start: dict[str, Any] | None = None
    leakage: dict[str, Any] | None = None
    feature_importance: dict[str, float] = {}
    training_rows_limit: int | None = None
    holdout: dict[str, Any]
    artifacts: dict[str, Any]
    bundle: dict[str, Any] | None = None  # runs from before bundles: the loader falls back to `artifacts`
    refit: dict[str, Any] | None = None
    refit_skipped: str | None = None  # why no refit ships (the budget ran out); absent when one does
    durations_s: dict[str, float] = {}
    environment: dict[str, Any] = {}
    finished_at: str
    # The correlation of the drop whose feature set this run trained on (core/tracing.py), and of every drop it
    # coalesced (new since the dataset's previous run); absent in older runs.
    trace_id: str | None = None
    trace_links: list[str] = []

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TrainingRun:
        """Parse a stored run.json (today's, or one written before it had a type and schema version)."""
        if not isinstance(doc, dict):
            raise RunDocumentError(f"a run.json is a JSON object, not {type(doc).__name__}")
        if doc.get("type", TYPE) != TYPE:
            raise RunDocumentError(f"expected a {TYPE} document, got {doc.get('type')!r}")
        version = int(doc.get("schema_version", 0))
        if version > SCHEMA_VERSION:
            raise RunDocumentError(f"{TYPE} schema version {version} is newer than this Sluice understands "
                                   f"({SCHEMA_VERSION}); upgrade Sluice")
        try:
            return cls.model_validate({**doc, "type": TYPE, "schema_version": SCHEMA_VERSION})
        except ValidationError as exc:
            where = doc.get("run_id", "?")
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            raise RunDocumentError(f"run {where}: run.json is not a training run ({problems})") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as stored (readers that predate the type index it like a dict)."""
        return self.model_dump(mode="json")


def read(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored run.json checked and brought to today's shape, as the dict its readers index."""
    return TrainingRun.from_dict(doc).to_dict()
