"""The S3 notification wire format, parsed once: every record, keys URL-decoded exactly once."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote_plus


class NotificationDecodeError(ValueError):
    """The queue message is not an S3 notification. The raw body is kept for the dead-letter record.

    (A ValueError, not a SluiceError: events/ is the bottom layer and imports nothing of Sluice's.)"""

    def __init__(self, message: str, body: str):
        super().__init__(message)
        self.body = body


@dataclass(frozen=True)
class ObjectCreated:
    """An object was written to the bucket."""

    bucket: str
    key: str
    size: int = 0
    etag: str = ""
    version_id: str | None = None
    sequencer: str = ""
    event_time: str = ""

    type = "s3.object.created"
    schema_version = 1

    @property
    def idempotency_key(self) -> str:
        """Two deliveries of the same write share this key, a write of other bytes to the key does not.

        The ETag, not the version id: emulators leave `versionId` out of notifications, AWS puts it in,
        and a re-upload of identical bytes to the same key is the same input to every stage anyway.
        """
        return f"{self.bucket}/{self.key}@{self.etag or self.version_id or self.sequencer}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict, the Dramatiq message payload."""
        return {"type": self.type, "schema_version": self.schema_version, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObjectCreated:
        """Inverse of `to_dict`."""
        fields = {k: v for k, v in data.items() if k not in ("type", "schema_version")}
        return cls(**fields)


def parse_s3_notification(body: str | bytes | dict[str, Any]) -> list[ObjectCreated]:
    """All `ObjectCreated:*` records of one notification; `s3:TestEvent` and other kinds give none.

    The object key arrives URL-encoded, differently per emulator (moto: `in%2Fa+b%2Bc.txt`,
    LocalStack: `in/a%20b%2Bc.txt`, AWS: form encoding). `unquote_plus` decodes all three, once.
    """
    raw = body if isinstance(body, str) else body.decode() if isinstance(body, bytes) else None
    try:
        doc = json.loads(raw) if raw is not None else body
    except json.JSONDecodeError as exc:
        raise NotificationDecodeError(f"queue message is not JSON: {exc}", raw or "") from exc
    if not isinstance(doc, dict):
        raise NotificationDecodeError("queue message is not a JSON object", raw or json.dumps(doc))
    # S3 -> SNS -> SQS wraps the notification in an SNS envelope.
    if doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        return parse_s3_notification(doc["Message"])
    if doc.get("Event") == "s3:TestEvent":
        return []
    records = doc.get("Records")
    if not isinstance(records, list):
        raise NotificationDecodeError("queue message has no 'Records' list", raw or json.dumps(doc))
    out = []
    for record in records:
        try:
            if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
                continue
            s3 = record["s3"]
            obj = s3["object"]
            out.append(
                ObjectCreated(
                    bucket=s3["bucket"]["name"],
                    key=unquote_plus(obj["key"]),
                    size=int(obj.get("size") or 0),
                    etag=str(obj.get("eTag") or obj.get("etag") or "").strip('"'),
                    version_id=obj.get("versionId") or None,
                    sequencer=str(obj.get("sequencer") or ""),
                    event_time=str(record.get("eventTime") or ""),
                )
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise NotificationDecodeError(f"malformed S3 record: {exc!r}", raw or json.dumps(doc)) from exc
    return out
