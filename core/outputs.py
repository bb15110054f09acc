"""What a stage wrote: the keys a completed idempotency record is checked against (the bucket is the truth)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sluice.core.ports import Listed, ObjectInfo, ObjectStore


class RecordingStore:
    """The same bucket as `inner` (any ObjectStore), noting every key written through it."""

    def __init__(self, inner: ObjectStore):
        self.inner = inner
        self.written: set[str] = set()

    @property
    def bucket(self) -> str:
        """The inner store's bucket."""
        return self.inner.bucket

    def __getattr__(self, name: str) -> Any:
        # What an implementation offers beyond the port (S3Store's client, signer) stays reachable.
        return getattr(self.inner, name)

    def put(self, key: str, data: bytes, *, if_absent: bool = False, content_type: str | None = None,
            metadata: dict[str, str] | None = None) -> bool:
        """Write, and note the key (a conditional write that found it there names it too: it exists)."""
        ok = self.inner.put(key, data, if_absent=if_absent, content_type=content_type, metadata=metadata)
        self.written.add(key)
        return ok

    def put_json(self, key: str, doc: Any, *, if_absent: bool = False) -> bool:
        """Write a JSON document, and note the key."""
        ok = self.inner.put_json(key, doc, if_absent=if_absent)
        self.written.add(key)
        return ok

    def put_file(self, key: str, path: Path, metadata: dict[str, str] | None = None) -> str:
        """Upload, and note the key."""
        digest = self.inner.put_file(key, path, metadata)
        self.written.add(key)
        return digest

    def copy(
        self, source: str, key: str, version_id: str | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        """Copy, and note the destination."""
        self.inner.copy(source, key, version_id, metadata)
        self.written.add(key)

    def delete(self, key: str) -> None:
        """Delete, and forget the key."""
        self.inner.delete(key)
        self.written.discard(key)

    # Reads go straight to the inner store.
    def uri(self, key: str) -> str:
        """The inner store's URI of a key."""
        return self.inner.uri(key)

    def get(self, key: str, version_id: str | None = None) -> bytes:
        """Read through."""
        return self.inner.get(key, version_id)

    def verify(self, key: str, version_id: str | None = None) -> None:
        """Check through."""
        self.inner.verify(key, version_id)

    def signature_problem(self, key: str) -> str | None:
        """Check through."""
        return self.inner.signature_problem(key)

    def get_json_unverified(self, key: str) -> Any:
        """Read through."""
        return self.inner.get_json_unverified(key)

    def get_json(self, key: str) -> Any:
        """Read through."""
        return self.inner.get_json(key)

    def get_json_or_none(self, key: str) -> Any:
        """Read through."""
        return self.inner.get_json_or_none(key)

    def head(self, key: str) -> ObjectInfo | None:
        """Read through."""
        return self.inner.head(key)

    def download(self, key: str, path: Path, version_id: str | None = None) -> tuple[str, int]:
        """Read through."""
        return self.inner.download(key, path, version_id)

    def exists(self, key: str) -> bool:
        """Read through."""
        return self.inner.exists(key)

    def keys(self, prefix: str) -> Iterator[str]:
        """List through."""
        return self.inner.keys(prefix)

    def etags(self, prefix: str) -> Iterator[tuple[str, str]]:
        """List through."""
        return self.inner.etags(prefix)

    def listing(self, prefix: str) -> Iterator[Listed]:
        """List through."""
        return self.inner.listing(prefix)
