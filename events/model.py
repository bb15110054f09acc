"""Model lifecycle events, as CloudEvents 1.0 JSON on the SNS topic. Downstream systems subscribe to these.

One JSON Schema per type lives in `events/schemas/<type>.json` (`schema(type)` loads it).

    sluice.model.promoted     a version became champion (by the gate, or by hand)
    sluice.model.rejected     the gate did not promote a version: `data.outcome` is reject or insufficient_evidence
    sluice.model.rolled_back  the previous champion was restored; `data.version` is the restored one
    sluice.model.archived     a version was retired by hand
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

PROMOTED = "sluice.model.promoted"
REJECTED = "sluice.model.rejected"
ROLLED_BACK = "sluice.model.rolled_back"
ARCHIVED = "sluice.model.archived"
MODEL_EVENT_TYPES = (PROMOTED, REJECTED, ROLLED_BACK, ARCHIVED)
# Which event a registry history action is published as.
EVENT_OF_ACTION = {"promoted": PROMOTED, "rejected": REJECTED, "challenger": REJECTED, "rolled_back": ROLLED_BACK,
                   "archived": ARCHIVED}
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class ModelEvent:
    """A registry transition. `id` is derived from (type, model, version, history sequence), so a redelivery of
    the same transition carries the same id, and a later transition of the same kind does not."""

    type: str
    model: str
    dataset: str
    version: int
    time: str
    source: str
    data: dict[str, Any] = field(default_factory=dict)
    sequence: int | None = None  # the registry history record this event announces
    trace_id: str | None = None  # the drop that caused it (core/tracing.py): the CloudEvent's `traceparent`

    @property
    def id(self) -> str:
        """Stable across redeliveries: consumers de-duplicate on it."""
        seq = "" if self.sequence is None else f"|{self.sequence}"
        return hashlib.sha256(f"{self.type}|{self.source}|{self.model}|{self.version}{seq}".encode()).hexdigest()[:32]

    @property
    def subject(self) -> str:
        """The CloudEvents subject: the model version this is about."""
        return f"models/{self.model}/versions/{self.version}"

    def to_cloudevent(self) -> dict[str, Any]:
        """The CloudEvents 1.0 structured-mode JSON document."""
        data: dict[str, Any] = {"model": self.model, "dataset": self.dataset, "version": self.version, **self.data}
        if self.sequence is not None:
            data["sequence"] = self.sequence
        trace = {"traceparent": f"00-{self.trace_id}-{self.id[:16]}-01"} if self.trace_id else {}
        return {
            **trace,
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time,
            "subject": self.subject,
            "datacontenttype": "application/json",
            "dataschema": schema_uri(self.type),
            "sluiceschemaversion": SCHEMA_VERSION,
            "data": data,
        }

    def to_json(self) -> str:
        """Serialised CloudEvent."""
        return json.dumps(self.to_cloudevent(), sort_keys=True, default=str)

    @classmethod
    def from_cloudevent(cls, doc: dict[str, Any]) -> ModelEvent:
        """Parse a CloudEvent produced by `to_cloudevent`."""
        if doc.get("specversion") != "1.0" or doc.get("type") not in MODEL_EVENT_TYPES:
            raise ValueError(f"not a Sluice model event: type={doc.get('type')!r}")
        data = dict(doc["data"])
        model, dataset, version = data.pop("model"), data.pop("dataset"), int(data.pop("version"))
        sequence = data.pop("sequence", None)
        parent = str(doc.get("traceparent") or "").split("-")
        trace_id = parent[1] if len(parent) == 4 and len(parent[1]) == 32 else None
        return cls(doc["type"], model, dataset, version, doc["time"], doc["source"], data, sequence, trace_id)

    def attributes(self) -> dict[str, str]:
        """SNS message attributes, so subscribers can filter without parsing the body."""
        return {"type": self.type, "model": self.model, "dataset": self.dataset}


def for_transition(version: dict[str, Any], record: dict[str, Any], source: str) -> ModelEvent:
    """The event announcing registry history `record`; `version` is the document of the version it is about."""
    gate = version.get("gate") or {}
    metric = gate.get("metric") or {}
    scores = version.get("scores") or {}
    return ModelEvent(
        type=EVENT_OF_ACTION[record["action"]],
        model=version["model"],
        dataset=version["dataset"],
        version=version["version"],
        time=record["at"],
        source=source,
        sequence=record["sequence"],
        trace_id=version.get("trace_id") if record.get("cause") == "gate" else None,
        data={
            # The champion before this transition: what a deployer replaces (or, when rejected, keeps).
            "previous_version": record["previous_champion"],
            "champion": record["champion"],
            "outcome": version["decision"],
            "stage": next(c["to"] for c in record["changes"] if c["version"] == version["version"]),
            "metric": {
                "name": version["metric"],
                "higher_is_better": metric.get("higher_is_better"),
                "candidate": scores.get("candidate"),
                "champion": scores.get("champion"),
                "baseline": scores.get("baseline"),
                "compared_with": gate.get("reference"),
                "difference": metric.get("difference"),
                "holdout_rows": metric.get("holdout_rows"),
            },
            "guardrails": gate.get("guardrails", []),
            "slices": gate.get("slices", []),
            "benchmark": version.get("benchmark"),
            "reasons": version.get("reasons", []),
            "transition": {k: record.get(k) for k in ("action", "cause", "by", "reason", "at")},
            "artifact": version["artifact"],
            # Everything a subscriber needs to score: `sluice.load_model(event)` reads and verifies it.
            "bundle": version.get("bundle"),
            "lineage": version["lineage"],
            "card": version.get("card"),
            # Columns that alone predict the target, named, with the policy's action (ml/leakage.py).
            **({"leakage": version["leakage"]} if version.get("leakage") else {}),
        },
    )


def schema_uri(event_type: str) -> str:
    """The `dataschema` of an event type: its JSON Schema's `$id`."""
    return f"urn:sluice:schema:{event_type}:{SCHEMA_VERSION}"


def schema(event_type: str) -> dict[str, Any]:
    """The JSON Schema of an event type, shipped as package data in `events/schemas/`."""
    from importlib import resources  # here, not at the top: it costs the CLI's start 40 ms (tempfile, shutil)

    if event_type not in MODEL_EVENT_TYPES:
        raise ValueError(f"no schema for {event_type!r}; known: {', '.join(MODEL_EVENT_TYPES)}")
    doc: dict[str, Any] = json.loads(
        resources.files("sluice.events").joinpath(f"schemas/{event_type}.json").read_text())
    return doc
