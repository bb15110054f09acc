"""Provenance: which objects a Sluice stage wrote, checkable without trusting the bucket.

Every object a worker writes under a signed prefix (the documents and data later stages act on) carries an
HMAC-SHA256 in its object metadata, under a key only workers (and operators running lifecycle commands) hold:

    x-amz-meta-sluice-signature: v1:<hex HMAC-SHA256(key, "v1\\n<object key>\\n<sha256 of the bytes>")>

The object key is in the MAC, so a signed document copied to another key does not verify there. Reading an object
under a signed prefix through the store checks the MAC against the bytes read; a missing or wrong one is an
IntegrityError (permanent: never retried, the runtime records a refusal). Producers write `incoming/` and
`labels/`, contract owners `contracts/`; neither is signed, and every stage validates what it reads there.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading

from sluice.core.errors import ConfigError, IntegrityError

log = logging.getLogger("sluice")

SIGNATURE_METADATA = "sluice-signature"
SCHEME = "v1"
MIN_KEY_BYTES = 32
# Written only by workers (and operators' lifecycle commands); what a stage acts on. Keep in step with `sluice iam`.
SIGNED_PREFIXES = ("validated/", "validated-labels/", "features/", "runs/", "registry/", "ledger/")

_ephemeral: bytes | None = None
_ephemeral_lock = threading.Lock()


def is_signed(key: str) -> bool:
    """True when objects at `key` must carry a worker's signature."""
    return key.startswith(SIGNED_PREFIXES)


def parse_key(text: str) -> bytes:
    """A signing key from settings: hex when it looks like hex, else its UTF-8 bytes; at least 32 bytes (else a
    ConfigError saying how to make one)."""
    try:
        raw = bytes.fromhex(text) if len(text) % 2 == 0 else text.encode()
    except ValueError:
        raw = text.encode()
    if len(raw) < MIN_KEY_BYTES:
        raise ConfigError(f"SLUICE_SIGNING_KEY is {len(raw)} bytes; use at least {MIN_KEY_BYTES} random bytes, e.g. "
                          "`export SLUICE_SIGNING_KEY=$(python -c 'import secrets; print(secrets.token_hex(32))')` "
                          "(the same key for every worker and operator)")
    return raw


def process_key() -> bytes:
    """A random key that lives as long as this process: enough for the demo and in-process tests only."""
    global _ephemeral
    with _ephemeral_lock:
        if _ephemeral is None:
            _ephemeral = secrets.token_bytes(32)
            log.warning("SLUICE_SIGNING_KEY is not set: signing with a key that lives only in this process; other "
                        "processes (workers, the CLI) cannot verify what it writes. Set it for any real deployment.")
        return _ephemeral


class Signer:
    """Signs and verifies objects under the signed prefixes."""

    def __init__(self, key: bytes):
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a signing key needs at least {MIN_KEY_BYTES} bytes")
        self._key = key

    @classmethod
    def from_setting(cls, text: str | None) -> Signer:
        """The signer of a `signing_key` setting (None: the process key)."""
        return cls(parse_key(text) if text else process_key())

    def __repr__(self) -> str:
        return "<Signer>"  # never the key

    def signature(self, key: str, sha256_hex: str) -> str:
        """The metadata value that says a worker wrote these bytes at this key."""
        mac = hmac.new(self._key, f"{SCHEME}\n{key}\n{sha256_hex}".encode(), hashlib.sha256).hexdigest()
        return f"{SCHEME}:{mac}"

    def metadata(self, key: str, data: bytes | None = None, sha256_hex: str | None = None) -> dict[str, str]:
        """Metadata to add to a write at `key` (empty outside the signed prefixes)."""
        if not is_signed(key):
            return {}
        digest = sha256_hex or hashlib.sha256(data or b"").hexdigest()
        return {SIGNATURE_METADATA: self.signature(key, digest)}

    def problem(self, key: str, sha256_hex: str, metadata: dict[str, str]) -> str | None:
        """Why the object at `key` is not one a worker wrote, or None when its signature holds."""
        given = metadata.get(SIGNATURE_METADATA)
        if not given:
            return "it has no signature"
        if not hmac.compare_digest(given, self.signature(key, sha256_hex)):
            return "its signature does not match its bytes"
        return None

    def check(self, key: str, sha256_hex: str, metadata: dict[str, str]) -> None:
        """Raise IntegrityError unless a worker wrote these bytes at this key."""
        why = self.problem(key, sha256_hex, metadata)
        if why is not None:
            raise IntegrityError(
                f"{key}: not written by a Sluice stage ({why}); refusing to act on it. Only workers holding the "
                "signing key write under " + ", ".join(SIGNED_PREFIXES) + ". If a worker did write it, the "
                "reader's SLUICE_SIGNING_KEY differs from the workers'; otherwise find out who wrote it (the "
                "bucket's version history, CloudTrail), restore or delete it, then re-drive (`sluice refused`).")
