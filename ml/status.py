"""Where every dropped object is in the chain, read back from the bucket (the only state there is)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sluice.core import keys
from sluice.core.app import Pipeline
from sluice.core.errors import IntegrityError, SluiceError
from sluice.core.ports import ObjectStore, StateBackend
from sluice.events.run import read as read_run
from sluice.ml.registry import ModelRegistry

log = logging.getLogger("sluice")


def dataset_status(store: ObjectStore, state: StateBackend, dataset: str, *, pipeline: Pipeline) -> dict[str, Any]:
    """Arrivals with their furthest stage, the quarantine, and the dataset's model (`pipeline`: the running
    stages, whose time limits say when an arrival is stuck)."""
    untrusted: list[dict[str, str]] = []
    ledger = trusted(store, store.keys(keys.Ledger.prefix(dataset)), untrusted)
    feature_sets = trusted(store, [k for k in store.keys(keys.FeatureSet.prefix(dataset))
                                   if k.endswith("/manifest.json")], untrusted)
    runs = [read_run(doc) for doc in trusted(store, [k for k in store.keys(keys.Run.prefix(dataset))
                                                     if k.endswith("/run.json")], untrusted)]
    registry = ModelRegistry(store, state)
    model = runs[0]["model"] if runs else dataset
    # A planted alias is named here; the registry reads the champion from its index instead.
    alias_key = f"{registry.base(model)}/aliases/champion.json"
    [alias_file, *_] = [*trusted(store, [alias_key], untrusted, missing_ok=True), None]
    try:
        versions = list(registry.indexed_versions(model)[1].values())  # a request per 20 versions, not one each
        champion = registry.alias(model)
        if alias_file is not None and champion is not None and alias_file.get("version") != champion["version"]:
            # A signed file of an earlier state, copied back: nothing follows it, but someone wrote it.
            untrusted.append({"key": alias_key, "problem": (
                f"{alias_key}: says v{alias_file.get('version')}, the signed index says v{champion['version']} "
                f"(an earlier alias copied back, or a write that did not finish); every reader follows the index. "
                f"`sluice models reindex {model}` rewrites it; `sluice models verify {model}` checks the rest")})
    except IntegrityError as exc:  # a forged alias or version: `models verify` lists the problems
        versions, champion = [], None
        named = str(exc).split(": ", 1)[0]  # the message starts with the document's key
        untrusted.append({"key": named if named.startswith(f"registry/{model}/") else f"registry/{model}/",
                          "problem": str(exc)})
    reports = {k: doc for k in store.keys(keys.Quarantine.prefix(dataset)) if k.endswith("/report.json")
               for doc in trusted(store, [k], untrusted)}
    quarantine = list(reports.values())
    not_trained = training_quarantines(dataset, reports)
    told = {q["key"] for q in not_trained.values()}
    arrivals = []
    for entry in sorted(ledger, key=lambda e: e["at"]):
        if not str(entry.get("key", "")).startswith((keys.INCOMING, keys.LABELS)) and entry.get("report") in told:
            # The train stage's quarantine of a feature set (its manifest is no drop): told on the line of each
            # drop in the set (below), not on a line of its own; the quarantine keeps the report.
            continue
        dv = entry.get("data_version")
        stage = "labels" if entry.get("kind") == "labels" else entry["outcome"]
        detail: dict[str, Any] = {}
        if entry["outcome"] == "quarantined" and str(entry.get("report", "")).endswith("/report.json"):
            # Replayed after a contract fix: its rows went through again as a drop of their own (its own line).
            replays = list(store.keys(str(entry["report"]).removesuffix("report.json") + "replays/"))
            if replays:
                stage, detail["replayed"] = "replayed", len(replays)
        if dv and entry["outcome"] == "validated" and entry.get("kind") != "labels":
            manifests = trusted(store, [keys.Validated(dataset, dv).key], untrusted, missing_ok=True)
            if manifests and manifests[0].get("drift"):
                detail["drift"] = manifests[0]["drift"]
        if dv and entry["outcome"] in ("validated", "duplicate") and entry.get("kind") != "labels":
            fsvs = [f["feature_set_version"] for f in feature_sets if dv in f["data_versions"]]
            if fsvs:
                stage, detail["feature_sets"] = "featurized", fsvs
            its_runs = [r["run_id"] for r in runs if r["feature_set_version"] in fsvs]
            if its_runs:
                stage, detail["runs"] = "trained", its_runs
            leaks = [{"run_id": r["run_id"], **{k: r["leakage"][k] for k in ("policy", "action", "columns")}}
                     for r in runs if r["run_id"] in its_runs and (r.get("leakage") or {}).get("findings")]
            if leaks:
                detail["leakage"] = leaks
            its_versions = [v["version"] for v in versions if v["run_id"] in its_runs]
            if its_versions:
                stage, detail["versions"] = "registered", its_versions
            newest = _newest(feature_sets, fsvs)
            if not its_runs and newest in not_trained:
                # The train stage quarantined its newest feature set: the drop's path ended there.
                stage, detail["training"] = "not trained", not_trained[newest]
        arrivals.append({**entry, "stage": stage, **detail})
    arrivals += pending_arrivals(store, state, dataset, {(a["key"], a.get("etag")) for a in arrivals},
                                 pipeline=pipeline)
    finished = {r["run_id"] for r in runs}
    training = trusted(store, [k for k in store.keys(keys.Run.prefix(dataset)) if k.endswith("/progress.json")
                               and keys.Run.parse(k).run_id not in finished], untrusted)
    running = [_staleness(t) for t in training if t.get("status") == "running"]
    return {
        "dataset": dataset,
        "arrivals": arrivals,
        "quarantine": quarantine,
        "training": running,
        "waiting": None if any(t.get("status") == "running" for t in running)
        else waiting(store, dataset, feature_sets, runs, set(not_trained)),
        "model": {"name": model, "versions": len(versions),
                  "champion": champion["version"] if champion else None},
        "untrusted": untrusted,
        "refused": open_refusals(store, dataset),
    }


def training_quarantines(dataset: str, reports: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Feature set version -> what the train stage said when it quarantined training on it (too few rows, one
    class, ...): the outcome of every drop in that set, and no training is due for it any more. The report names
    the set (a report of an older worker only by its trigger, the set's manifest). The newest report wins."""
    out: dict[str, dict[str, Any]] = {}
    for key, report in sorted(reports.items(), key=lambda kr: str(kr[1].get("quarantined_at", ""))):
        if report.get("stage") not in ("train", "train-labels"):
            continue
        fsv = report.get("feature_set_version")
        source = str((report.get("source") or {}).get("key", ""))
        if not fsv and source.startswith(keys.FeatureSet.prefix(dataset)):
            fsv = keys.FeatureSet.parse(source).version
        if fsv:
            out[str(fsv)] = {
                "outcome": "quarantined", "stage": str(report["stage"]), "feature_set_version": str(fsv),
                "message": report.get("message"), "what_to_do": report.get("what_to_do"),
                "key": key, "at": report.get("quarantined_at")}
    return out


def open_refusals(store: ObjectStore, dataset: str) -> list[dict[str, Any]]:
    """Events a stage after validation refused and nobody has re-driven, whose object is still there: work that
    stopped (a drop's own refusal is its ledger outcome). Without this, a drop whose features were refused showed
    as validated, as if on its way."""
    out = []
    for key in store.keys(keys.Refused.prefix(dataset)):
        record = store.get_json_or_none(key)
        if not record or record.get("redriven") or record.get("stage") in ("validate", "labels"):
            continue
        event = record.get("event") or {}
        info = store.head(str(event.get("key", "")))
        # Other bytes there now (restored from the version history): reconcile re-drives them as any gap, and a
        # stage that refuses them again writes a refusal of its own; this one is over.
        if info is not None and info.etag == event.get("etag"):
            out.append(record)
    return sorted(out, key=lambda r: str(r.get("at")))


def trusted(store: ObjectStore, found: Iterable[str], untrusted: list[dict[str, str]], *,
            missing_ok: bool = False) -> list[dict[str, Any]]:
    """The documents among `found` whose signatures hold. A planted or edited one goes to `untrusted` with why:
    status reports it (a stage that meets it refuses it) instead of failing as a whole."""
    docs = []
    for key in found:
        try:
            doc = store.get_json_or_none(key) if missing_ok else store.get_json(key)
        except IntegrityError as exc:
            untrusted.append({"key": key, "problem": str(exc)})
            continue
        if doc is not None:
            docs.append(doc)
    return docs


def _staleness(progress: dict[str, Any]) -> dict[str, Any]:
    """A fit that has not reported past its budget (and five minutes of grace) is no longer running: its worker
    died; the run is trained again by the redelivered message or by reconcile."""
    try:
        at = datetime.fromisoformat(str(progress["at"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return progress
    silent_s = (datetime.now(UTC) - at).total_seconds()
    if silent_s > float(progress.get("budget_s") or 0) + 300:
        return {**progress, "status": "interrupted", "silent_s": round(silent_s)}
    return progress


def pending_arrivals(store: ObjectStore, state: StateBackend, dataset: str, done: set[tuple[str, Any]],
                     now: datetime | None = None, *, pipeline: Pipeline) -> list[dict[str, Any]]:
    """Drops with no outcome yet: waiting for a worker, in progress (and where), or stuck past their time limit."""
    from sluice.core.ports import IN_PROGRESS
    from sluice.core.runtime import claim_key, route_time_limit_s
    from sluice.ml.reconcile import event_for, listing

    now = now or datetime.now(UTC)
    routes = {r.name: r for r in pipeline.routes}
    out = []
    for prefix, stage in (("incoming", "validate"), ("labels", "labels")):
        for obj in listing(store, f"{prefix}/{dataset}/"):
            if (obj.key, obj.etag) in done:
                continue
            record = state.record(claim_key(stage, event_for(store, obj)))
            age = obj.age_s(now)
            entry: dict[str, Any] = {"key": obj.key, "etag": obj.etag, "outcome": "pending", "age_s": round(age)}
            if record is not None and record.status == IN_PROGRESS:
                entry.update(stage="in progress", owner=record.owner)
            elif age > route_time_limit_s(routes[stage]):
                entry.update(stage="stuck", what_to_do="`sluice reconcile` re-drives it (a worker does so every "
                                                       "minute); `sluice deadletter list` shows failures")
            else:
                entry.update(stage="waiting")
            out.append(entry)
    return out


def _recency(feature_set: dict[str, Any]) -> tuple[str, int]:
    """How feature sets are ordered, newest last (as latest_feature_set orders them)."""
    return feature_set["materialized_at"], len(feature_set["data_versions"])


def _newest(feature_sets: list[dict[str, Any]], among: list[str]) -> str | None:
    """The newest of the feature sets `among` names."""
    mine = [f for f in feature_sets if f["feature_set_version"] in among]
    return max(mine, key=_recency)["feature_set_version"] if mine else None


def waiting(store: ObjectStore, dataset: str, feature_sets: list[dict[str, Any]], runs: list[dict[str, Any]],
            not_trained: Collection[str] = (), now: datetime | None = None) -> dict[str, Any] | None:
    """When the newest feature set has no run yet: when the debounce lets its training start (0: due now).
    None once the train stage has ended it: a run, or a quarantine (`not_trained`: those feature set versions)."""
    from sluice.ml.contract import load_contract

    if not feature_sets:
        return None
    newest = max(feature_sets, key=_recency)
    if any(r["feature_set_version"] == newest["feature_set_version"] for r in runs):
        return None
    if newest["feature_set_version"] in not_trained:
        return None
    try:
        debounce_s = load_contract(store, dataset).training.debounce_s
    except SluiceError:
        return None
    starts = datetime.fromisoformat(newest["materialized_at"].replace("Z", "+00:00")) + timedelta(seconds=debounce_s)
    left = (starts - (now or datetime.now(UTC))).total_seconds()
    return {"feature_set_version": newest["feature_set_version"], "starts_at": starts.isoformat(),
            "starts_in_s": round(max(0.0, left), 1)}


def data_versions(store: ObjectStore, dataset: str) -> list[dict[str, Any]]:
    """The dataset's snapshot: every validated data version, in the order they were validated."""
    untrusted: list[dict[str, str]] = []
    docs = trusted(store, [k for k in store.keys(keys.Validated.prefix(dataset)) if k.endswith("/manifest.json")],
                   untrusted)
    for bad in untrusted:
        log.warning("skipped %s: %s", bad["key"], bad["problem"])
    return sorted(docs, key=lambda d: d["validated_at"])


def datasets(store: ObjectStore) -> list[str]:
    """Every dataset that has a contract or an arrival."""
    names = {keys.Contract.parse(k).dataset for k in store.keys(keys.CONTRACTS)
             if k.count("/") == 1 and k.endswith(".yaml")}
    names |= {keys.Ledger.parse(k).dataset for k in store.keys(keys.LEDGER)}
    return sorted(names)


def dead_letters(store: ObjectStore) -> list[dict[str, Any]]:
    """Messages that exhausted their retries, or could not be parsed at all."""
    return [store.get_json(k) for k in store.keys(keys.DEADLETTER)]
