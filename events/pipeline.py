"""The pipeline's own events. Each is the manifest a stage writes; its creation in the bucket wakes the next stage.

Every event has a stable `type` and a `schema_version`, and round-trips through JSON (`to_dict`/`from_dict`).
Unknown keys are refused when parsing, so a manifest written by a newer Sluice fails loudly, not silently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self


@dataclass(frozen=True)
class _Event:
    type: ClassVar[str]
    schema_version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, with `type` and `schema_version`."""
        return {"type": self.type, "schema_version": self.schema_version, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Self:
        """Parse the JSON form; refuses another type or a newer schema version."""
        if doc.get("type") != cls.type:
            raise ValueError(f"expected a {cls.type} event, got {doc.get('type')!r}")
        if int(doc.get("schema_version", 0)) > cls.schema_version:
            raise ValueError(f"{cls.type} schema version {doc['schema_version']} is newer than this Sluice "
                             f"understands ({cls.schema_version}); upgrade Sluice")
        fields = {k: v for k, v in doc.items() if k not in ("type", "schema_version")}
        return cls(**fields)


@dataclass(frozen=True)
class DataValidated(_Event):
    """A dropped file passed its contract: `validated/<dataset>/<data version>/manifest.json`."""

    type: ClassVar[str] = "sluice.data.validated"

    dataset: str
    data_version: str
    source: dict[str, Any]
    contract_version: str
    rows: int
    rows_total: int
    rows_quarantined: int
    columns: list[str]
    validated_at: str
    retrain: bool = True
    drift: dict[str, Any] | None = None
    replay_of: dict[str, Any] | None = None
    kind: str = "data"  # or "labels": under validated-labels/, rows of (entity key, label time, target)
    trace_id: str | None = None  # the drop's correlation id (core/tracing.py); absent in older manifests


@dataclass(frozen=True)
class FeaturesMaterialized(_Event):
    """A feature set was written: `features/<dataset>/<feature set version>/manifest.json`."""

    type: ClassVar[str] = "sluice.features.materialized"

    dataset: str
    feature_set_version: str
    data_versions: list[str]
    sources: list[dict[str, Any]]
    contract_version: str
    definitions: list[dict[str, Any]]
    rows: int
    columns: list[str]
    materialized_at: str
    trace_id: str | None = None  # the trace of the data version that caused this feature set


@dataclass(frozen=True)
class CandidateBenchmarked(_Event):
    """A run was compared with the champion: `registry/<model>/candidates/<run id>.candidate.json`."""

    type: ClassVar[str] = "sluice.model.benchmarked"
    schema_version: ClassVar[int] = 2

    run_id: str
    run_key: str
    dataset: str
    model: str
    metric: str
    higher_is_better: bool
    scores: dict[str, float | None]
    compared_with: int | None
    holdout_rows: int
    promote: bool
    reasons: list[str] = field(default_factory=list)
    benchmarked_at: str = ""
    # Schema 2: the gate's outcome (promote, reject, insufficient_evidence), its evidence, the inference benchmark.
    outcome: str = ""
    gate: dict[str, Any] = field(default_factory=dict)
    benchmark: dict[str, Any] = field(default_factory=dict)
    trace_id: str | None = None  # the run's (core/tracing.py), and the drops it coalesced
    trace_links: list[str] = field(default_factory=list)
