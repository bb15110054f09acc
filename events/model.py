"""Model lifecycle events, as CloudEvents 1.0 JSON on the SNS topic. Downstream systems subscribe to these."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

PROMOTED = "sluice.model.promoted"
REJECTED = "sluice.model.rejected"
MODEL_EVENT_TYPES = (PROMOTED, REJECTED)
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ModelEvent:
    """A registry decision. `id` is derived from (type, model, version), so a redelivery carries the same id."""

    type: str
    model: str
    dataset: str
    version: int
    time: str
    source: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """Stable across redeliveries: consumers de-duplicate on it."""
        return hashlib.sha256(f"{self.type}|{self.source}|{self.model}|{self.version}".encode()).hexdigest()[:32]

    @property
    def subject(self) -> str:
        """The CloudEvents subject: the model version this is about."""
        return f"models/{self.model}/versions/{self.version}"

    def to_cloudevent(self) -> dict[str, Any]:
        """The CloudEvents 1.0 structured-mode JSON document."""
        return {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time,
            "subject": self.subject,
            "datacontenttype": "application/json",
            "sluiceschemaversion": SCHEMA_VERSION,
            "data": {"model": self.model, "dataset": self.dataset, "version": self.version, **self.data},
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
        return cls(doc["type"], model, dataset, version, doc["time"], doc["source"], data)

    def attributes(self) -> dict[str, str]:
        """SNS message attributes, so subscribers can filter without parsing the body."""
        return {"type": self.type, "model": self.model, "dataset": self.dataset}
