"""One tree of errors. Each says what went wrong and what to do next.

    SluiceError
    ├── InputError            bad input: quarantined with a report, never retried
    │   ├── ContractMissing   no contract for the dataset
    │   ├── ContractBroken    the dataset's stored contract does not parse (fix it, then re-drop)
    │   ├── UnreadableFile    the bytes are not a table Sluice can read
    │   ├── ValidationFailed  the table breaks the dataset's contract
    │   ├── LimitExceeded     the file would cost more than the contract's `limits` allow (checked before the work)
    │   └── UnknownExtension  the contract names a check, feature function or learner the running app lacks
    ├── ContractError         a contract file is malformed (raised at `sluice contract put`)
    ├── ConfigError           a setting from the environment is unusable (names the variable and how to fix it)
    ├── AppError              an app's registration or a handler's result is wrong (a programming error: fix the app)
    ├── RegistryError         a lifecycle command that the registry refuses (says which command would work)
    ├── IntegrityError        stored bytes are not what Sluice recorded (never retried, never loaded)
    ├── ModelInputError       rows handed to a loaded model that it cannot score at all (names what is wrong)
    ├── WorkerKilled          the same delivery of a stage's message killed its worker again and again (dead-lettered)
    ├── TransientError        a fault worth retrying (the worker retries it with backoff)
    └── Defer                 not a fault: run the stage again after a delay (e.g. to coalesce drops)
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

CLIP_BYTES = 200


def clip(value: Any, limit: int = CLIP_BYTES) -> str:
    """`value` as text, short enough for a message, report, ledger entry or log line: a long value becomes its
    first bytes plus its length and sha256, so it can still be found."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    raw = text.encode("utf-8", "replace")
    head = raw[: limit // 2].decode("utf-8", "ignore")
    return f"{head}… ({len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()[:16]})"


# Control characters (but newline and tab) and the bidirectional overrides, as visible escapes: a file name or a
# cell value is the producer's text, and printed raw it could drive the operator's terminal (retitle it, erase
# lines, move the cursor) or reorder what a line appears to say.
_UNPRINTABLE = {cp: f"\\x{cp:02x}" for cp in [*range(0x00, 0x20), *range(0x7f, 0xa0)] if cp not in (0x09, 0x0a)}
_UNPRINTABLE |= {cp: f"\\u{cp:04x}" for cp in [*range(0x202a, 0x202f), *range(0x2066, 0x206a)]}


def printable(text: str) -> str:
    """`text` safe to print on a terminal: control characters and bidi overrides become visible escapes."""
    return text.translate(_UNPRINTABLE)


class SluiceError(Exception):
    """Base of every error Sluice raises on purpose."""


@dataclass
class Failure:
    """One broken rule: where, which rule, and the value that broke it."""

    column: str | None
    check: str
    row: int | None = None
    value: Any = None
    count: int = 1

    def describe(self) -> str:
        """One line a person can act on."""
        where = f"column {self.column!r}" if self.column else "the file"
        row = f", row {self.row}" if self.row is not None else ""
        value = f": got {clip(repr(self.value))}" if self.value is not None else ""
        more = f" ({self.count} rows)" if self.count > 1 else ""
        return f"{where}{row} breaks {self.check}{value}{more}"


class InputError(SluiceError):
    """The dropped object itself is wrong. Retrying cannot help, so it is quarantined."""

    reason = "invalid-input"

    def __init__(self, message: str, *, hint: str = "", failures: list[Failure] | None = None,
                 details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.failures = failures or []
        # Filled in by the stage that knows them: the data version of the bytes, row counts, etc.
        self.data_version: str | None = None
        self.details: dict[str, Any] = details or {}

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class ContractMissing(InputError):
    """The dataset has no contract in the bucket."""

    reason = "no-contract"


class ContractBroken(InputError):
    """The dataset's contract in the bucket is malformed: every drop is quarantined until it is fixed."""

    reason = "broken-contract"


class UnreadableFile(InputError):
    """The object is not a CSV or Parquet table Sluice can read."""

    reason = "unreadable"


class ValidationFailed(InputError):
    """The table does not satisfy the dataset's contract."""

    reason = "contract-violation"


class LimitExceeded(InputError):
    """The file is over one of the contract's limits (size, compression ratio, rows, columns, cell or header bytes)."""

    reason = "limit-exceeded"


class UnknownExtension(InputError):
    """The contract names a check, feature function or learner that the running app does not register: the drop is
    quarantined with what is registered and how to register it, and can be replayed once the app has it."""

    reason = "unknown-extension"


class ContractError(SluiceError):
    """A contract document is malformed."""


class ConfigError(SluiceError):
    """A setting from the environment that Sluice cannot use (e.g. a too-short SLUICE_SIGNING_KEY): the command or
    worker stops at once with what to set."""


class AppError(SluiceError):
    """A mistake in the user's app: a registration (unknown option, clash, overlap, a learner without a non-pickle
    format) or what a handler returned. Raised at registration where possible; never retried."""


class RegistryError(SluiceError):
    """A registry operation that is not allowed in the model's current state."""


class IntegrityError(SluiceError):
    """Stored bytes do not match the sha256 Sluice recorded, or a stored document is not one Sluice wrote.
    Retrying cannot help: an operator restores the object (or finds out who changed it)."""


class ModelInputError(SluiceError):
    """Input a loaded model cannot take at all (an unknown format, a file that is not a table)."""


class WorkerKilled(SluiceError):
    """A stage's message began several times and never ended: each time its worker died (out of memory, a crash in
    a native library, kill -9). Running it again would kill the next worker; it is dead-lettered instead."""


@dataclass
class TransientError(SluiceError):
    """A fault that may pass: the worker retries it with exponential backoff."""

    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


class Defer(SluiceError):
    """Run this stage again after `delay_s`; the runtime turns it into a Dramatiq Retry, not logged as an error."""

    def __init__(self, delay_s: float, why: str = ""):
        super().__init__(why or f"deferred by {delay_s:.1f}s")
        self.delay_s = delay_s


# Example failures kept per (column, rule) in a quarantine report.
EXAMPLES_PER_RULE = 5


def summarize(failures: list[Failure]) -> list[Failure]:
    """One failure per (column, rule), most frequent first: the first example, with how many times it broke."""
    counts = Counter((f.column, f.check) for f in failures)
    first: dict[tuple[str | None, str], Failure] = {}
    for f in failures:
        first.setdefault((f.column, f.check), f)
    return [Failure(column, check, first[(column, check)].row, first[(column, check)].value, count=n)
            for (column, check), n in counts.most_common()]


def examples(failures: list[Failure]) -> list[dict[str, Any]]:
    """Up to a few example failures per rule, JSON-safe, for the quarantine report."""
    per_rule: Counter[tuple[str | None, str]] = Counter()
    out: list[dict[str, Any]] = []
    for f in failures:
        k = (f.column, f.check)
        if per_rule[k] < EXAMPLES_PER_RULE:
            per_rule[k] += 1
            out.append({"column": f.column, "check": f.check, "row": f.row,
                        "value": None if f.value is None else clip(f.value)})
    return out
