"""The model registry, in the bucket under `registry/<model>/`.

    candidates/<run>.candidate.json  the benchmark's verdict on a run, before it has a number
    versions/000001.json             one immutable document per version (run, gate, benchmark, artifact, lineage)
    versions/000001.md               its model card
    history/00000001.json            append-only transitions, one object each, never overwritten
    aliases/champion.json            which version serves, since when, and the one before it
    aliases/challenger.json          the version waiting for a decision (absent when there is none)

Lifecycle of a version: candidate -> challenger -> champion -> archived, or rejected. Every transition is a
history record saying what changed, what caused it, who made it and why, and what the aliases were after it;
the history is the truth, the alias objects are a cache of its last record.

The history is tamper-evident: each record carries `prev`, the sha256 of the record before it (a hash chain), and a
`registered` record carries the sha256 of the version document it registered; every object here is signed by the
stage that wrote it (core/provenance.py). `verify` checks all of it, and the artifacts against the versions.

Every write runs under a per-model lock, each version document and history record is created with a
conditional write (If-None-Match), so concurrent writers can neither lose nor reuse a number.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sluice.core.errors import IntegrityError, RegistryError, SluiceError, TransientError
from sluice.core.ports import ObjectStore, StateBackend

LOCK_TIMEOUT_S = 60
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


def digest(doc: dict[str, Any]) -> str:
    """The sha256 of a document's canonical JSON: what the next history record commits to."""
    normal = json.loads(json.dumps(doc, default=str))  # as stored: what a reader of the bucket hashes
    return hashlib.sha256(json.dumps(normal, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def chain_problems(records: list[dict[str, Any]]) -> list[str]:
    """Where a history (sorted by sequence) is not one unbroken chain: gaps, and records not following the last."""
    problems = []
    for i, record in enumerate(records):
        sequence = int(record["sequence"])
        if sequence != i + 1:
            after = "first" if i == 0 else f"after record {records[i - 1]['sequence']}"
            problems.append(f"history record {i + 1} is missing (deleted?): record {sequence} comes {after}")
            break
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


class ModelRegistry:
    """Versions, aliases and history of models."""

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

    def _immutable(self, key: str) -> dict[str, Any] | None:
        doc = self._cache.get(key)
        if doc is None:
            doc = self.store.get_json_or_none(key)
            if doc is not None:
                self._cache[key] = doc
        return doc

    def version_numbers(self, model: str) -> list[int]:
        """All version numbers, ascending."""
        prefix = f"{self.base(model)}/versions/"
        return sorted(int(k[len(prefix):].split(".")[0]) for k in self.store.keys(prefix) if k.endswith(".json"))

    def version(self, model: str, number: int) -> dict[str, Any] | None:
        """One version document."""
        return self._immutable(f"{self.base(model)}/versions/{number:06d}.json")

    def versions(self, model: str) -> list[dict[str, Any]]:
        """Every version document, ascending."""
        return [v for n in self.version_numbers(model) if (v := self.version(model, n)) is not None]

    def alias(self, model: str, name: str = CHAMPION) -> dict[str, Any] | None:
        """The alias document ({version, since, previous}), or None."""
        doc: dict[str, Any] | None = self.store.get_json_or_none(f"{self.base(model)}/aliases/{name}.json")
        return doc

    def champion(self, model: str) -> dict[str, Any] | None:
        """The champion's version document."""
        alias = self.alias(model)
        return self.version(model, int(alias["version"])) if alias else None

    def history(self, model: str) -> list[dict[str, Any]]:
        """Every recorded transition, oldest first."""
        docs = [d for k in self.store.keys(f"{self.base(model)}/history/") if (d := self._immutable(k)) is not None]
        docs.sort(key=lambda d: int(d["sequence"]))
        problems = chain_problems(docs)
        if problems:
            raise IntegrityError(f"the registry history of {model} is broken: {'; '.join(problems)}. Nothing acts on "
                                 f"it until it is restored; `sluice models verify {model}` lists every problem.")
        return docs

    def snapshot(self, model: str) -> Snapshot:
        """The current state, folded from the history."""
        snap = Snapshot()
        for record in self.history(model):
            snap.apply(record)
        return snap

    def champion_at(self, model: str, when: datetime) -> tuple[int | None, dict[str, Any] | None]:
        """Which version was champion at `when`, and the history record that made it so (None before any)."""
        champion: int | None = None
        cause: dict[str, Any] | None = None
        for record in self.history(model):
            if parse_time(record["at"]) > when:
                break  # record times never decrease (see _append), so nothing later applies
            if record["champion"] != champion:
                champion, cause = record["champion"], record
        return champion, cause

    def models(self) -> list[str]:
        """Names of all registered models."""
        names = {k.split("/")[1] for k in self.store.keys("registry/") if "/versions/" in k}
        return sorted(names)

    def register(self, model: str, doc: dict[str, Any], *, outcome: str, compared_with: int | None, at: str,
                 by: str = AUTOMATIC) -> Registration:
        """Register the run in `doc` as the next version (once per run) and apply the gate's `outcome`.

        Safe to call again after a crash at any point: the run's version is found, and each lifecycle step is
        taken only if the history does not show it yet.
        """
        with self.state.lock(f"registry:{model}", LOCK_TIMEOUT_S):
            snap = self.snapshot(model)
            existing = next((v for v in self.versions(model) if v["run_id"] == doc["run_id"]), None)
            created = existing is None
            if existing is None:
                reasons = list(doc.get("reasons", []))
                if outcome == PROMOTE and snap.champion != compared_with:
                    # Another version became champion while this one was benchmarked: no evidence against it.
                    outcome = INSUFFICIENT
                    reasons.append(f"the champion changed (v{compared_with} -> v{snap.champion}) while this candidate "
                                   "was benchmarked, so it was not compared with the current champion; promote it "
                                   "by hand or drop new data to compare again")
                existing = self._create_version(model, {**doc, "reasons": reasons, "compared_with": compared_with},
                                                outcome, at)
            number = existing["version"]
            # The drop that caused the run (core/tracing.py), on every record the gate wrote; absent before it.
            trace = {"trace_id": existing["trace_id"]} if existing.get("trace_id") else {}
            if snap.stages.get(number) is None:
                self._append(model, snap, "registered", number, {number: CANDIDATE}, cause="benchmark", by=by,
                             reason=f"run {doc['run_id']} registered", at=at, document=digest(existing), **trace)
            if snap.stages[number] == CANDIDATE:
                gate = {"cause": "gate", "by": by, "reasons": existing.get("reasons", []), "at": at, **trace}
                if existing["decision"] == REJECT:
                    self._append(model, snap, "rejected", number, {number: REJECTED},
                                 reason="the gate rejected it", **gate)
                else:
                    changes = {number: CHALLENGER}
                    if snap.challenger is not None:
                        changes[snap.challenger] = ARCHIVED  # one challenger at a time: the newer one replaces it
                    self._append(model, snap, "challenger", number, changes, challenger=number,
                                 reason="the gate found it worth challenging the champion"
                                 if existing["decision"] == PROMOTE else "the evidence is not sufficient to decide",
                                 **gate)
            if (snap.stages[number] == CHALLENGER and existing["decision"] == PROMOTE
                    and snap.champion == existing.get("compared_with")):
                self._promote(model, snap, number, cause="gate", by=by, reason="the gate promoted it",
                              reasons=existing.get("reasons", []), at=at, **trace)
            self._sync_aliases(model, snap)
            decisive = [r for r in snap.records if r["version"] == number and r["cause"] == "gate"]
            return Registration(existing, created, decisive[-1])

    def promote(self, model: str, number: int, *, reason: str, by: str, at: str,
                force: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
        """Make `number` the champion by hand; a version the gate rejected needs `force`."""
        with self.state.lock(f"registry:{model}", LOCK_TIMEOUT_S):
            snap = self.snapshot(model)
            version = self._existing(model, number)
            if snap.champion == number:
                raise RegistryError(f"{model} v{number} is already the champion")
            stage = snap.stages.get(number)
            refused = version["decision"] == REJECT or stage == CANDIDATE
            if refused and not force:
                why = "; ".join(version.get("reasons", [])) or "it has not been through the gate"
                raise RegistryError(f"the gate did not pass {model} v{number} ({why}). Pass --force to promote it "
                                    "anyway; the history records that you did.")
            cause = "manual, forced past the gate" if refused else "manual"
            record = self._promote(model, snap, number, cause=cause, by=by, reason=reason, at=at)
            self._sync_aliases(model, snap)
            return version, record

    def rollback(self, model: str, *, reason: str, by: str, at: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the champion before the current one; the current one is archived."""
        with self.state.lock(f"registry:{model}", LOCK_TIMEOUT_S):
            snap = self.snapshot(model)
            if snap.champion is None or len(snap.champions) < 2:
                raise RegistryError(f"{model} has no earlier champion to roll back to "
                                    f"(champion: {'v' + str(snap.champion) if snap.champion else 'none'})")
            current, target = snap.champion, snap.champions[-2]
            record = self._append(model, snap, "rolled_back", target, {current: ARCHIVED, target: CHAMPION},
                                  cause="rollback", by=by, reason=reason, at=at, champion=target,
                                  challenger=None if snap.challenger == target else snap.challenger)
            self._sync_aliases(model, snap)
            return self._existing(model, target), record

    def archive(self, model: str, number: int, *, reason: str, by: str,
                at: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Retire a version that is not the champion."""
        with self.state.lock(f"registry:{model}", LOCK_TIMEOUT_S):
            snap = self.snapshot(model)
            version = self._existing(model, number)
            if snap.champion == number:
                raise RegistryError(f"{model} v{number} is the champion; `sluice models rollback {model}` or promote "
                                    "another version first")
            if snap.stages.get(number) == ARCHIVED:
                raise RegistryError(f"{model} v{number} is already archived")
            record = self._append(model, snap, "archived", number, {number: ARCHIVED}, cause="manual", by=by,
                                  reason=reason, at=at,
                                  challenger=None if snap.challenger == number else snap.challenger)
            self._sync_aliases(model, snap)
            return version, record

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
            doc: dict[str, Any] = self.store.get_json_unverified(key)
            return doc

        records = sorted((read(k) for k in self.store.keys(f"{base}/history/") if k.endswith(".json")),
                         key=lambda d: int(d["sequence"]))
        problems += chain_problems(records)
        snap = Snapshot()
        for record in records:
            snap.apply(record)
        registered = {r["version"]: r for r in records if r["action"] == "registered"}
        versions = {}
        for key in self.store.keys(f"{base}/versions/"):
            if key.endswith(".json"):
                versions[key] = read(key)
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
        for number in set(registered) - {v.get("version") for v in versions.values()}:
            problems.append(f"v{number} is in the history but its version document is gone")
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

    def record_rescore(self, model: str, number: int, *, scores_before: dict[str, Any],
                       scores_after: dict[str, Any], by: str, at: str, reason: str) -> dict[str, Any] | None:
        """Record corrected gate scores of a version as a `rescored` history record (the version document is
        immutable and keeps its original scores). None when the latest correction already says the same."""
        with self.state.lock(f"registry:{model}", LOCK_TIMEOUT_S):
            snap = self.snapshot(model)
            self._existing(model, number)
            earlier = [r for r in snap.records if r["action"] == RESCORED and r["version"] == number]
            if earlier and earlier[-1].get("scores_after") == scores_after:
                return None
            return self._append(model, snap, RESCORED, number, {}, cause="rescore", by=by, reason=reason, at=at,
                                scores_before=scores_before, scores_after=scores_after)

    def _existing(self, model: str, number: int) -> dict[str, Any]:
        version = self.version(model, number)
        if version is None:
            known = ", ".join(f"v{n}" for n in self.version_numbers(model)) or "none"
            raise RegistryError(f"{model} has no version {number} (versions: {known})")
        return version

    def _create_version(self, model: str, doc: dict[str, Any], outcome: str, at: str) -> dict[str, Any]:
        numbers = self.version_numbers(model)
        number = (numbers[-1] if numbers else 0) + 1
        while True:
            version = {**doc, "model": model, "version": number, "registered_at": at, "decision": outcome,
                       "card": self.store.uri(self.card_key(model, number))}
            if self.store.put_json(f"{self.base(model)}/versions/{number:06d}.json", version, if_absent=True):
                return version
            number += 1  # someone outside the lock took it: the conditional write keeps us honest

    def _promote(self, model: str, snap: Snapshot, number: int, **details: Any) -> dict[str, Any]:
        changes = {number: CHAMPION}
        if snap.champion is not None:
            changes[snap.champion] = ARCHIVED
        return self._append(model, snap, "promoted", number, changes, champion=number,
                            challenger=None if snap.challenger == number else snap.challenger, **details)

    def _append(self, model: str, snap: Snapshot, action: str, number: int, changes: dict[int, str], *, cause: str,
                by: str, reason: str, at: str, **extra: Any) -> dict[str, Any]:
        for v, to in changes.items():
            if (snap.stages.get(v), to) not in ALLOWED:
                raise RegistryError(f"{model} v{v} cannot go from {snap.stages.get(v) or 'unregistered'} to {to}")
        if snap.records and parse_time(at) < parse_time(snap.records[-1]["at"]):
            at = snap.records[-1]["at"]  # worker clocks differ; the history's order is the truth, keep times monotonic
        record = {
            "model": model, "sequence": snap.next_sequence, "version": number, "action": action,
            "changes": [{"version": v, "from": snap.stages.get(v), "to": to} for v, to in changes.items()],
            "cause": cause, "by": by, "reason": reason, "at": at,
            "previous_champion": snap.champion, "champion": snap.champion, "challenger": snap.challenger, **extra,
            "prev": digest(snap.records[-1]) if snap.records else None,
        }
        key = f"{self.base(model)}/history/{record['sequence']:08d}.json"
        if not self.store.put_json(key, record, if_absent=True):
            raise TransientError(f"{key} was written by someone not holding the registry lock; retrying")
        self._cache[key] = record
        snap.apply(record)
        return record

    def _sync_aliases(self, model: str, snap: Snapshot) -> None:
        wanted: dict[str, dict[str, Any] | None] = {
            CHAMPION: None if snap.champion is None else {
                "version": snap.champion, "since": snap.since(snap.champion),
                "previous": snap.champions[-2] if len(snap.champions) > 1 else None},
            CHALLENGER: None if snap.challenger is None else {
                "version": snap.challenger,
                "since": next(r["at"] for r in reversed(snap.records)
                              if r["action"] == "challenger" and r["version"] == snap.challenger)},
        }
        for name, doc in wanted.items():
            key = f"{self.base(model)}/aliases/{name}.json"
            if doc is None:
                if self.alias(model, name) is not None:
                    self.store.delete(key)
            elif self.alias(model, name) != doc:
                self.store.put_json(key, doc)
