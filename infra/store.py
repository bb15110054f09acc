"""The object store: every handler reads and writes through this, never through boto3 directly."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from sluice.core.ports import Listed, ObjectInfo
from sluice.core.provenance import Signer, is_signed
from sluice.core.settings import Settings

__all__ = ["Listed", "ObjectInfo", "S3Store"]
from sluice.infra.aws import client


class S3Store:
    """One bucket, through boto3. Writes under the signed prefixes are signed and reads there are verified
    (core/provenance.py): a document that no stage wrote raises IntegrityError instead of being acted on."""

    def __init__(self, settings: Settings, s3: Any | None = None, signer: Signer | None = None):
        self.bucket = settings.bucket
        self.s3 = s3 or client("s3", settings)
        self.signer = signer or Signer.from_setting(settings.signing_key)

    def uri(self, key: str) -> str:
        """The s3:// URI of a key."""
        return f"s3://{self.bucket}/{key}"

    def get(self, key: str, version_id: str | None = None) -> bytes:
        """The object's bytes (of one version, when given); under a signed prefix, only if a stage wrote them."""
        extra = {"VersionId": version_id} if version_id else {}
        response = self.s3.get_object(Bucket=self.bucket, Key=key, **extra)
        body: bytes = response["Body"].read()
        if is_signed(key):
            self.signer.check(key, hashlib.sha256(body).hexdigest(), dict(response.get("Metadata") or {}))
        return body

    def verify(self, key: str, version_id: str | None = None) -> None:
        """Raise IntegrityError unless the object (a signed prefix's) was written by a Sluice stage."""
        self.get(key, version_id)

    def signature_problem(self, key: str) -> str | None:
        """Why the object at `key` fails its signature check, or None (for reports that go on past a failure)."""
        response = self.s3.get_object(Bucket=self.bucket, Key=key)
        digest = hashlib.sha256(response["Body"].read()).hexdigest()
        return self.signer.problem(key, digest, dict(response.get("Metadata") or {}))

    def get_json_unverified(self, key: str) -> Any:
        """A document as stored, signed or not: only for reports about tampering (`sluice models verify`)."""
        return json.loads(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def get_json(self, key: str) -> Any:
        """The object, parsed as JSON."""
        return json.loads(self.get(key))

    def get_json_or_none(self, key: str) -> Any:
        """The object as JSON, or None when it does not exist."""
        try:
            return self.get_json(key)
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise

    def head(self, key: str) -> ObjectInfo | None:
        """Size, ETag, version and SHA-256 checksum of an object, or None when it does not exist."""
        try:
            h = self.s3.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        checksum = h.get("ChecksumSHA256")
        sha = None
        # A multipart upload's checksum is a checksum of part checksums ("...-N"), not of the bytes.
        if checksum and "-" not in checksum and h.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
            sha = base64.b64decode(checksum).hex()
        return ObjectInfo(key, int(h["ContentLength"]), h["ETag"].strip('"'), h.get("VersionId"), sha,
                          dict(h.get("Metadata") or {}))

    def download(self, key: str, path: Path, version_id: str | None = None) -> tuple[str, int]:
        """Stream an object to `path`, hashing on the way: one read gives the file and its sha256."""
        extra = {"VersionId": version_id} if version_id else {}
        response = self.s3.get_object(Bucket=self.bucket, Key=key, **extra)
        body = response["Body"]
        digest, size = hashlib.sha256(), 0
        with open(path, "wb") as f:
            for chunk in body.iter_chunks(4 << 20):
                digest.update(chunk)
                size += len(chunk)
                f.write(chunk)
        if is_signed(key):
            try:
                self.signer.check(key, digest.hexdigest(), dict(response.get("Metadata") or {}))
            except Exception:
                path.unlink(missing_ok=True)
                raise
        return digest.hexdigest(), size

    def put_file(self, key: str, path: Path, metadata: dict[str, str] | None = None) -> str:
        """Upload a file with its full-object SHA-256 checksum (S3 verifies it); returns the hex digest.

        One PUT, streamed from disk, so the checksum covers the whole object (multipart checksums do not).
        """
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(4 << 20):
                digest.update(chunk)
        metadata = {**(metadata or {}), **self.signer.metadata(key, sha256_hex=digest.hexdigest())}
        with open(path, "rb") as f:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=f, Metadata=metadata, ChecksumAlgorithm="SHA256",
                               ChecksumSHA256=base64.b64encode(digest.digest()).decode())
        return digest.hexdigest()

    def copy(
        self, source: str, key: str, version_id: str | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        """Server-side copy within the bucket (into a signed prefix: read, checked, and written signed)."""
        if is_signed(key):
            self.put(key, self.get(source, version_id), metadata=metadata)
            return
        src: dict[str, str] = {"Bucket": self.bucket, "Key": source}
        if version_id:
            src["VersionId"] = version_id
        extra: dict[str, Any] = {"Metadata": metadata, "MetadataDirective": "REPLACE"} if metadata else {}
        self.s3.copy_object(Bucket=self.bucket, Key=key, CopySource=src, **extra)

    def exists(self, key: str) -> bool:
        """True when the key exists."""
        return self.head(key) is not None

    def put(self, key: str, data: bytes, *, if_absent: bool = False, content_type: str | None = None,
            metadata: dict[str, str] | None = None) -> bool:
        """Write an object. With `if_absent`, a conditional write: False when the key already existed."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": data}
        metadata = {**(metadata or {}), **self.signer.metadata(key, data)}
        if metadata:
            kwargs["Metadata"] = metadata
        # Both: AWS infers the algorithm from the value, moto only records a checksum when the algorithm is named.
        kwargs["ChecksumAlgorithm"] = "SHA256"
        kwargs["ChecksumSHA256"] = base64.b64encode(hashlib.sha256(data).digest()).decode()
        if content_type:
            kwargs["ContentType"] = content_type
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        try:
            self.s3.put_object(**kwargs)
        except ClientError as exc:
            # 409 ConditionalRequestConflict: a concurrent conditional write to the same key is in flight.
            if if_absent and _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def put_json(self, key: str, doc: Any, *, if_absent: bool = False) -> bool:
        """Write a JSON document (sorted keys, so equal documents are equal bytes)."""
        data = json.dumps(doc, indent=2, sort_keys=True, default=str).encode()
        return self.put(key, data, if_absent=if_absent, content_type="application/json")

    def keys(self, prefix: str) -> Iterator[str]:
        """Every key under a prefix, in lexical order."""
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def etags(self, prefix: str) -> Iterator[tuple[str, str]]:
        """(key, ETag) of every object under a prefix, from the listing alone (no request per object)."""
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"], str(obj.get("ETag", "")).strip('"')

    def listing(self, prefix: str) -> Iterator[Listed]:
        """Every object under `prefix`, with its ETag, size and time (one LIST, no HEAD per object)."""
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                modified = obj["LastModified"]
                yield Listed(obj["Key"], str(obj.get("ETag", "")).strip('"'), int(obj.get("Size", 0)),
                             modified if modified.tzinfo else modified.replace(tzinfo=UTC))

    def delete(self, key: str) -> None:
        """Delete a key (only used to tidy up superseded pointers, never data)."""
        self.s3.delete_object(Bucket=self.bucket, Key=key)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
