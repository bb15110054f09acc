"""The ports the framework talks through: object store, publisher, shared state, online feature store.

core/, ml/ and handlers/ are written against these Protocols only. infra/ implements them on AWS and Redis
(S3Store, SnsPublisher, RedisState, RedisOnline), core/memory.py has the in-process twins, and one place
(sluice/service.py) builds the implementations the settings name.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sluice.core.errors import IntegrityError

if TYPE_CHECKING:
    from sluice.events.model import ModelEvent


@dataclass(frozen=True)
class ObjectInfo:
    """What the store says about an object without reading it."""

    key: str
    size: int
    etag: str
    version_id: str | None
    sha256: str | None  # hex, when the object was uploaded with a full-object SHA-256 checksum
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Listed:
    """One object as a listing shows it."""

    key: str
    etag: str
    size: int
    modified: datetime

    def age_s(self, now: datetime) -> float:
        """Seconds since it was written."""
        return (now - self.modified).total_seconds()


# S3 lists LastModified to the second: objects written within a second of each other are not told apart by it.
SAME_SECOND_S = 1.0


def signed(store: ObjectStore, found: Iterable[str], reader: str) -> Iterator[tuple[str, Any]]:
    """(key, document) for each of `found` whose signature holds. A planted or edited document is left out with a
    warning naming it and `reader`: a reader that looks across many documents (reconcile's gaps, a trace) goes on,
    and the stage the document would wake refuses it."""
    for key in found:
        try:
            yield key, store.get_json(key)
        except IntegrityError as exc:
            logging.getLogger("sluice").warning("%s: left out %s: %s", reader, key,
                                                str(exc).removeprefix(f"{key}: ").split(";")[0])


def newest_first(store: ObjectStore, prefix: str, suffix: str) -> list[Listed]:
    """The objects under `prefix` whose key ends with `suffix`, newest first by the listing's time (one LIST per
    1,000 objects, no request per object): for "the newest run" without reading every one."""
    found = [o for o in store.listing(prefix) if o.key.endswith(suffix)]
    return sorted(found, key=lambda o: (o.modified, o.key), reverse=True)


def newest_group(store: ObjectStore, prefix: str, suffix: str) -> list[Listed]:
    """The newest such object and any written in the same second (which the listing cannot order): what to read
    to find the newest by the documents' own times."""
    found = newest_first(store, prefix, suffix)
    return [o for o in found if (found[0].modified - o.modified).total_seconds() < SAME_SECOND_S]


class ObjectStore(Protocol):
    """One bucket. Writes under the signed prefixes are signed and reads there verified (core/provenance.py)."""

    @property
    def bucket(self) -> str:
        """The bucket's name."""

    def uri(self, key: str) -> str:
        """The s3:// URI of a key."""

    def get(self, key: str, version_id: str | None = None) -> bytes:
        """The object's bytes; under a signed prefix, only if a stage wrote them (else IntegrityError)."""

    def verify(self, key: str, version_id: str | None = None) -> None:
        """Raise IntegrityError unless the object (a signed prefix's) was written by a Sluice stage."""

    def signature_problem(self, key: str) -> str | None:
        """Why the object at `key` fails its signature check, or None."""

    def get_json_unverified(self, key: str) -> Any:
        """A document as stored, signed or not: only for reports about tampering."""

    def get_json(self, key: str) -> Any:
        """The object, parsed as JSON."""

    def get_json_or_none(self, key: str) -> Any:
        """The object as JSON, or None when it does not exist."""

    def head(self, key: str) -> ObjectInfo | None:
        """Size, ETag, version and SHA-256 checksum of an object, or None when it does not exist."""

    def download(self, key: str, path: Path, version_id: str | None = None) -> tuple[str, int]:
        """Stream an object to `path`; returns its sha256 (hex) and size."""

    def put_file(self, key: str, path: Path, metadata: dict[str, str] | None = None) -> str:
        """Upload a file with its SHA-256 checksum; returns the hex digest."""

    def copy(
        self, source: str, key: str, version_id: str | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        """Copy within the bucket."""

    def exists(self, key: str) -> bool:
        """True when the key exists."""

    def put(self, key: str, data: bytes, *, if_absent: bool = False, content_type: str | None = None,
            metadata: dict[str, str] | None = None) -> bool:
        """Write an object. With `if_absent`, a conditional write: False when the key already existed."""

    def put_json(self, key: str, doc: Any, *, if_absent: bool = False) -> bool:
        """Write a JSON document (sorted keys, so equal documents are equal bytes)."""

    def keys(self, prefix: str) -> Iterator[str]:
        """Every key under a prefix, in lexical order."""

    def etags(self, prefix: str) -> Iterator[tuple[str, str]]:
        """(key, ETag) of every object under a prefix."""

    def listing(self, prefix: str) -> Iterator[Listed]:
        """Every object under a prefix with its ETag, size and time, from the listing alone."""

    def delete(self, key: str) -> None:
        """Delete a key."""


class Publisher(Protocol):
    """Where model events go (the topic downstream systems subscribe to)."""

    def publish(self, event: ModelEvent) -> str:
        """Publish one event; returns the message id."""


class OnlineStore(Protocol):
    """Latest feature vectors by (dataset, entity)."""

    def put_many(self, dataset: str, feature_set: str, vectors: dict[str, dict[str, Any]], time_field: str) -> int:
        """Write vectors that are newer than what is stored; returns how many were written."""

    def get(self, dataset: str, entity: str) -> dict[str, Any] | None:
        """The entity's vector with its event time and feature set, or None."""


IN_PROGRESS = "in_progress"
COMPLETED = "completed"


@dataclass(frozen=True)
class IdempotencyRecord:
    """What an earlier delivery of the same event left behind."""

    status: str
    result: Any = None
    owner: str | None = None
    since: float | None = None  # epoch seconds the claim was taken
    ttl_ms: int | None = None  # how long the record lives unless renewed

    @staticmethod
    def parse(raw: bytes | str, ttl_ms: int | None = None) -> IdempotencyRecord:
        """The record from its stored JSON."""
        doc = json.loads(raw)
        return IdempotencyRecord(doc["status"], doc.get("result"), doc.get("owner"), doc.get("since"), ttl_ms)


class StateBackend(Protocol):
    """Idempotency leases and records, and named locks."""

    def claim(self, key: str, owner: str, ttl_s: float) -> IdempotencyRecord | None:
        """Take `key` as an in-progress lease for `owner`; None when taken, else the record someone else holds."""

    def renew(self, key: str, owner: str, ttl_s: float) -> bool:
        """Extend `owner`'s lease; False when it is no longer theirs (lapsed, or taken over)."""

    def complete(self, key: str, owner: str, result: Any, ttl_s: float) -> bool:
        """Turn `owner`'s lease into a completed record; False when the lease was no longer theirs."""

    def release(self, key: str, owner: str) -> bool:
        """Drop `owner`'s lease so that a retry can run; never someone else's."""

    def record(self, key: str) -> IdempotencyRecord | None:
        """The current record of `key`, if any (for status and reconcile)."""

    def forget(self, key: str) -> None:
        """Drop a completed record (its outputs are gone from the bucket); leases are left alone."""

    def lock(self, name: str, timeout_s: int) -> AbstractContextManager[None]:
        """A mutual-exclusion lock shared by every worker of the deployment."""

    def began(self, key: str, ttl_s: float) -> int:
        """Count one more beginning of `key` (the count lives `ttl_s`); how many there are, this one included."""

    def ended(self, key: str) -> None:
        """`key` ended (in any way a process can record): forget its beginnings."""

    def note(self, key: str, value: str, ttl_s: float) -> None:
        """Leave a note for the next holder of a lock (it lives `ttl_s`). A cache: losing one must be safe."""

    def take_note(self, key: str) -> str | None:
        """The note left at `key`, removed in the same step (None when there is none)."""




def state_doc(status: str, owner: str | None, result: Any = None) -> str:
    """A stored idempotency record (the same JSON in Redis and in the in-process twin)."""
    return json.dumps({"status": status, "owner": owner, "since": time.time(), "result": result}, default=str)
