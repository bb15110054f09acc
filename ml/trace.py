"""The whole path of one drop, read back from the bucket: `sluice trace KEY|ID`.

A drop's trace id (core/tracing.py) is on every document its path wrote: the ledger entry, the quarantine report or
refusal, the validated and feature-set manifests, the run, the candidate, the registry version and its history
records, the model event (`traceparent`), a dead letter. Each stage attempt also left a span under
`traces/<trace id>/` with its start, end and outcome. Redis plays no part: the bucket is the truth.

A drop whose data was trained together with other drops (coalescing) has no run of its own; the run that first
trained on it names it in `trace_links`, and its path goes on through that run's trace.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from sluice.core import keys, tracing
from sluice.core.errors import SluiceError
from sluice.core.ports import ObjectStore, StateBackend, signed
from sluice.events.run import read as read_run
from sluice.ml import leakage
from sluice.ml.registry import ModelRegistry
from sluice.ml.registry_index import actions

# The stages of the built-in chain, in order; spans of other stages (an app's own) follow them.
ORDER = ("validate", "labels", "features", "train", "benchmark", "register", "event", "backtest")
_HEX = re.compile(r"^[0-9a-f]{8,32}$")


class UnknownDrop(SluiceError):
    """No drop in the bucket matches the key or id given."""


@dataclass
class Step:
    """One stage of a drop's path: when it ran (from its spans; None where nothing recorded it), how it ended."""

    stage: str
    outcome: str
    detail: str = ""
    key: str | None = None  # the object the stage acted on
    started_at: str | None = None
    ended_at: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)  # the spans: each attempt's outcome and times
    documents: list[str] = field(default_factory=list)  # where the outcome is written
    trace_id: str | None = None  # set when the step belongs to another drop's trace (a coalesced run)

    @property
    def duration_s(self) -> float | None:
        """Start to end, when both were recorded."""
        if not (self.started_at and self.ended_at):
            return None
        return round((_time(self.ended_at) - _time(self.started_at)), 3)


@dataclass
class Trace:
    """A drop and its path."""

    trace_id: str
    dataset: str | None
    drop: dict[str, Any]
    steps: list[Step]
    linked: list[str] = field(default_factory=list)  # traces whose run trained on this drop (coalescing)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe."""
        return {"trace_id": self.trace_id, "ledger_id": self.trace_id[:16], "dataset": self.dataset,
                "drop": self.drop, "linked_traces": self.linked,
                "steps": [{**asdict(s), "duration_s": s.duration_s} for s in self.steps]}


def _time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _iso(text: str) -> str:
    """An ISO time as Sluice writes them (milliseconds, `Z`), whatever precision and zone it was written with."""
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return text
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _span_docs(store: ObjectStore, trace_id: str) -> list[dict[str, Any]]:
    docs = [store.get_json(k) for k in store.keys(keys.Span.prefix(trace_id)) if k.endswith(".json")]
    return sorted(docs, key=lambda d: (str(d.get("started_at")), str(d.get("ended_at"))))


def _ledger_entries(store: ObjectStore, prefix: str = keys.LEDGER, ident: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(key, entry) of the ledger entries under `prefix` whose id starts with `ident` (only those are read)."""
    return [(k, store.get_json(k)) for k in store.keys(prefix)
            if k.endswith(".json") and keys.Ledger.parse(k).object_id.startswith(ident)]


def resolve(store: ObjectStore, ref: str) -> tuple[str, str | None, dict[str, Any]]:
    """(trace id, dataset, ledger entry or {}) of a drop named by its key (`KEY`, `KEY@ETAG` or `KEY@VERSION_ID`),
    its trace id, or a prefix of either id of at least 8 hex digits; UnknownDrop when nothing matches."""
    ref = ref.strip()
    if _HEX.match(ref):
        return _by_id(store, ref)
    key, _, which = ref.rpartition("@") if "@" in ref else (ref, "", "")
    key = key.removeprefix(f"s3://{store.bucket}/")
    try:
        drop = keys.Drop.parse(key)
    except ValueError:
        raise UnknownDrop(f"{ref!r} is neither a dropped object's key (incoming/<dataset>/<file> or "
                          "labels/<dataset>/<file>, optionally @ETAG or @VERSION_ID) nor a trace id (32 hex digits, "
                          "or a prefix of 8 or more); `sluice status` lists the drops") from None
    from sluice.events.s3 import ObjectCreated

    def ledger_key(etag: str) -> str:  # a drop's ledger id is the start of its trace id: no scan needed
        return keys.Ledger(drop.dataset, tracing.trace_id_of(
            ObjectCreated(store.bucket, key, etag=etag).idempotency_key)[:16]).key

    info = None if which else store.head(key)
    direct = which or (info.etag if info is not None else None)
    if direct:
        found = store.get_json_or_none(ledger_key(direct))
        if isinstance(found, dict) and found.get("key") == key:
            return _trace_of_entry(store, ledger_key(direct), found), drop.dataset, found
        if info is not None:  # the object as it is now has no outcome yet: its trace has begun (or will)
            return tracing.trace_id_of(ObjectCreated(store.bucket, key, etag=info.etag).idempotency_key), \
                drop.dataset, {}
    # A version id, an ETag written otherwise, or an object since deleted: the ledger knows.
    entries = [(k, e) for k, e in _ledger_entries(store, keys.Ledger.prefix(drop.dataset)) if e.get("key") == key
               and (not which or which.strip('"') in (str(e.get("etag", "")).strip('"'), e.get("version_id")))]
    if entries:
        found_key, entry = max(entries, key=lambda ke: str(ke[1].get("at")))
        return _trace_of_entry(store, found_key, entry), drop.dataset, entry
    raise UnknownDrop(f"no drop of {ref!r} is recorded: the ledger has no entry for it"
                      + (" with that ETag or version id" if which else " and the object is not in the bucket")
                      + "; `sluice status` lists the dataset's drops")


def _trace_of_entry(store: ObjectStore, ledger_key: str, entry: dict[str, Any]) -> str:
    """An entry's trace id: recorded on it, or (entries written before correlation ids) derived from the drop."""
    if entry.get("trace_id"):
        return str(entry["trace_id"])
    from sluice.events.s3 import ObjectCreated

    return tracing.trace_id_of(ObjectCreated(store.bucket, entry["key"], etag=entry.get("etag") or "",
                                             version_id=entry.get("version_id")).idempotency_key)


def _by_id(store: ObjectStore, ref: str) -> tuple[str, str | None, dict[str, Any]]:
    hits = [(k, e) for k, e in _ledger_entries(store, ident=ref[:16]) if _trace_of_entry(store, k, e).startswith(ref)]
    if len(hits) == 1:
        k, entry = hits[0]
        return _trace_of_entry(store, k, entry), keys.Ledger.parse(k).dataset, entry
    if len(hits) > 1:
        raise UnknownDrop(f"{len(hits)} drops have ids starting with {ref!r}; give more digits")
    traces = {keys.Span.parse(k).trace_id for k in store.keys(f"{keys.TRACES}{ref}")}
    if len(traces) == 1:
        return traces.pop(), None, {}
    raise UnknownDrop(f"no drop has the trace id {ref!r}" if not traces else
                      f"{len(traces)} traces start with {ref!r}; give more digits")


def trace(store: ObjectStore, state: StateBackend, ref: str) -> Trace:
    """The path of the drop `ref` names (see `resolve`)."""
    trace_id, dataset, entry = resolve(store, ref)
    spans = _span_docs(store, trace_id)
    if dataset is None and spans:
        dataset = keys.dataset_of(str(spans[0]["key"]))
    drop = {k: entry[k] for k in ("key", "etag", "version_id", "size", "sha256") if entry.get(k)}
    if not drop and spans:
        drop = {"key": spans[0]["key"]}
    steps: list[Step] = []
    by_stage: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_stage.setdefault(str(span["stage"]), []).append(span)
    steps += _arrival(store, trace_id, dataset, entry, by_stage)
    linked: list[str] = []
    if dataset is not None:
        steps += _downstream(store, state, trace_id, dataset, entry, by_stage, linked)
    for stage, attempts in by_stage.items():  # an app's own stages, and anything not accounted for above
        if not any(s.stage == stage and s.trace_id is None for s in steps):
            steps.append(_timed(Step(stage, attempts[-1]["outcome"], key=str(attempts[-1]["key"]),
                                     detail=_outputs(attempts[-1])), attempts))
    steps.sort(key=lambda s: (ORDER.index(s.stage) if s.stage in ORDER else len(ORDER), s.started_at or s.ended_at
                              or ""))
    return Trace(trace_id, dataset, drop, steps, linked)


def _timed(step: Step, attempts: list[dict[str, Any]]) -> Step:
    """The step's start and end from its spans: the first attempt's start, the last one's end; a duplicate delivery
    after the work was done is listed among the attempts but does not stretch the step."""
    if attempts:
        worked = [a for a in attempts if a["outcome"] != tracing.DUPLICATE_DELIVERY] or attempts
        last_end = worked[-1].get("ended_at")  # None: the last attempt began and recorded no end (yet)
        step.started_at, step.ended_at = str(worked[0]["started_at"]), str(last_end) if last_end else None
        step.attempts = [{k: a.get(k) for k in ("outcome", "started_at", "ended_at", "duration_s", "attempt",
                                                  "worker", "error", "retry_in_s") if a.get(k) is not None}
                         for a in attempts]
        step.key = step.key or str(attempts[0]["key"])
    return step


def _outputs(span: dict[str, Any]) -> str:
    outputs = span.get("outputs") or []
    return f"wrote {len(outputs)} object{'s' if len(outputs) != 1 else ''}" if outputs else "wrote nothing"


def _arrival(store: ObjectStore, trace_id: str, dataset: str | None, entry: dict[str, Any],
             by_stage: dict[str, list[dict[str, Any]]]) -> list[Step]:
    """The validate (or labels) step: the ledger's outcome, with the report, refusal or dead letter behind it."""
    stage = "labels" if entry.get("kind") == "labels" or str(entry.get("key", "")).startswith(keys.LABELS) \
        else "validate"
    attempts = by_stage.pop(stage, [])
    if not entry:
        if not attempts:
            return []
        last = attempts[-1]
        outcome = "in progress" if last["outcome"] in (tracing.DEFERRED, tracing.FAILED) else str(last["outcome"])
        return [_timed(Step(stage, outcome, "no ledger entry yet" if outcome != tracing.STARTED else ""), attempts)]
    ledger_key = keys.Ledger(dataset or keys.dataset_of(entry["key"]), trace_id[:16]).key
    step = Step(stage, str(entry["outcome"]), key=str(entry["key"]), documents=[ledger_key])
    outcome = entry["outcome"]
    if outcome == "validated":
        dv = str(entry["data_version"])
        step.detail = (f"data version {dv[:12]}: {entry.get('rows')} rows"
                       + (f", {entry['rows_quarantined']} quarantined" if entry.get("rows_quarantined") else "")
                       + (", drifted" if entry.get("drifted") else ""))
        manifest = keys.Validated(str(dataset), dv, labels=entry.get("kind") == "labels").key
        step.documents.append(manifest)
    elif outcome == "duplicate":
        dv = str(entry["data_version"])
        first = _first_drop_of(store, str(dataset), dv)
        step.detail = f"same bytes as data version {dv[:12]}" + (
            f", first dropped as {first['key']} (trace {_trace_of_entry(store, '', first)[:16]})" if first else "")
    elif outcome == "quarantined":
        report = store.get_json_or_none(str(entry["report"])) or {}
        step.detail = f"{entry.get('reason')}: {_first_sentence(str(report.get('message') or entry.get('message')))}"
        step.documents.append(str(entry["report"]))
    elif outcome == "refused":
        step.detail = _first_sentence(str(entry.get("message")))
        step.documents.append(str(entry.get("refusal")))
    elif outcome == "failed":
        step.outcome = "dead-lettered"
        step.detail = f"{entry.get('message')}; {entry.get('what_to_do')}"
        step.documents.append(str(entry.get("dead_letter")))
    if not attempts:
        step.ended_at = str(entry.get("at"))  # written before spans: only when it ended is known
    return [_timed(step, attempts)]


def _written(attempts: list[dict[str, Any]], root: str, suffix: str) -> list[str]:
    """The keys under `root` ending in `suffix` that these attempts wrote (their spans list them), in order."""
    found = [str(k) for a in attempts for k in a.get("outputs") or [] if str(k).startswith(root)
             and str(k).endswith(suffix)]
    return list(dict.fromkeys(found))


def _first_drop_of(store: ObjectStore, dataset: str, data_version: str) -> dict[str, Any] | None:
    for _, e in _ledger_entries(store, keys.Ledger.prefix(dataset)):
        if e.get("outcome") == "validated" and e.get("data_version") == data_version \
                and keys.dataset_of(str(e.get("key"))) == dataset:
            return e
    return None


def _first_sentence(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _downstream(store: ObjectStore, state: StateBackend, trace_id: str, dataset: str, entry: dict[str, Any],
                by_stage: dict[str, list[dict[str, Any]]], linked: list[str]) -> list[Step]:
    """Features, train, benchmark, register and the model event: this trace's own, or the coalesced run's."""
    steps: list[Step] = []
    attempts = by_stage.pop("features", [])
    # The spans name what each attempt wrote: read those documents; scan only for paths recorded without spans.
    written = _written(attempts, keys.FEATURES, "/" + keys.MANIFEST) or [
        k for k in store.keys(keys.FeatureSet.prefix(dataset)) if k.endswith("/" + keys.MANIFEST)]
    mine = [(k, f) for k, f in signed(store, written, "trace") if f.get("trace_id") == trace_id]
    if mine or attempts:
        key, fs = mine[0] if mine else (None, None)
        step = Step("features", "materialized" if fs else (attempts[-1]["outcome"] if attempts else "?"),
                    documents=[key] if key else [])
        if fs:
            step.detail = (f"feature set {fs['feature_set_version']}: {fs['rows']} rows from "
                           f"{len(fs['data_versions'])} data version{'s' if len(fs['data_versions']) != 1 else ''}")
            if not attempts:
                step.ended_at = str(fs.get("materialized_at"))
        elif attempts and not attempts[-1].get("outputs"):
            step.outcome, step.detail = "skipped", "wrote nothing (the feature set existed, or no retraining)"
        steps.append(_timed(step, attempts))
    # New labels wake training as `train-labels`: the same step of the path.
    attempts = sorted(by_stage.pop("train", []) + by_stage.pop("train-labels", []), key=lambda a: a["started_at"])
    own_keys = _written(attempts, keys.RUNS, "/" + keys.RUN)
    own = [r for r in (read_run(d) for _, d in signed(store, own_keys, "trace")) if r.get("trace_id") == trace_id]
    runs = [] if own else [read_run(d) for _, d in signed(
        store, [k for k in store.keys(keys.Run.prefix(dataset)) if k.endswith("/" + keys.RUN)], "trace")]
    own = own or [r for r in runs if r.get("trace_id") == trace_id]
    via = [r for r in runs if trace_id in (r.get("trace_links") or []) and r.get("trace_id") != trace_id]
    if not own and attempts:
        last = attempts[-1]
        outcome = "skipped" if last["outcome"] == tracing.DONE and not last.get("outputs") else str(last["outcome"])
        detail = ("no run of its own: " + (f"its data was trained in run {via[0]['run_id']} (trace "
                                           f"{via[0]['trace_id'][:16]})" if via else "a later drop superseded it")
                  if outcome == "skipped" else _outputs(last))
        documents = []
        if outcome == tracing.QUARANTINED and last.get("report"):
            # Training refused (too few rows, one class): why and what to do, from the train stage's report.
            report = store.get_json_or_none(str(last["report"])) or {}
            detail = _first_sentence(f"{report.get('message') or last.get('reason')} {report.get('what_to_do') or ''}",
                                     limit=320)
            documents = [str(last["report"])]
        steps.append(_timed(Step("train", outcome, detail, documents=documents), attempts))
    for run in own:
        steps += _run_path(store, state, trace_id, run, attempts, by_stage, None)
    for run in via if not own else []:
        other = str(run["trace_id"])
        linked.append(other)
        other_spans: dict[str, list[dict[str, Any]]] = {}
        for span in _span_docs(store, other):
            other_spans.setdefault(str(span["stage"]), []).append(span)
        trained = sorted(other_spans.pop("train", []) + other_spans.pop("train-labels", []),
                         key=lambda a: a["started_at"])
        steps += _run_path(store, state, other, run, trained, other_spans, other)
    # A duplicate's data goes on in the first drop's trace (the validate step names it), not in this one.
    if not own and not via and entry.get("outcome") == "validated" and not attempts:
        trained = [r for r in runs if entry.get("data_version") in (r.get("data_versions") or [])]
        if trained:
            steps.append(Step("train", "trained", f"its data version is in run {trained[0]['run_id']} "
                              "(a run written before correlation ids, or of another drop)",
                              documents=[keys.Run(dataset, trained[0]["run_id"]).key],
                              ended_at=str(trained[0].get("finished_at"))))
    return steps


def _run_path(store: ObjectStore, state: StateBackend, trace_id: str, run: dict[str, Any],
              train_spans: list[dict[str, Any]], spans: dict[str, list[dict[str, Any]]], via: str | None) -> list[Step]:
    """Train, benchmark, register and the model event of one run, under the trace `trace_id`."""
    run_key = keys.Run(run["dataset"], run["run_id"]).key
    metric = run.get("metric")
    score = ((run.get("holdout") or {}).get("metrics") or {}).get(metric)
    train = Step("train", "trained", f"run {run['run_id']}: {run.get('best_estimator')}"
                 + (f", {metric} {score:.4f}" if isinstance(score, float) else "")
                 + (f", coalesced {len(run['trace_links'])} drops" if len(run.get("trace_links") or []) > 1 else ""),
                 documents=[run_key], trace_id=via)
    if not train_spans:
        train.ended_at = str(run.get("finished_at"))
    steps = [_timed(train, train_spans)]
    model = str(run["model"])
    candidate_key = keys.Candidate(model, run["run_id"]).key
    candidate = store.get_json_or_none(candidate_key)
    attempts = spans.pop("benchmark", [])
    if candidate or attempts:
        step = Step("benchmark", str(candidate.get("outcome") or ("promote" if candidate.get("promote") else "reject"))
                    if candidate else str(attempts[-1]["outcome"]), documents=[candidate_key] if candidate else [],
                    trace_id=via)
        if candidate:
            # The leak first, in brief (column, policy): its gate reason is long and was cut before the column.
            leaks = leakage.brief(run.get("leakage"))
            others = [str(r) for r in (candidate.get("reasons") or [])[1:] if not str(r).startswith("leakage: ")]
            step.detail = _first_sentence("; ".join([*([leaks] if leaks else []), *others[:2]]) or "gate decided",
                                          limit=240 if leaks else 160)
            if not attempts:
                step.ended_at = str(candidate.get("benchmarked_at"))
        steps.append(_timed(step, attempts))
    registry = ModelRegistry(store, state)
    # From the index and the run's pointer: a few requests whatever the registry's length (it read every version
    # and replayed the whole history twice).
    found = registry.run_state(model, str(run["run_id"])) if registry.known(model) else None
    attempts = spans.pop("register", [])
    if found is None:
        if attempts:
            steps.append(_timed(Step("register", str(attempts[-1]["outcome"]), trace_id=via), attempts))
        return steps
    version, stage_now, gate_record = found
    records = [gate_record] if gate_record is not None else []
    register = Step("register", f"v{version['version']}", trace_id=via,
                    detail=f"decision {version.get('decision')}; "
                    + ", ".join(f"{actions(r)} (history {r['sequence']})" for r in records)
                    + f"; now {stage_now}",
                    documents=[f"{registry.base(model)}/versions/{version['version']:06d}.json",
                               *(f"{registry.base(model)}/history/{r['sequence']:08d}.json" for r in records)])
    if not attempts:
        register.ended_at = str(version.get("registered_at"))
    steps.append(_timed(register, attempts))
    sent = list(dict.fromkeys(keys.Published(model, str(event_id)).key
                              for a in attempts for event_id in a.get("published") or []))
    for key in sent or list(store.keys(keys.Published.prefix(model))):
        doc = store.get_json_or_none(key) or {}
        event = doc.get("event") or {}
        if tracing.parse_traceparent(event.get(tracing.TRACEPARENT)) == trace_id \
                and (event.get("data") or {}).get("transition") is not None:
            steps.append(Step("event", str(event.get("type")), f"event id {event.get('id')} (v{version['version']})",
                              ended_at=_iso(str(doc.get("published_at"))), documents=[key], trace_id=via))
    return steps
