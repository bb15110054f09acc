"""The model registry, in the bucket under `registry/<model>/`.

    candidates/<run>.candidate.json  the benchmark's verdict on a run, before it has a number
    versions/000001.json             one immutable document per version (run, gate, benchmark, artifact, lineage)
    versions/000001.md               its model card
    history/00000001.json            append-only transitions, one object per write, never overwritten
    aliases/champion.json            which version serves, since when, and the one before it
    aliases/challenger.json          the version waiting for a decision (absent when there is none)

Lifecycle of a version: candidate -> challenger -> champion -> archived, or rejected. Every transition is recorded
in the history: what changed, what caused it, who made it and why, and what the aliases were after it. A
registration's transitions (registered, the gate's verdict, a promotion) share one record, which says their net
effect, lists them in `steps`, and holds the version document it registers (`version_document`), so that a write
appends once and the document is written after it; records of the format before, one per transition, read the
same. The history is the truth; the version documents, the alias objects and the index are written from it.

The history is tamper-evident: each record carries `prev`, the sha256 of the record before it (a hash chain), and a
registration's record carries the sha256 of the version document it registered; every object here is signed by the
stage that wrote it (core/provenance.py). `verify` checks all of it, and the artifacts against the versions.

Every write runs under a per-model lock, each version document and history record is created with a
conditional write (If-None-Match), so concurrent writers can neither lose nor reuse a number.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from bisect import bisect_right
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from sluice.core.errors import IntegrityError, RegistryError, SluiceError, TransientError
from sluice.core.ports import ObjectStore, StateBackend
from sluice.ml.registry_index import FORMAT, PAGE, READABLE, Index, digest, empty_head, registers

log = logging.getLogger("sluice")
_T = TypeVar("_T")
_A = TypeVar("_A")

LOCK_TIMEOUT_S = 60
# How long the note that a head's writes all landed lives: a model written less often pays one repair (a few
# requests) on its next write.
SETTLED_TTL_S = 7 * 24 * 3600
CHAMPION = "champion"
CHALLENGER = "challenger"
CANDIDATE = "candidate"
ARCHIVED = "archived"
REJECTED = "rejected"
# The lifecycle; `None` is "not registered yet".
ALLOWED = {
    (None, CANDIDATE),
    (CANDIDATE, CHALLENGER), (CANDIDATE, REJECTED), (CANDIDATE, ARCHIVED),
    (CHALLENGER, CHAMPION), (CHALLENGER, ARCHIVED), (CHALLENGER, REJECTED),
    (CHAMPION, ARCHIVED),
    (ARCHIVED, CHAMPION),  # rollback, or a manual promotion of an earlier version
    (REJECTED, CHAMPION),  # only with --force
    (REJECTED, ARCHIVED),
}
# Gate outcomes, as recorded in a version's `decision` (see ml/gate.py).
PROMOTE, REJECT, INSUFFICIENT = "promote", "reject", "insufficient_evidence"
AUTOMATIC = "sluice"
RESCORED = "rescored"  # a history action that changes no stage: corrected gate scores of a version


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC."""
    try:
        t = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError as exc:
        raise RegistryError(f"{text!r} is not an ISO 8601 time; use e.g. 2026-01-31T12:00:00Z") from exc
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def chain_problems(records: list[dict[str, Any]], first: int = 1) -> list[str]:
    """Where a history (sorted by sequence, starting at record `first`) is not one unbroken chain: gaps, and
    records not following the last. A window that starts after record 1 cannot check its first record's link."""
    problems = []
    for i, record in enumerate(records):
        sequence = int(record["sequence"])
        if sequence != i + first:
            after = "first" if i == 0 else f"after record {records[i - 1]['sequence']}"
            problems.append(f"history record {i + first} is missing (deleted?): record {sequence} comes {after}")
            break
        if i == 0 and first > 1:
            continue
        expected = digest(records[i - 1]) if i else None
        if "prev" in record and record["prev"] != expected:
            problems.append(f"history record {sequence} does not follow record {sequence - 1}: one of them was "
                            "edited, or it was forged")
    return problems


@dataclass
class Snapshot:
    """The registry state after a prefix of the history."""

    stages: dict[int, str] = field(default_factory=dict)
    champion: int | None = None
    challenger: int | None = None
    champions: list[int] = field(default_factory=list)  # promotions push, rollbacks pop
    records: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, record: dict[str, Any]) -> None:
        """Fold one history record in."""
        for change in record["changes"]:
            self.stages[change["version"]] = change["to"]
        if record["action"] == "promoted":
            self.champions.append(record["version"])
        elif record["action"] == "rolled_back":
            self.champions.pop()
        self.champion, self.challenger = record["champion"], record["challenger"]
        self.records.append(record)

    @property
    def next_sequence(self) -> int:
        """The number the next history record gets."""
        return self.records[-1]["sequence"] + 1 if self.records else 1

    def since(self, version: int | None) -> str | None:
        """When `version` last became champion."""
        for r in reversed(self.records):
            if r["champion"] == version and r["previous_champion"] != version:
                return str(r["at"])
        return None


@dataclass
class Registration:
    """What `register` did: the version, whether this call created it, and the gate's history record."""

    version: dict[str, Any]
    created: bool
    record: dict[str, Any]


REGISTRY_THREADS = 8  # one pool per process (infra/aws.py sizes the S3 client's connections to it)
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The threads that issue a registry operation's independent requests at once (shared: one per process)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=REGISTRY_THREADS, thread_name_prefix="sluice-registry")
        return _POOL


def _at_once(fn: Callable[[_A], _T], items: Sequence[_A]) -> list[_T]:
    """`fn` of each item at once, in order: the first in the calling thread (which would only wait), the others
    in the pool; the first exception is raised once all have ended."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    futures = [_pool().submit(fn, item) for item in items[1:]]
    try:
        first = fn(items[0])
    finally:
        wait(futures)  # none is left in flight when this returns or raises (the caller may release its lock)
    return [first, *(f.result() for f in futures)]


# What every transition says; anything else a step carries (the version's digest, the gate's reasons, the trace)
# is copied to the top of a record of several steps.
_STEP_FIELDS = ("action", "version", "changes", "cause", "reason", "previous_champion", "champion", "challenger")
_KEEP: Any = object()


class _Steps:
    """The transitions one write decides, in order, each checked against the lifecycle on the state the ones
    before it left; recorded as one history record (ModelRegistry._commit)."""

    def __init__(self, model: str, snap: Index):
        self.model = model
        self.snap = snap
        self.stages: dict[int, str] = {}
        self.champion: int | None = snap.champion
        self.challenger: int | None = snap.challenger
        self.steps: list[dict[str, Any]] = []

    def stage(self, number: int) -> str | None:
        """A version's stage after the steps so far."""
        return self.stages[number] if number in self.stages else self.snap.stage(number)

    def add(self, action: str, number: int, changes: dict[int, str], *, cause: str, reason: str,
            champion: Any = _KEEP, challenger: Any = _KEEP, **extra: Any) -> None:
        """One transition (RegistryError when the lifecycle does not allow it)."""
        for v, to in changes.items():
            if (self.stage(v), to) not in ALLOWED:
                raise RegistryError(f"{self.model} v{v} cannot go from {self.stage(v) or 'unregistered'} to {to}")
        step = {"action": action, "version": number,
                "changes": [{"version": v, "from": self.stage(v), "to": to} for v, to in changes.items()],
                "cause": cause, "reason": reason, "previous_champion": self.champion,
                "champion": self.champion if champion is _KEEP else champion,
                "challenger": self.challenger if challenger is _KEEP else challenger, **extra}
        self.stages.update(changes)
        self.champion, self.challenger = step["champion"], step["challenger"]
        self.steps.append(step)

    def net(self) -> list[dict[str, Any]]:
        """The stages the steps changed: from before the first, to after the last."""
        touched = dict.fromkeys(c["version"] for step in self.steps for c in step["changes"])
        return [{"version": v, "from": self.snap.stage(v), "to": self.stages[v]} for v in touched
                if self.snap.stage(v) != self.stages[v]]


def _compact(doc: dict[str, Any]) -> bytes:
    """An index document as stored: sorted keys, no indentation."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()


def _compact_sha(doc: dict[str, Any]) -> str:
    """The sha256 of an index document as stored (a head read back gives the same bytes)."""
    return hashlib.sha256(_compact(doc)).hexdigest()


class _Stale(Exception):
    """The index did not cover the newest history record: fold it in and decide again."""


class ModelRegistry:
    """Versions, aliases and history of models.

    Reads and writes go through the index (ml/registry_index.py): a fixed number of requests whatever the length
    of the history. `history`, `snapshot` and `verify` still read the whole history, and check it as a chain.
    """

    def __init__(self, store: ObjectStore, state: StateBackend):
        self.store = store
        self.state = state
        # Version documents and history records are immutable, so caching them by key is always correct.
        self._cache: dict[str, dict[str, Any]] = {}

    @staticmethod
    def base(model: str) -> str:
        """The model's prefix."""
        return f"registry/{model}"

    def card_key(self, model: str, number: int) -> str:
        """Where a version's model card lives."""
        return f"{self.base(model)}/versions/{number:06d}.md"

    def _version_key(self, model: str, number: int) -> str:
        return f"{self.base(model)}/versions/{number:06d}.json"

    def history_key(self, model: str, sequence: int) -> str:
        """Where history record `sequence` of `model` lives."""
        return f"{self.base(model)}/history/{sequence:08d}.json"

    def _immutable(self, key: str) -> dict[str, Any] | None:
        doc = self._cache.get(key)
        if doc is None:
            doc = self.store.get_json_or_none(key)
            if doc is not None:
                self._cache[key] = doc
        return doc

    def _fetch(self, keys: list[str], present: tuple[str, ...] = ()) -> dict[str, Any]:
        """Several documents at once (None when absent, the exception when a read failed); of the keys in
        `present`, only whether they exist (a HEAD: an object that is usually absent costs less to ask about than
        to GET, on S3 and on moto alike, whose missing-key GET is an error response to build and parse)."""
        def one(key: str) -> Any:
            try:
                return self.store.exists(key) if key in present else self.store.get_json_or_none(key)
            except Exception as exc:  # handed back, so the caller decides which failures matter
                return exc

        unique = list(dict.fromkeys([*keys, *present]))
        if len(unique) <= 1:
            return {k: one(k) for k in unique}
        return dict(zip(unique, _at_once(one, unique), strict=True))

    def version_numbers(self, model: str) -> list[int]:
        """All version numbers, ascending (a listing of every version: prefer `current(model).head['versions']`).
        A key no stage would write (`versions/evil.json`) is no version: `models verify` names it."""
        prefix = f"{self.base(model)}/versions/"
        names = (k[len(prefix):].removesuffix(".json") for k in self.store.keys(prefix) if k.endswith(".json"))
        return sorted(int(n) for n in names if n.isascii() and n.isdigit())

    def version(self, model: str, number: int) -> dict[str, Any] | None:
        """One version document: one GET. A version registered by a writer that died before writing its document
        (or being written now, by a writer whose alias went first) is read from the index, which folds it in from
        the history record that registered it."""
        found = self._immutable(self._version_key(model, number))
        if found is None and number >= 1:
            found = self.current(model).doc(number)
            if found is not None and int(found.get("version", 0)) != number:
                found = None
        return found

    def versions(self, model: str) -> list[dict[str, Any]]:
        """Every version document written, ascending (one request each: prefer `page`)."""
        return self._stored_versions(model)

    def _stored_versions(self, model: str) -> list[dict[str, Any]]:
        return [v for n in self.version_numbers(model)
                if (v := self._immutable(self._version_key(model, n))) is not None]

    def alias(self, model: str, name: str = CHAMPION) -> dict[str, Any] | None:
        """The alias ({version, since, previous}) as the signed index says it, or None: the head, then the look
        for a newer history record (two rounds, whatever the history's length).

        Not the alias file alone. An alias file from an earlier state, signed by the stage that wrote it then and
        copied back by someone with write access to the bucket, verifies: trusted, it rolled back every reader (the
        gate judged candidates against the old champion, `sluice serve` swapped to it, validation measured drift
        against it), and no later registration repaired it. A head copied back is found by the look for a newer
        record. `alias_file` reads the file (one GET); `sluice models verify` reports a file that disagrees with
        the index and `sluice models reindex` rewrites it."""
        return self.current(model).alias_docs().get(name)

    def alias_file(self, model: str, name: str = CHAMPION) -> dict[str, Any] | None:
        """aliases/<name>.json as stored, or None: one GET. A file no stage signed (planted, edited) is not acted
        on: the alias is read from the index instead. Only for comparing with the index: see `alias`."""
        try:
            doc: dict[str, Any] | None = self.store.get_json_or_none(f"{self.base(model)}/aliases/{name}.json")
        except IntegrityError as exc:
            log.warning("%s; reading the %s of %s from its index instead (`sluice models reindex %s` rewrites the "
                        "alias)", exc, name, model, model)
            return self.current(model).alias_docs().get(name)
        return doc

    def champion(self, model: str) -> dict[str, Any] | None:
        """The champion's version document."""
        alias = self.alias(model)
        return self.version(model, int(alias["version"])) if alias else None

    def known(self, model: str) -> bool:
        """True when the model has an index or any version."""
        if self.store.exists(Index.head_key(model)):  # a head that fails its signature still names a model
            return True
        return next(iter(self.store.keys(f"{self.base(model)}/versions/")), None) is not None

    def history(self, model: str) -> list[dict[str, Any]]:
        """Every recorded transition, oldest first (reads the whole history and checks the chain)."""
        docs = [d for k in self.store.keys(f"{self.base(model)}/history/") if (d := self._immutable(k)) is not None]
        docs.sort(key=lambda d: int(d["sequence"]))
        problems = chain_problems(docs)
        if problems:
            raise IntegrityError(f"the registry history of {model} is broken: {'; '.join(problems)}. Nothing acts on "
                                 f"it until it is restored; `sluice models verify {model}` lists every problem.")
        return docs

    def history_tail(self, model: str, last: int, idx: Index | None = None) -> tuple[list[dict[str, Any]], int]:
        """The newest `last` history records, oldest first, and how many there are in all: `last` reads in one
        round, whatever the history's length. Each record's signature is checked, the window must be one unbroken
        chain, and its newest record must be the one the signed index head names (`models verify` checks all).
        `idx`: the current index when the caller has just read it (saves reading it again)."""
        idx = self.current(model) if idx is None else idx
        total = idx.sequence
        first = max(1, total - last + 1)
        wanted = [self.history_key(model, s) for s in range(first, total + 1)]
        found = self._fetch(wanted)
        docs = []
        for key in wanted:
            doc = found[key]
            if isinstance(doc, Exception):
                raise doc
            if doc is None:
                raise IntegrityError(f"{key}: the history record is gone (deleted?); `sluice models verify {model}` "
                                     "lists every problem")
            self._cache[key] = doc
            docs.append(doc)
        problems = chain_problems(docs, first)
        if problems:
            raise IntegrityError(f"the registry history of {model} is broken: {'; '.join(problems)}. "
                                 f"`sluice models verify {model}` lists every problem.")
        if docs and idx.head.get("digest") not in (None, digest(docs[-1])):
            raise IntegrityError(f"the registry history of {model}: record {docs[-1]['sequence']} is not the one its "
                                 f"index recorded; `sluice models verify {model}` lists every problem")
        return docs, total

    def snapshot(self, model: str) -> Snapshot:
        """The current state, folded from the whole history (the index's reference: see `current` for the cheap one)."""
        snap = Snapshot()
        for record in self.history(model):
            snap.apply(record)
        return snap

    # -- the index --------------------------------------------------------------------------------------------
    def current(self, model: str) -> Index:
        """The current state from the index: the head, the newest history records it does not cover yet folded in."""
        return self._load(model, write=False)[0]

    def _load(self, model: str, *, write: bool, pages: Callable[[Index], list[str]] | None = None,
              extra: tuple[str, ...] = (), present: tuple[str, ...] = (),
              probe: bool = True) -> tuple[Index, dict[str, Any]]:
        """The index (rebuilt when missing or refused), with `pages` of it, and the `extra` documents read in the
        same round as the head (for the keys in `present`, whether they exist: True or False). Then, in one round
        of parallel requests, the pages and (with `probe`) the check for a history record newer than the head (a
        HEAD; the record is read when there is one); a writer's load also reads the pages of hot entries that the
        head's tail lacks (none once the tail holds them)."""
        head_key = Index.head_key(model)
        first = self._fetch([head_key, *extra], present)
        head = first[head_key]
        if isinstance(head, IntegrityError):
            log.warning("%s; rebuilding the index of %s from its history", head, model)
            head = None
        elif isinstance(head, Exception):
            raise head
        for key in (*extra, *present):
            if isinstance(first[key], Exception):
                raise first[key]
        extras = {k: first[k] for k in (*extra, *present)}
        if head is None or head.get("format") not in READABLE or head.get("model") != model:
            return self._rebuild(model), extras
        idx = Index(self.store, model, head)
        if write:
            idx.stored = _compact_sha(head)
        wanted = list(dict.fromkeys([*(pages(idx) if pages else []), *(idx.missing(idx.hot()) if write else [])]))
        probe_key = self.history_key(model, idx.next_sequence)
        # The look for a newer record asks only whether it exists (it almost never does); it is read when it does.
        found = self._fetch(wanted, (probe_key,) if probe else ())
        for key in wanted:
            if isinstance(found[key], IntegrityError):
                log.warning("%s; rebuilding the index of %s from its history", found[key], model)
                return self._rebuild(model), extras
            if isinstance(found[key], Exception):
                raise found[key]
            idx.preload(key, found[key])
        if probe:
            idx.probed = True
            if isinstance(found[probe_key], Exception):
                raise found[probe_key]  # a newer record that no stage wrote: refused, like any forged document
            if found[probe_key]:
                self._fold(idx, self.store.get_json_or_none(probe_key), write=write)
        return idx, extras

    def _behind(self, idx: Index) -> bool:
        """True when a history record newer than the index exists (its writer died before the head)."""
        return self.store.exists(self.history_key(idx.model, idx.next_sequence))

    def _fold(self, idx: Index, record: dict[str, Any] | None, *, write: bool) -> None:
        """Fold in the history records after the index's last one (a writer died before writing the index)."""
        model = idx.model
        while record is not None:
            if int(record["sequence"]) != idx.next_sequence or ("prev" in record
                                                                 and record["prev"] != idx.head["digest"]):
                raise IntegrityError(
                    f"the registry history of {model} is broken: record {record['sequence']} does not follow "
                    f"record {idx.sequence} as the index recorded it. Nothing acts on it until it is restored; "
                    f"`sluice models verify {model}` lists every problem.")
            key = self.history_key(model, idx.next_sequence)
            self._cache[key] = record
            if isinstance(record.get("version_document"), dict):
                # The history holds the document: indexed for readers too, and written again by a writer (its
                # writer may have died before writing it).
                idx.set_doc(record["version_document"])
                if write:
                    idx.restore.append(record["version_document"])
            elif write and registers(record):
                version = self._immutable(self._version_key(model, int(record["version"])))
                if version is not None:
                    idx.set_doc(version)
            idx.apply(record)
            idx.folded = True
            record = self.store.get_json_or_none(self.history_key(model, idx.next_sequence))

    def _rebuild(self, model: str) -> Index:
        """The index folded from the whole history (checked as a chain) and every version document that a stage
        signed and the history's registration matches; any other is left out and named in `idx.skipped` (one
        planted version document must not stop every registration and every reader of the model). A registration
        whose record holds its document indexes that one (and writes it when its file is missing)."""
        idx = Index(self.store, model, empty_head(model), fresh=True)
        history = self.history(model)
        versions: dict[int, dict[str, Any]] = {}
        present: set[int] = set()
        for number in self.version_numbers(model):
            key = self._version_key(model, number)
            present.add(number)
            try:
                version = self._immutable(key)
            except IntegrityError as exc:
                idx.skipped.append(str(exc).split("; ", 1)[0])
                continue
            if version is not None and version.get("version") == number:
                versions[number] = version
            elif version is not None:
                idx.skipped.append(f"{key}: says it is v{version.get('version')}")
        for record in history:
            number = int(record["version"]) if registers(record) else 0
            if number in versions and "document" in record and record["document"] != digest(versions[number]):
                idx.skipped.append(f"{self._version_key(model, number)}: v{number} was edited after history "
                                   f"record {record['sequence']} registered it")
                del versions[number]
            held = record.get("version_document") if number else None
            if (number not in versions and isinstance(held, dict) and held.get("version") == number
                    and record.get("document") == digest(held)):
                versions[number] = held  # the history holds the document it registered
                if number not in present:
                    idx.restore.append(held)  # its writer died before writing it
            if number in versions:
                idx.set_doc(versions[number])
            idx.apply(record)
        for version in versions.values():
            if idx.doc(int(version["version"])) is None:
                idx.set_doc(version)  # created by a writer that died before registering it
        for problem in idx.skipped:
            log.warning("%s; left out of the index of %s (`sluice models verify %s` lists every problem; restore "
                        "the version from the bucket's version history, or delete it, then `sluice models reindex "
                        "%s`)", problem, model, model, model)
        idx.rebuilt = idx.probed = True
        return idx

    def reindex(self, model: str) -> Index:
        """Rebuild the index of `model` from its whole history, under the model's lock."""
        with self.state.lock(f"registry:{model}", LOCK_TIMEOUT_S):
            self.state.take_note(self._settled_key(model))
            idx = self._rebuild(model)
            self._flush(idx, None, settled=None)
            self._settle(idx)
            return idx

    def _write(self, model: str, op: Callable[[Index, dict[str, Any]], _T], *, versions: tuple[int, ...] = (),
               extra: tuple[str, ...] = (), present: tuple[str, ...] = ()) -> _T:
        """Run a write under the model's lock on the current index, then write the index (the head last).

        The head and the `extra` documents are read in one round (with whether the keys in `present` exist). A
        writer does not look for a history record newer than the head first: its own first record is created with
        If-None-Match at the head's next number, which fails when one exists (then the newer records are folded
        in and the write decided again). A write that appends nothing, or fails, looks for one before it returns
        (a decision on a stale head). Nothing is written before a write's record: a registration's version
        document comes after the record that registers it (and holds it), with the aliases and the head (see
        _flush for what a writer killed among those leaves, and how the next one repairs it)."""
        def targets(idx: Index) -> list[str]:
            return idx.missing(("stages", n - 1) for n in versions)

        probe = False
        with self.state.lock(f"registry:{model}", LOCK_TIMEOUT_S):
            # Taken (read and removed) at once: a writer that dies from here on leaves none.
            settled = self.state.take_note(self._settled_key(model))
            for _ in range(3):
                idx, found = self._load(model, write=True, pages=targets, extra=extra, present=present,
                                        probe=probe)
                for key, doc in found.items():
                    if "/versions/" in key and isinstance(doc, dict):
                        self._cache[key] = doc  # immutable
                # What the aliases say when the head is current (written before it): after a fold, all rewritten.
                before = None if idx.folded or idx.rebuilt else idx.alias_docs()
                try:
                    result = op(idx, found)
                except _Stale:
                    probe = True
                    continue  # someone's record is newer than the index: fold it in and decide again
                except Exception:
                    if not idx.appended and not idx.probed and self._behind(idx):
                        probe = True
                        continue
                    if not idx.appended and settled is not None:
                        self.state.note(self._settled_key(model), settled, SETTLED_TTL_S)  # nothing written
                    raise
                if not idx.appended and not idx.probed and self._behind(idx):
                    probe = True
                    continue
                self._flush(idx, before, settled=settled)
                self._settle(idx)
                return result
            raise TransientError(f"the registry history of {model} keeps changing under its lock; retrying")

    def _settled_key(self, model: str) -> str:
        """Where the note on the model's head is kept (the bucket in it: one Redis may serve several)."""
        return "registry-settled:" + self.store.uri(Index.head_key(model))

    def _settle(self, idx: Index) -> None:
        """Note, for the next holder of the lock, that every write the stored head lists as `pending` landed."""
        if idx.stored is not None:
            self.state.note(self._settled_key(idx.model), idx.stored, SETTLED_TTL_S)

    def _flush(self, idx: Index, aliases_before: dict[str, Any] | None, *, settled: str | None) -> None:
        """Write the changed pages, run pointers, the aliases that differ from `aliases_before` (None: all of
        them) and the version documents to write, and the head.

        The head carries the entries written since the pages were (its tail), run pointers too; when the tail has
        grown, its entries move into their pages (read first, one round) and pointers, written before the head.
        A write that moves no entry into a page (most: see TAIL) writes the head at once with the aliases and the
        version documents, one round instead of two, and the head lists those as `pending`: it may land while
        they do not (the writer killed, or a request failing). The next writer rewrites the pending aliases and
        writes the pending version documents that are missing (from the head's copies), unless the note in the
        state backend (`settled`, taken with the lock) says that this very head's writes all landed: a writer
        leaves it after its own writes succeeded (`_settle`). No note (a writer died, a Redis restarted, a CLI
        process with the in-memory state) costs a repair, never a missed one. Readers need no note: an alias
        behind the head is an alias behind the history, which a writer killed after the history record leaves
        too (the alias is a cache; `verify` reports it until the next write), and a version document not
        written yet is read from the head's copy (ModelRegistry.version)."""
        model = idx.model
        # A head written now lists its own pending writes (one not rewritten keeps its list: settled, or repaired
        # below and then noted as settled).
        pending = idx.head.pop("pending", None) or {}
        repair = idx.stored is not None and settled != idx.stored
        idx.keep_hot()
        if idx.spilling():
            found = self._fetch([k for k in idx.spill_pages() if k not in idx.pages])
            if any(isinstance(doc, IntegrityError) for doc in found.values()):
                # A page no stage wrote would be merged and re-signed: rebuild from the history (which holds
                # this write's records already) and write the whole index instead.
                log.warning("an index page of %s fails its signature; rebuilding the index from its history", model)
                rebuilt = self._rebuild(model)
                rebuilt.runs.update(idx.runs)
                idx, aliases_before = rebuilt, None
            else:
                for key, doc in found.items():
                    if isinstance(doc, Exception):
                        raise doc
                    idx.preload(key, doc)
                idx.spill()
        writes: list[tuple[str, dict[str, Any] | None]] = [(k, idx.page_doc(k)) for k in sorted(idx.dirty)]
        writes += self._pointers(idx)
        before_head = bool(writes)  # pages and pointers the head relies on land before it
        restores, idx.restore = [*idx.created, *idx.restore], []
        required = len(idx.created)
        idx.created = []
        if repair and not idx.rebuilt:  # a rebuild rewrites the aliases and writes the missing documents anyway
            written = {int(v["version"]) for v in restores}
            for number in pending.get("versions", []):
                doc = idx.doc(int(number)) if int(number) not in written else None
                if doc is not None and int(doc.get("version", 0)) == int(number):
                    restores.append(doc)  # required=False: a role that cannot write versions/ goes on without
        forced = set(pending.get("aliases", [])) if repair and not idx.rebuilt else set()
        names = []
        for name, doc in idx.alias_docs().items():
            if aliases_before is None or name in forced or aliases_before.get(name) != doc:
                writes.append((self._alias_key(model, name), doc))
                names.append(name)
        calls = [partial(self._restore, model, v, required=i < required) for i, v in enumerate(restores)]
        head = idx.head_dirty or idx.rebuilt
        if head:
            idx.head["format"] = FORMAT  # a format-2 head read is written as 3: code that ignores tails rebuilds
            if not before_head and (names or restores):
                idx.head["pending"] = {"aliases": names, "versions": [int(v["version"]) for v in restores]}
        if head and not before_head:
            self._put_all([*writes, (Index.head_key(model), idx.head)], calls)
        else:
            self._put_all(writes, calls)
            if head:
                self._put_all([(Index.head_key(model), idx.head)])
        if head:
            idx.stored = _compact_sha(idx.head)
        idx.dirty.clear()

    def _alias_key(self, model: str, name: str) -> str:
        return f"{self.base(model)}/aliases/{name}.json"

    def _pointers(self, idx: Index) -> list[tuple[str, dict[str, Any] | None]]:
        """The run pointers not written yet (taken: the caller writes them)."""
        found: list[tuple[str, dict[str, Any] | None]] = [
            (Index.run_key(idx.model, run), {"run_id": run, "version": n}) for run, n in idx.runs.items()]
        idx.runs.clear()
        return found

    def _put_all(self, writes: list[tuple[str, dict[str, Any] | None]],
                 calls: Sequence[Callable[[], None]] = ()) -> None:
        """Write (or, for None, delete) documents at once, an index document compact, and make `calls` with them."""
        def write(item: tuple[str, dict[str, Any] | None] | Callable[[], None]) -> None:
            if callable(item):
                item()
                return
            key, doc = item
            if doc is None:
                self.store.delete(key)
            elif "/index/" in key:
                self._put_compact(key, doc)
            else:
                self.store.put_json(key, doc)

        items: list[tuple[str, dict[str, Any] | None] | Callable[[], None]] = [*writes, *calls]
        _at_once(write, items)

    def _put_compact(self, key: str, doc: dict[str, Any]) -> None:
        """An index document without indentation: pages of 1,000 entries are read and rewritten often."""
        self.store.put(key, _compact(doc), content_type="application/json")

    def _record(self, model: str, sequence: int) -> dict[str, Any]:
        record = self._immutable(self.history_key(model, sequence))
        if record is None:
            raise IntegrityError(f"history record {sequence} of {model} is gone; `sluice models verify {model}`")
        return record

    # -- reads ------------------------------------------------------------------------------------------------
    def page(self, model: str, page: int = 1, limit: int = 20) -> dict[str, Any]:
        """One page of versions, newest first, with their stages and the aliases: a few requests at any length."""
        if page < 1 or limit < 1:
            raise RegistryError("--page and --limit start at 1")

        def pages(idx: Index) -> list[str]:
            hi = int(idx.head["versions"]) - (page - 1) * limit
            numbers = range(max(1, hi - limit + 1), hi + 1)
            return idx.missing((kind, n - 1) for n in numbers for kind in ("stages", "docs"))

        idx, _ = self._load(model, write=False, pages=pages)
        total = int(idx.head["versions"])
        hi = total - (page - 1) * limit
        numbers = list(range(hi, max(0, hi - limit), -1))
        missing = [n for n in numbers if idx.doc(n) is None]
        found = self._fetch([self._version_key(model, n) for n in missing])
        docs = []
        for n in numbers:
            doc = idx.doc(n) or found.get(self._version_key(model, n))
            if isinstance(doc, Exception):
                raise doc
            if doc is not None:
                docs.append(doc)
        return {"model": model, "page": page, "limit": limit, "total": total,
                "pages": max(1, -(-total // limit)), "champion": idx.champion, "challenger": idx.challenger,
                "aliases": idx.alias_docs(), "sequence": idx.sequence,
                "stages": {int(d["version"]): idx.stage(int(d["version"])) for d in docs}, "versions": docs}

    def stage(self, model: str, number: int) -> str | None:
        """A version's lifecycle stage (None: not registered), from the index: the head and at most one page."""
        idx, _ = self._load(model, write=False, pages=lambda i: i.missing([("stages", number - 1)]) if number >= 1
                            else [])
        return idx.stage(number)

    def run_state(self, model: str, run_id: str) -> tuple[dict[str, Any], str | None, dict[str, Any] | None] | None:
        """The version run `run_id` became, its stage now and the history record of the gate's verdict on it (the
        one that registered it, since one record holds a registration), or None: from the index and the run's
        pointer, a few requests at any history length (`sluice trace`)."""
        run_key = Index.run_key(model, run_id)
        idx, found = self._load(model, write=False, extra=(run_key,))
        number = idx.run(run_id)
        pointer = {"version": number} if number is not None else found.get(run_key)
        version = self._run_version(model, run_id, pointer, idx)
        if version is None:
            return None
        n = int(version["version"])
        stage, gate_sequence = idx.entry(n)[:2]
        return version, stage, self._record(model, int(gate_sequence)) if gate_sequence else None

    def indexed_versions(self, model: str) -> tuple[Index, dict[int, dict[str, Any]]]:
        """The index and every version document, from the index's pages (one request per 20 versions, in
        parallel) rather than one per version; a version missing from its page is read on its own."""
        idx, _ = self._load(model, write=False)
        total = int(idx.head["versions"])
        keys = [idx.key("docs", p) for p in range(-(-total // PAGE["docs"]))]
        for key, doc in self._fetch(keys).items():
            if isinstance(doc, Exception):
                raise doc
            idx.preload(key, doc)
        docs = {n: d for n in range(1, total + 1) if (d := idx.doc(n)) is not None}
        missing = [self._version_key(model, n) for n in range(1, total + 1) if n not in docs]
        for doc in self._fetch(missing).values():
            if isinstance(doc, Exception):
                raise doc
            if doc is not None:
                docs[int(doc["version"])] = doc
        return idx, docs

    def champion_at(self, model: str, when: datetime) -> tuple[int | None, dict[str, Any] | None]:
        """Which version was champion at `when`, and the history record that made it so (None before any).

        A bisection in the index's timeline of champion changes (record times never decrease, see _append).
        """
        def page_at(idx: Index) -> list[str]:
            starts = [parse_time(s) for s in idx.head["timeline_starts"]]
            p = bisect_right(starts, when) - 1
            if p < 0:
                return []
            size = PAGE["timeline"]
            return idx.missing(("timeline", i) for i in range(p * size, min((p + 1) * size, idx.head["timeline"])))

        idx, _ = self._load(model, write=False, pages=page_at)
        starts = [parse_time(s) for s in idx.head["timeline_starts"]]
        p = bisect_right(starts, when) - 1
        if p < 0:
            return None, None
        size = PAGE["timeline"]
        entries = idx.entries("timeline", p, min(size, int(idx.head["timeline"]) - p * size))
        i = bisect_right([parse_time(e[0]) for e in entries], when) - 1
        _, sequence, champion = entries[i]
        return champion, self._record(model, int(sequence))

    def models(self) -> list[str]:
        """Names of all registered models."""
        names = {k.split("/")[1] for k in self.store.keys("registry/") if "/versions/" in k}
        return sorted(names)

    # -- writes -----------------------------------------------------------------------------------------------
    def register(self, model: str, doc: dict[str, Any], *, outcome: str, compared_with: int | None, at: str,
                 by: str = AUTOMATIC) -> Registration:
        """Register the run in `doc` as the next version (once per run) and apply the gate's `outcome`.

        Safe to call again after a crash at any point: the run's version is found, and each lifecycle step is
        taken only if the history does not show it yet.
        """
        run_key = Index.run_key(model, str(doc["run_id"]))

        def op(snap: Index, found: dict[str, Any]) -> Registration:
            # In the head's tail (registered since the pointers were last written), or indexed just now (a
            # rebuild, or a registration a dead writer left); else its pointer object, read only when the first
            # round found one (a run registered before: a retry; a new run's pointer does not exist).
            pointer: Any = None
            if (number := snap.run(str(doc["run_id"]))) is not None:
                pointer = {"version": number}
            elif found.get(run_key):
                pointer = self.store.get_json_or_none(run_key)
            existing = self._run_version(model, str(doc["run_id"]), pointer, snap)
            created = existing is None
            if existing is None:
                # The version document is immutable and says what the gate decided against which champion. It is
                # decided on the head, and recorded in the history record that registers it, created with
                # If-None-Match at the head's next number: if that fails, the head was stale, and this is decided
                # again on the newer records. The document itself is written after the record.
                reasons = list(doc.get("reasons", []))
                gate_outcome = outcome
                if outcome == PROMOTE and snap.champion != compared_with:
                    # Another version became champion while this one was benchmarked: no evidence against it.
                    gate_outcome = INSUFFICIENT
                    reasons.append(f"the champion changed (v{compared_with} -> v{snap.champion}) while this candidate "
                                   "was benchmarked, so it was not compared with the current champion; promote it "
                                   "by hand or drop new data to compare again")
                existing = self._new_version(snap, model, {**doc, "reasons": reasons, "compared_with": compared_with},
                                             gate_outcome, at)
            number = existing["version"]
            # The drop that caused the run (core/tracing.py), on every step the gate took; absent before it.
            trace = {"trace_id": existing["trace_id"]} if existing.get("trace_id") else {}
            steps = _Steps(model, snap)
            if steps.stage(number) is None:
                steps.add("registered", number, {number: CANDIDATE}, cause="benchmark",
                          reason=f"run {doc['run_id']} registered", document=digest(existing), **trace)
            if steps.stage(number) == CANDIDATE:
                gate = {"cause": "gate", "reasons": existing.get("reasons", []), **trace}
                if existing["decision"] == REJECT:
                    steps.add("rejected", number, {number: REJECTED}, reason="the gate rejected it", **gate)
                else:
                    changes = {number: CHALLENGER}
                    if steps.challenger is not None:
                        changes[steps.challenger] = ARCHIVED  # one challenger at a time: the newer one replaces it
                    steps.add("challenger", number, changes, challenger=number,
                              reason="the gate found it worth challenging the champion"
                              if existing["decision"] == PROMOTE else "the evidence is not sufficient to decide",
                              **gate)
            if (steps.stage(number) == CHALLENGER and existing["decision"] == PROMOTE
                    and steps.champion == existing.get("compared_with")):
                self._promote(steps, number, cause="gate", reason="the gate promoted it",
                              reasons=existing.get("reasons", []), **trace)
            registers = any(step["action"] == "registered" for step in steps.steps)
            self._commit(model, snap, steps, by=by, at=at, document=existing if registers else None)
            if created or snap.doc(number) is None:
                snap.set_doc(existing)
            if created:
                snap.created.append(existing)  # written with the aliases, before the head
            return Registration(existing, created, self._record(model, int(snap.entry(number)[1])))

        return self._write(model, op, present=(run_key,))

    def _run_version(self, model: str, run_id: str, pointer: Any, snap: Index) -> dict[str, Any] | None:
        """The version a run became, from its pointer (None: not registered yet, or not indexed yet)."""
        if pointer is None:
            return None
        number = int(pointer["version"])
        # The index's copy when the head holds it (a dead writer's document may not be written yet), else the file.
        version = (snap.doc(number) if snap.in_tail("docs", number - 1) else None) or self.version(model, number)
        if version is None or version.get("run_id") != run_id:
            raise IntegrityError(f"{Index.run_key(model, run_id)} points at v{pointer['version']}, which is not run "
                                 f"{run_id}'s version; `sluice models verify {model}`, then `sluice models reindex "
                                 f"{model}`")
        return version

    def promote(self, model: str, number: int, *, reason: str, by: str, at: str,
                force: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
        """Make `number` the champion by hand; a version the gate rejected needs `force`."""
        def op(snap: Index, found: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
            version = self._existing(model, number, snap)
            if snap.champion == number:
                raise RegistryError(f"{model} v{number} is already the champion")
            stage = snap.stage(number)
            refused = version["decision"] == REJECT or stage == CANDIDATE
            if refused and not force:
                why = "; ".join(version.get("reasons", [])) or "it has not been through the gate"
                raise RegistryError(f"the gate did not pass {model} v{number} ({why}). Pass --force to promote it "
                                    "anyway; the history records that you did.")
            cause = "manual, forced past the gate" if refused else "manual"
            steps = _Steps(model, snap)
            self._promote(steps, number, cause=cause, reason=reason)
            record = self._commit(model, snap, steps, by=by, at=at)
            assert record is not None
            return version, record

        return self._write(model, op, versions=(number,), extra=(self._version_key(model, number),))

    def rollback(self, model: str, *, reason: str, by: str, at: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the champion before the current one; the current one is archived."""
        def op(snap: Index, found: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
            target = snap.champions_from_top(1)
            if snap.champion is None or target is None:
                raise RegistryError(f"{model} has no earlier champion to roll back to "
                                    f"(champion: {'v' + str(snap.champion) if snap.champion else 'none'})")
            current = snap.champion
            record = self._append(model, snap, "rolled_back", target, {current: ARCHIVED, target: CHAMPION},
                                  cause="rollback", by=by, reason=reason, at=at, champion=target,
                                  challenger=None if snap.challenger == target else snap.challenger)
            return self._existing(model, target, snap), record

        return self._write(model, op)

    def archive(self, model: str, number: int, *, reason: str, by: str,
                at: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Retire a version that is not the champion."""
        def op(snap: Index, found: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
            version = self._existing(model, number, snap)
            if snap.champion == number:
                raise RegistryError(f"{model} v{number} is the champion; `sluice models rollback {model}` or promote "
                                    "another version first")
            if snap.stage(number) == ARCHIVED:
                raise RegistryError(f"{model} v{number} is already archived")
            record = self._append(model, snap, "archived", number, {number: ARCHIVED}, cause="manual", by=by,
                                  reason=reason, at=at,
                                  challenger=None if snap.challenger == number else snap.challenger)
            return version, record

        return self._write(model, op, versions=(number,), extra=(self._version_key(model, number),))

    def verify(self, model: str, *, artifacts: bool = True) -> list[str]:
        """Every way the stored registry of `model` differs from what Sluice wrote: unsigned or edited documents,
        a broken or shortened history, aliases that disagree with it, versions edited since they were registered,
        artifacts that are not the bytes the versions recorded. Empty when it all holds."""
        base = self.base(model)
        problems: list[str] = []

        def read(key: str) -> dict[str, Any]:
            why = self.store.signature_problem(key)
            if why is not None:
                problems.append(f"{key}: not written by a Sluice stage ({why})")
            try:
                doc = self.store.get_json_unverified(key)
            except ValueError:
                doc = None
            if not isinstance(doc, dict):  # planted bytes are a finding, never a crash of the check
                problems.append(f"{key}: not a JSON document")
                return {}
            return doc

        records = []
        for key in self.store.keys(f"{base}/history/"):
            record = read(key) if key.endswith(".json") else {}
            if isinstance(record.get("sequence"), int):
                records.append(record)
            elif record:
                problems.append(f"{key}: not a history record (no sequence number)")
        records.sort(key=lambda d: int(d["sequence"]))
        problems += chain_problems(records)
        snap = Snapshot()
        try:
            for record in records:
                snap.apply(record)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"history record {record['sequence']}: not a record Sluice writes (field {exc}); "
                            "nothing after it can be checked")
            return problems
        registered = {r["version"]: r for r in records if registers(r)}
        for r in registered.values():
            held = r.get("version_document")
            if held is not None and ("document" not in r or digest(held) != r["document"]):
                problems.append(f"{self.history_key(model, int(r['sequence']))}: the version document it holds is "
                                f"not the one it registered (its sha256 differs)")
        versions = {}
        for key in self.store.keys(f"{base}/versions/"):
            if key.endswith(".json") and (doc := read(key)):
                versions[key] = doc
        for key, version in versions.items():
            number = version.get("version")
            registration = registered.get(number)
            if registration is None:
                problems.append(f"{key}: v{number} has no `registered` record in the history")
            elif "document" in registration and registration["document"] != digest(version):
                problems.append(f"{key}: v{number} was edited after history record {registration['sequence']} "
                                "registered it")
            if artifacts:
                problems += self._artifact_problems(version)
        problems += self._index_problems(model, records, read)
        for number in set(registered) - {v.get("version") for v in versions.values()}:
            held = "version_document" in registered[number]
            problems.append(f"v{number} is in the history but its version document is gone" + (
                f" (the history holds it, and readers read it from there: `sluice models reindex {model}` writes it "
                "again)" if held else ""))
        for name, wanted in ((CHAMPION, snap.champion), (CHALLENGER, snap.challenger)):
            key = f"{base}/aliases/{name}.json"
            alias = read(key) if self.store.exists(key) else None
            actual = None if alias is None else alias.get("version")
            if actual != wanted:
                problems.append(f"{key}: says {'v' + str(actual) if actual else 'none'}, the history says "
                                f"{'v' + str(wanted) if wanted else 'none'}")
        return problems

    def _artifact_problems(self, version: dict[str, Any]) -> list[str]:
        from sluice.ml.bundle import load_version

        where = f"v{version.get('version')}"
        try:
            uri = version["artifact"]["uri"]
            actual = hashlib.sha256(self.store.get(uri.split("/", 3)[3])).hexdigest()
            if actual != version["artifact"]["sha256"]:
                return [f"{where}: artifact {uri} has sha256 {actual[:12]}…, the version recorded "
                        f"{version['artifact']['sha256'][:12]}…"]
            if version.get("bundle"):
                load_version(self.store, version)  # the manifest against the version, every file against it
        except (SluiceError, KeyError) as exc:
            return [f"{where}: {exc}"]
        except Exception as exc:  # a missing object (NoSuchKey) is a finding, not a crash
            return [f"{where}: its artifact cannot be read ({exc})"]
        return []

    def _index_problems(self, model: str, records: list[dict[str, Any]], read: Callable[[str], Any]) -> list[str]:
        """Where the stored index disagrees with the history it says it folds. A stale head is reported too (readers
        fold the newer records in, but a head copied back from an earlier state looks just like it)."""
        key = Index.head_key(model)
        if not self.store.exists(key):
            return []
        head = read(key)
        covered = int(head.get("sequence", 0))
        fix = f"`sluice models reindex {model}` rebuilds it from the history"
        if covered > len(records):
            return [f"{key}: the index covers {covered} history records, the history has {len(records)} (newest "
                    f"records deleted?); {fix}"]
        stale = [] if covered == len(records) else [
            f"{key}: the index covers {covered} of the {len(records)} history records (a writer that died before its "
            f"head, or an older head copied back); readers fold the newer ones in, and the next registration or {fix}"]
        ref = Index(self.store, model, empty_head(model), fresh=True)
        for record in records[:covered]:
            ref.apply(record)
        problems = [f"{key}: says {name} {head.get(name)!r}, the history says {value!r}; {fix}"
                    for name, value in ref.head.items()
                    if name not in ("versions", "tail") and head.get(name) != value]
        valid = {"timeline": int(ref.head["timeline"]), "champions": int(ref.head["depth"])}
        tail = head.get("tail") or {}
        for page_key, entries in sorted(ref.pages.items()):
            kind = page_key.split("/")[-2]
            stored = list((read(page_key) or {}).get("entries", []) if self.store.exists(page_key) else [])
            start = int(page_key.rsplit("/", 1)[1].split(".")[0]) * PAGE[kind]
            for p, entry in (tail.get(kind) or {}).items():  # the head's entries stand over the page's
                if start <= int(p) < start + PAGE[kind]:
                    stored.extend([None] * (int(p) - start + 1 - len(stored)))
                    stored[int(p) - start] = entry
            for offset, entry in enumerate(entries):
                if entry is None or start + offset >= valid.get(kind, start + offset + 1):
                    continue
                if (stored[offset] if offset < len(stored) else None) != entry:
                    problems.append(f"{page_key}: entry {start + offset + 1} disagrees with the history; {fix}")
        registered = {r["version"]: r.get("document") for r in records if registers(r)}
        copies = [(page_key, doc) for page_key in self.store.keys(f"{self.base(model)}/index/docs/")
                  for doc in (read(page_key) or {}).get("entries", [])]
        copies += [(key, doc) for doc in (tail.get("docs") or {}).values()]
        for where, doc in copies:
            if isinstance(doc, dict) and registered.get(doc.get("version")) not in (None, digest(doc)):
                problems.append(f"{where}: its copy of v{doc.get('version')} is not the version the "
                                f"history registered; {fix}")
        return stale + problems

    def record_rescore(self, model: str, number: int, *, scores_before: dict[str, Any],
                       scores_after: dict[str, Any], by: str, at: str, reason: str) -> dict[str, Any] | None:
        """Record corrected gate scores of a version as a `rescored` history record (the version document is
        immutable and keeps its original scores). None when the latest correction already says the same."""
        def op(snap: Index, found: dict[str, Any]) -> dict[str, Any] | None:
            self._existing(model, number, snap)
            latest = snap.entry(number)[2]
            if latest is not None and self._record(model, int(latest)).get("scores_after") == scores_after:
                return None
            return self._append(model, snap, RESCORED, number, {}, cause="rescore", by=by, reason=reason, at=at,
                                scores_before=scores_before, scores_after=scores_after)

        return self._write(model, op, versions=(number,), extra=(self._version_key(model, number),))

    def _existing(self, model: str, number: int, snap: Index) -> dict[str, Any]:
        version = self.version(model, number)
        if version is None:
            total = int(snap.head["versions"])
            known = f"v1-v{total}" if total else "none"
            raise RegistryError(f"{model} has no version {number} (versions: {known})")
        return version

    def _new_version(self, snap: Index, model: str, doc: dict[str, Any], outcome: str, at: str) -> dict[str, Any]:
        """The next version's document (written after the history record that registers it, which holds it)."""
        number = int(snap.head["versions"]) + 1
        # Its stage is known without reading its page: no record the head covers names a number past its versions
        # (and a newer record makes this write's own fail, and the write is decided again).
        snap.set("stages", number - 1, [None, None, None, None])
        return {**doc, "model": model, "version": number, "registered_at": at, "decision": outcome,
                "card": self.store.uri(self.card_key(model, number))}

    def _restore(self, model: str, version: dict[str, Any], *, required: bool = True) -> None:
        """Write a version document the history registered (If-None-Match: its number is the history's); one
        that is not `required` (repaired for a writer that died) is left out when this writer cannot write it
        (an operator's role does not write versions/): readers read it from the history record that holds it.

        Taken by another document: one no history record registered (a writer of the format before one record
        per registration died between the two) or someone outside the lock; the history is the truth, so the
        document it registered replaces it."""
        key = self._version_key(model, int(version["version"]))
        if not required:
            try:
                self._restore(model, version)
            except Exception as exc:  # a cache of the history: the write goes on without it
                log.warning("%s is not written (%s); readers read it from the history record that holds it, "
                            "and `sluice models reindex %s` by a role that writes versions/ (a worker's) writes it",
                            key, exc, model)
            return
        if self.store.put_json(key, version, if_absent=True):
            return
        try:
            stored = self.store.get_json_or_none(key)
        except IntegrityError:
            stored = None  # planted: replaced like any document the history does not name
        if stored is not None and digest(stored) == digest(version):
            return
        log.warning("%s is not the document the history registered as v%s; writing the registered one",
                    key, version["version"])
        self.store.put_json(key, version)

    def _promote(self, steps: _Steps, number: int, **details: Any) -> None:
        changes = {number: CHAMPION}
        if steps.champion is not None:
            changes[steps.champion] = ARCHIVED
        steps.add("promoted", number, changes, champion=number,
                  challenger=None if steps.challenger == number else steps.challenger, **details)

    def _append(self, model: str, snap: Index, action: str, number: int, changes: dict[int, str], *, cause: str,
                by: str, reason: str, at: str, **extra: Any) -> dict[str, Any]:
        """Record one transition (a history record of its own)."""
        steps = _Steps(model, snap)
        steps.add(action, number, changes, cause=cause, reason=reason, **extra)
        record = self._commit(model, snap, steps, by=by, at=at)
        assert record is not None
        return record

    def _commit(self, model: str, snap: Index, steps: _Steps, *, by: str, at: str,
                document: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Append the transitions in `steps` as one history record, created with If-None-Match at the index's
        next number (which is how a writer finds a record newer than its index: see _write); None when there are
        none. One transition is written as it always was; several (a registration's) as one record whose fields
        are their net effect (the stages they changed, the champion before and after, the last one's action and
        cause) with the transitions themselves in `steps`, and `version_document`: the version document it
        registers, so that the history holds it before it is written (ModelRegistry._restore)."""
        if not steps.steps:
            return None
        if snap.head["at"] and parse_time(at) < parse_time(snap.head["at"]):
            at = snap.head["at"]  # worker clocks differ; the history's order is the truth, keep times monotonic
        head = {"model": model, "sequence": snap.next_sequence}
        if len(steps.steps) == 1:
            step = steps.steps[0]
            record = {**head, **{k: step[k] for k in ("version", "action", "changes", "cause")}, "by": by,
                      "reason": step["reason"], "at": at, **{k: v for k, v in step.items() if k not in head}}
        else:
            last = steps.steps[-1]
            extra: dict[str, Any] = {}
            for step in steps.steps:
                extra.update({k: v for k, v in step.items() if k not in _STEP_FIELDS})
            record = {**head, "version": last["version"], "action": last["action"], "changes": steps.net(),
                      "cause": last["cause"], "by": by, "reason": last["reason"], "at": at,
                      "previous_champion": snap.champion, "champion": steps.champion,
                      "challenger": steps.challenger, **extra, "steps": steps.steps}
        if document is not None:
            record["version_document"] = document
        record["prev"] = snap.head["digest"]
        key = self.history_key(model, record["sequence"])
        if not self.store.put_json(key, record, if_absent=True):
            if not snap.appended:
                raise _Stale(key)  # a record the index does not cover yet (its writer died): fold, decide again
            raise TransientError(f"{key} was written by someone not holding the registry lock; retrying")
        self._cache[key] = record
        snap.apply(record)
        snap.appended += 1
        return record
