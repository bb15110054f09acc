"""Where every dropped object is in the chain, read back from the bucket (the only state there is)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sluice.core.errors import SluiceError
from sluice.core.registry import ModelRegistry
from sluice.infra.state import StateBackend
from sluice.infra.store import S3Store


def dataset_status(store: S3Store, state: StateBackend, dataset: str) -> dict[str, Any]:
    """Arrivals with their furthest stage, the quarantine, and the dataset's model."""
    ledger = [store.get_json(k) for k in store.keys(f"ledger/{dataset}/")]
    feature_sets = [store.get_json(k) for k in store.keys(f"features/{dataset}/") if k.endswith("/manifest.json")]
    runs = [store.get_json(k) for k in store.keys(f"runs/{dataset}/") if k.endswith("/run.json")]
    registry = ModelRegistry(store, state)
    model = runs[0]["model"] if runs else dataset
    versions = registry.versions(model)
    champion = registry.alias(model)
    arrivals = []
    for entry in sorted(ledger, key=lambda e: e["at"]):
        dv = entry.get("data_version")
        stage = "labels" if entry.get("kind") == "labels" else entry["outcome"]
        detail: dict[str, Any] = {}
        if dv and entry["outcome"] == "validated" and entry.get("kind") != "labels":
            manifest = store.get_json_or_none(f"validated/{dataset}/{dv}/manifest.json")
            if manifest and manifest.get("drift"):
                detail["drift"] = manifest["drift"]
        if dv and entry["outcome"] in ("validated", "duplicate") and entry.get("kind") != "labels":
            fsvs = [f["feature_set_version"] for f in feature_sets if dv in f["data_versions"]]
            if fsvs:
                stage, detail["feature_sets"] = "featurized", fsvs
            its_runs = [r["run_id"] for r in runs if r["feature_set_version"] in fsvs]
            if its_runs:
                stage, detail["runs"] = "trained", its_runs
            its_versions = [v["version"] for v in versions if v["run_id"] in its_runs]
            if its_versions:
                stage, detail["versions"] = "registered", its_versions
        arrivals.append({**entry, "stage": stage, **detail})
    # Objects the notification has not reached a worker for yet (or no worker is running).
    seen = {a["key"] for a in arrivals}
    for key in store.keys(f"incoming/{dataset}/"):
        if key not in seen:
            arrivals.append({"key": key, "outcome": "pending", "stage": "arrived"})
    quarantine = [store.get_json(k) for k in store.keys(f"quarantine/{dataset}/") if k.endswith("/report.json")]
    finished = {r["run_id"] for r in runs}
    training = [store.get_json(k) for k in store.keys(f"runs/{dataset}/") if k.endswith("/progress.json")
                and k.split("/")[2] not in finished]
    running = [t for t in training if t.get("status") == "running"]
    return {
        "dataset": dataset,
        "arrivals": arrivals,
        "quarantine": quarantine,
        "training": running,
        "waiting": None if running else waiting(store, dataset, feature_sets, runs),
        "model": {"name": model, "versions": len(versions),
                  "champion": champion["version"] if champion else None},
    }


def waiting(store: S3Store, dataset: str, feature_sets: list[dict[str, Any]], runs: list[dict[str, Any]],
            now: datetime | None = None) -> dict[str, Any] | None:
    """When the newest feature set has no run yet: when the debounce lets its training start (0: due now)."""
    from sluice.core.contract import load_contract

    if not feature_sets:
        return None
    newest = max(feature_sets, key=lambda f: (f["materialized_at"], len(f["data_versions"])))
    if any(r["feature_set_version"] == newest["feature_set_version"] for r in runs):
        return None
    try:
        debounce_s = load_contract(store, dataset).training.debounce_s
    except SluiceError:
        return None
    starts = datetime.fromisoformat(newest["materialized_at"].replace("Z", "+00:00")) + timedelta(seconds=debounce_s)
    left = (starts - (now or datetime.now(UTC))).total_seconds()
    return {"feature_set_version": newest["feature_set_version"], "starts_at": starts.isoformat(),
            "starts_in_s": round(max(0.0, left), 1)}


def data_versions(store: S3Store, dataset: str) -> list[dict[str, Any]]:
    """The dataset's snapshot: every validated data version, in the order they were validated."""
    docs = [store.get_json(k) for k in store.keys(f"validated/{dataset}/") if k.endswith("/manifest.json")]
    return sorted(docs, key=lambda d: d["validated_at"])


def datasets(store: S3Store) -> list[str]:
    """Every dataset that has a contract or an arrival."""
    names = {k.split("/")[1].removesuffix(".yaml") for k in store.keys("contracts/") if k.count("/") == 1}
    names |= {k.split("/")[1] for k in store.keys("ledger/")}
    return sorted(names)


def dead_letters(store: S3Store) -> list[dict[str, Any]]:
    """Messages that exhausted their retries, or could not be parsed at all."""
    return [store.get_json(k) for k in store.keys("deadletter/")]
