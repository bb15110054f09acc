"""Reconcile: the bucket is the truth, so every object whose next step is missing is found and re-driven.

A message can be lost in ways no retry sees: Redis restarted empty (a delayed train message vanished), the
bucket notification went to the SQS dead-letter queue during a Redis outage, a worker died between writing an
output and enqueueing nothing (S3 wakes the next stage, but that notification was lost with it). Each step of
the chain leaves an object behind, so the gaps are found by listing the bucket:

    incoming/<ds>/<file>          no ledger outcome for this write         -> validate
    labels/<ds>/<file>            no ledger outcome for this write         -> labels
    validated/<ds>/<dv>/manifest  no feature set covers dv (retrain: yes)  -> features
    features/<ds>/<newest>        no run trained on it                     -> train (or train-labels)
    runs/<ds>/<run>/run.json      no candidate                             -> benchmark
    candidates/<run>              no version for the run                   -> register
    versions/<n>                  its gate decision was never published    -> register
    history/<seq> (newest 20)     a promotion, rollback or archive by hand -> publish (reconcile sends it)
                                  whose event was never published

Each gap is re-driven once per pass, as a synthetic ObjectCreated for the object that wakes the stage, through
the runtime, so claims and idempotent handlers make a re-drive of something already under way harmless. An
object younger than `min_age_s` (or the debounce) is left alone: its own notification is probably on its way.

A lifecycle command (`sluice models promote|rollback|archive`) writes its history record, then publishes its event:
killed between the two, its change holds and nobody announces it, and no stage wakes on a history record. So
reconcile publishes it itself, through `publish_once` with the id the command would have used (subscribers
de-duplicate on it if both went out), and records it under `published/` like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sluice.core import keys
from sluice.core.errors import IntegrityError, SluiceError
from sluice.core.ports import IN_PROGRESS, Listed, ObjectStore, StateBackend
from sluice.core.ports import signed as _signed
from sluice.events.run import read as read_run
from sluice.events.s3 import ObjectCreated

if TYPE_CHECKING:
    from sluice.core.runtime import Runtime

log = logging.getLogger("sluice")

DEFAULT_MIN_AGE_S = 60.0
PUBLISH = "publish"  # no stage: reconcile publishes the event of a history record itself
# A model's newest history records each pass reads for an announcement never published (one round of parallel
# GETs, not the whole history): a command killed before publishing is found while fewer records came after it.
RECENT_RECORDS = 20


@dataclass(frozen=True)
class Gap:
    """A stage that should have run on `key` and left no trace."""

    stage: str
    key: str
    dataset: str
    why: str

    def to_dict(self) -> dict[str, str]:
        """JSON-safe."""
        return {"stage": self.stage, "key": self.key, "dataset": self.dataset, "why": self.why}


def listing(store: ObjectStore, prefix: str) -> Iterator[Listed]:
    """Every object under `prefix`, with its ETag and time (one LIST, no HEAD per object)."""
    return store.listing(prefix)


def event_for(store: ObjectStore, obj: Listed) -> ObjectCreated:
    """The ObjectCreated S3 would have sent for `obj` (same ETag, so the same idempotency key)."""
    return ObjectCreated(store.bucket, obj.key, obj.size, obj.etag, None, "reconcile", obj.modified.isoformat())


def datasets_in(store: ObjectStore) -> list[str]:
    """Every dataset with a contract or anything dropped."""
    names: set[str] = set()
    for prefix in (keys.CONTRACTS, keys.INCOMING, keys.LABELS, keys.LEDGER, keys.VALIDATED):
        for key in store.keys(prefix):
            parts = key.split("/")  # contracts/<ds>.yaml or <prefix>/<ds>/...
            if len(parts) > 1 and parts[1]:
                names.add(parts[1].removesuffix(".yaml") if prefix == keys.CONTRACTS else parts[1])
    return sorted(names)


def signed(store: ObjectStore, found: Iterable[str]) -> Iterator[tuple[str, Any]]:
    """The documents among `found` whose signatures hold (core/ports.signed): one planted object must not stop
    every other gap from being found."""
    return _signed(store, found, "reconcile")


def _guarded(what: str, find: Callable[..., Any], *args: Any, none: Any = ()) -> Any:
    """What `find(*args)` finds; `none`, with a warning, when it meets a document that fails its signature."""
    try:
        return find(*args)
    except IntegrityError as exc:
        log.warning("reconcile: could not look for gaps in %s this pass: %s", what, str(exc).split(";")[0])
        return none


def _refused(store: ObjectStore, dataset: str | None) -> dict[tuple[str, str, str | None], str]:
    """(stage, key, etag) -> refusal id, for every event a stage refused (signed records only: a planted one must
    not hide a gap)."""
    prefix = keys.Refused.prefix(dataset) if dataset else keys.REFUSED
    out = {}
    for _, record in signed(store, [k for k in store.keys(prefix) if k.endswith(".json")]):
        event = record.get("event") or {}
        out[(str(record.get("stage")), str(event.get("key")), event.get("etag"))] = str(record.get("id"))
    return out


def find_gaps(store: ObjectStore, state: StateBackend | None = None, dataset: str | None = None, *,
              min_age_s: float = DEFAULT_MIN_AGE_S, now: datetime | None = None) -> list[Gap]:
    """Every object whose next step is missing, oldest stage first."""
    now = now or datetime.now(UTC)
    gaps: list[Gap] = []
    models: set[str] = set()
    for ds in [dataset] if dataset else datasets_in(store):
        quarantined = {r.get("source", {}).get("key") for _, r in signed(
            store, [k for k in store.keys(keys.Quarantine.prefix(ds)) if k.endswith("/report.json")])}
        gaps += _guarded(f"the drops of {ds}", _arrival_gaps, store, state, ds, min_age_s, now)
        gaps += _guarded(f"the data versions of {ds}", _feature_gaps, store, ds, quarantined, min_age_s, now)
        gap, model = _guarded(f"the training of {ds}", _training_gap, store, ds, quarantined, min_age_s, now,
                              none=([], None))
        gaps += gap
        if model:
            models.add(model)
        runs = [obj.key for obj in listing(store, keys.Run.prefix(ds)) if obj.key.endswith("/run.json")
                and obj.age_s(now) >= min_age_s and obj.key not in quarantined]
        for key, run in signed(store, runs):
            models.add(run["model"])
            if not store.exists(keys.Candidate(run["model"], run["run_id"]).key):
                gaps.append(Gap("benchmark", key, ds, f"run {run['run_id']} has no benchmark verdict"))
    for model in sorted(models):
        gaps += _guarded(f"the registry of {model}", _registry_gaps, store, state, model, min_age_s, now)
    if state is not None:  # something under way is not a gap (yet)
        gaps = [g for g in gaps if g.stage == PUBLISH or not _in_progress(store, state, g)]
    return gaps


def _in_progress(store: ObjectStore, state: StateBackend, gap: Gap) -> bool:
    from sluice.core.runtime import claim_key

    info = store.head(gap.key)
    if info is None:
        return False
    event = ObjectCreated(store.bucket, gap.key, info.size, info.etag)
    record = state.record(claim_key(gap.stage, event))
    return record is not None and record.status == IN_PROGRESS


def _arrival_gaps(store: ObjectStore, state: StateBackend | None, ds: str, min_age_s: float,
                  now: datetime) -> list[Gap]:
    outcomes = {(e.get("key"), e.get("etag")) for _, e in signed(store, store.keys(keys.Ledger.prefix(ds)))}
    gaps = []
    for prefix, stage in (("incoming", "validate"), ("labels", "labels")):
        for obj in listing(store, f"{prefix}/{ds}/"):
            if (obj.key, obj.etag) not in outcomes and obj.age_s(now) >= min_age_s:
                gaps.append(Gap(stage, obj.key, ds, f"dropped {obj.age_s(now):.0f}s ago, no outcome in the ledger"))
    return gaps


def _feature_gaps(store: ObjectStore, ds: str, quarantined: set[Any], min_age_s: float, now: datetime) -> list[Gap]:
    covered: set[str] = set()
    for _, feature_set in signed(store, [k for k in store.keys(keys.FeatureSet.prefix(ds))
                                         if k.endswith("/manifest.json")]):
        covered.update(feature_set.get("data_versions", []))
    gaps = []
    manifests = [obj.key for obj in listing(store, keys.Validated.prefix(ds)) if obj.key.endswith("/manifest.json")
                 and obj.age_s(now) >= min_age_s and obj.key not in quarantined]
    for key, manifest in signed(store, manifests):
        if manifest.get("retrain", True) and manifest["data_version"] not in covered:
            gaps.append(Gap("features", key, ds, f"data version {manifest['data_version'][:12]} is in no "
                                                "feature set"))
    return gaps


def _training_gap(store: ObjectStore, ds: str, quarantined: set[Any], min_age_s: float,
                  now: datetime) -> tuple[list[Gap], str | None]:
    """The newest inputs of a dataset with no run: the coalesced training never came (e.g. Redis lost it)."""
    from sluice.ml.contract import load_contract
    from sluice.ml.features import label_versions, latest_feature_set

    try:
        contract = load_contract(store, ds)
    except SluiceError:
        return [], None
    features = latest_feature_set(store, ds)
    if features is None:
        return [], contract.model
    trigger = keys.FeatureSet(ds, features.feature_set_version).key
    stage, newest_at = "train", features.materialized_at
    labels: list[str] = []
    if contract.labels is not None:
        versions = label_versions(store, ds)
        if not versions:
            return [], contract.model
        newest = max(versions, key=lambda lv: (lv.validated_at, lv.data_version))
        labels = [lv.data_version for lv in versions]
        if newest.validated_at > features.materialized_at:  # then the labels' trigger trains (see train._coalesce)
            trigger, stage, newest_at = keys.Validated(ds, newest.data_version, labels=True).key, "train-labels", \
                newest.validated_at
    quiet_s = (now - datetime.fromisoformat(newest_at.replace("Z", "+00:00"))).total_seconds()
    if quiet_s < contract.training.debounce_s + min_age_s or trigger in quarantined:
        return [], contract.model
    found = list(store.keys(keys.Run.prefix(ds)))
    if any(k.endswith("/cancelled.json") for k in found):
        return [], contract.model  # a cancelled run was asked for; retraining is the user's call
    # A planted run document is skipped (with a warning), not taken for the run: it must not hide a gap either.
    for _, doc in signed(store, [k for k in found if k.endswith("/run.json")]):
        run = read_run(doc)
        if run["feature_set_version"] == features.feature_set_version and set(labels) <= set(
                run.get("label_versions") or []):
            return [], contract.model
    return [Gap(stage, trigger, ds, f"feature set {features.feature_set_version} has no run "
                                    f"{quiet_s:.0f}s after its inputs settled")], contract.model


def _registry_gaps(store: ObjectStore, state: StateBackend | None, model: str, min_age_s: float,
                   now: datetime) -> list[Gap]:
    from sluice.core.memory import MemoryState
    from sluice.events.model import EVENT_OF_ACTION, ModelEvent
    from sluice.ml.registry import ModelRegistry, parse_time

    # From the registry's index: a request per 20 versions and one per 1,000 stages, not one per version and per
    # history record (every worker runs this each SLUICE_RECONCILE_INTERVAL_S).
    registry = ModelRegistry(store, state or MemoryState())
    idx, versions_by_number = registry.indexed_versions(model)
    versions = {v["run_id"]: v for v in versions_by_number.values()}
    published = set(store.keys(keys.Published.prefix(model)))
    source = f"sluice://{store.bucket}"
    gaps = []
    for obj in listing(store, keys.Candidate.prefix(model)):
        if not obj.key.endswith(".candidate.json") or obj.age_s(now) < min_age_s:
            continue
        run_id = keys.Candidate.parse(obj.key).run_id
        version = versions.get(run_id)
        if version is None:
            gaps.append(Gap("register", obj.key, _dataset(obj.key, store), f"candidate {run_id} has no version"))
            continue
        number = int(version["version"])
        _, sequence, _, action = idx.entry(number)
        if sequence is None:
            gaps.append(Gap("register", obj.key, version["dataset"],
                            f"v{number} was registered but the gate's decision was not applied"))
            continue
        # The id for_transition(version, the gate's record) gives the event (events/model.py).
        event = ModelEvent(type=EVENT_OF_ACTION[action], model=model, dataset=version["dataset"], version=number,
                           time="", source=source, sequence=int(sequence))
        if keys.Published(model, event.id).key not in published:
            gaps.append(Gap("register", obj.key, version["dataset"],
                            f"v{number}'s {event.type} event was never published"))
    # The lifecycle commands' records (the gate's are the register stage's, re-driven above through their
    # candidate): the newest few, in one round.
    recent, _ = _guarded(f"the history of {model}", registry.history_tail, model, RECENT_RECORDS, idx,
                         none=([], 0))
    for record in recent:
        action, sequence, number = record["action"], int(record["sequence"]), int(record["version"])
        if record.get("cause") == "gate" or action not in EVENT_OF_ACTION:
            continue  # a rescore announces nothing
        if (now - parse_time(str(record["at"]))).total_seconds() < min_age_s:
            continue  # its command is probably publishing it now
        dataset = str((versions_by_number.get(number) or {}).get("dataset", "_unknown"))
        event = ModelEvent(type=EVENT_OF_ACTION[action], model=model, dataset=dataset, version=number, time="",
                           source=source, sequence=sequence)
        if keys.Published(model, event.id).key not in published:
            gaps.append(Gap(PUBLISH, registry.history_key(model, sequence), dataset,
                            f"history record {sequence} ({action} v{number} by {record.get('by')}) was never "
                            f"announced: its {event.type} event was never published"))
    return gaps


def _dataset(key: str, store: ObjectStore) -> str:
    try:
        return str(store.get_json(key).get("dataset", "_unknown"))
    except Exception:
        return "_unknown"


def _announce(runtime: Runtime, gap: Gap) -> None:
    """Publish the event of the history record at `gap.key` as the command that wrote it would have: the same
    CloudEvent (id included), through `publish_once`, so one already sent (since the gap was found) is not sent
    again."""
    from sluice.core.runtime import publish_once
    from sluice.events.model import for_transition
    from sluice.ml.registry import ModelRegistry

    record = runtime.store.get_json(gap.key)  # signed: a planted record is refused here
    registry = ModelRegistry(runtime.store, runtime.state)
    version = registry.version(gap.key.split("/")[1], int(record["version"]))
    if version is None:
        log.warning("reconcile: %s names v%s, which has no version document; not announced", gap.key,
                    record["version"])
        return
    publish_once(runtime.publisher, runtime.store, for_transition(version, record, f"sluice://{runtime.store.bucket}"))


def reconcile(runtime: Runtime, dataset: str | None = None, *, dry_run: bool = False,
              min_age_s: float = DEFAULT_MIN_AGE_S) -> list[Gap]:
    """Find the gaps and (unless `dry_run`) re-drive each one once through the runtime."""
    gaps = find_gaps(runtime.store, runtime.state, dataset, min_age_s=min_age_s)
    refused = _refused(runtime.store, dataset) if gaps else {}
    for gap in gaps:
        if gap.stage == PUBLISH:
            if not dry_run:
                _announce(runtime, gap)
                runtime.on_event("redriven", gap.to_dict())
            log.info("%s %-10s %s: %s", "gap " if dry_run else "sent", gap.stage, gap.key, gap.why)
            continue
        info = runtime.store.head(gap.key)
        if info is None:
            continue
        waiting = refused.get((gap.stage, gap.key, info.etag))
        if waiting is not None:
            # A refusal is never retried on its own: the same bytes were refused by this stage, and an operator
            # re-drives them once they are restored (restored bytes have another etag, and are re-driven here).
            log.info("skip %-10s %s: refused, waiting for `sluice refused redrive %s`", gap.stage, gap.key, waiting)
            continue
        if not dry_run:
            event = ObjectCreated(runtime.store.bucket, gap.key, info.size, info.etag, info.version_id, "reconcile")
            runtime.send(gap.stage, event)
            runtime.on_event("redriven", gap.to_dict())
        log.info("%s %-10s %s: %s", "gap " if dry_run else "redo", gap.stage, gap.key, gap.why)
    return gaps
