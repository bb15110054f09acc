"""What a stage wrote: the keys a completed idempotency record is checked against (the bucket is the truth)."""

from __future__ import annotations

from typing import Any

from sluice.infra.store import S3Store


class RecordingStore(S3Store):
    """The same bucket and client as `inner`, noting every key written through it."""

    def __init__(self, inner: S3Store):
        self.__dict__.update(inner.__dict__)
        self.written: set[str] = set()

    def put(self, key: str, *args: Any, **kwargs: Any) -> bool:
        """Write, and note the key (a conditional write that found it there names it too: it exists)."""
        ok = super().put(key, *args, **kwargs)
        self.written.add(key)
        return ok

    def put_file(self, key: str, *args: Any, **kwargs: Any) -> str:
        """Upload, and note the key."""
        digest = super().put_file(key, *args, **kwargs)
        self.written.add(key)
        return digest

    def copy(self, source: str, key: str, *args: Any, **kwargs: Any) -> None:
        """Copy, and note the destination."""
        super().copy(source, key, *args, **kwargs)
        self.written.add(key)

    def delete(self, key: str) -> None:
        """Delete, and forget the key."""
        super().delete(key)
        self.written.discard(key)
