"""Newly arrived labels re-score the champion and the recent challengers: a backtest, kept in the registry.

    validated-labels/<dataset>/<lv>/data.parquet  ->  registry/<model>/backtests/<lv>.json
"""

from __future__ import annotations

from typing import Any

import polars as pl

from sluice.core import keys
from sluice.core.context import Context
from sluice.core.runtime import dataset_of
from sluice.events.s3 import ObjectCreated
from sluice.ml import modeling
from sluice.ml.bundle import load_version
from sluice.ml.contract import load_contract
from sluice.ml.features import latest_feature_set, point_in_time_join, read_parquet
from sluice.ml.registry import ModelRegistry

RECENT = 3  # challengers re-scored besides the champion


def handle(event: ObjectCreated, ctx: Context) -> list[Any]:
    """Score the champion and the last few other versions on the new labels, point-in-time joined."""
    dataset = dataset_of(event.key)
    label_version = keys.Validated.parse(event.key).version
    contract = load_contract(ctx.store, dataset, ctx.extensions)
    out = keys.Backtest(contract.model, label_version).key
    if ctx.store.exists(out):
        return []
    registry = ModelRegistry(ctx.store, ctx.state)
    newest = registry.page(contract.model, 1, RECENT + 1)["versions"]  # newest first, from the registry's index
    features = latest_feature_set(ctx.store, dataset)
    if not newest or features is None:
        ctx.log.info("skip  backtest   %s: no registered model yet", dataset)
        return []
    champion = registry.alias(contract.model)
    champion_version = int(champion["version"]) if champion else None
    champion_doc = registry.version(contract.model, champion_version) if champion_version else None
    chosen = [champion_doc] if champion_doc else []
    chosen += [v for v in newest if v["version"] != champion_version][:RECENT]
    labels = read_parquet(ctx.store, event.key)
    feature_rows = read_parquet(ctx.store,
                                keys.FeatureSet(dataset, features.feature_set_version, "features.parquet").key)
    frame = point_in_time_join(labels, feature_rows, contract)
    results = []
    for version in chosen:
        loaded = load_version(ctx.store, version, extensions=ctx.extensions)
        encoding = loaded.encoding
        missing = [c for c in encoding.columns if c not in frame.columns]
        entry: dict[str, Any] = {"version": version["version"],
                                 "role": "champion" if version["version"] == champion_version else "challenger"}
        if missing:
            entry["skipped"] = f"its features {missing[:5]} are not in feature set {features.feature_set_version}"
        else:
            y = encoding.labels(frame)
            known = y >= 0
            scored = frame.filter(pl.Series(known))
            n_classes = len(encoding.classes) if encoding.classes else None
            scores = loaded.score_features(scored)
            entry.update(rows=int(known.sum()),
                         metrics={contract.metric: modeling.score(contract.metric, y[known], scores, n_classes)})
        results.append(entry)
    ctx.store.put_json(out, {
        "model": contract.model, "dataset": dataset, "label_version": label_version, "labels": labels.height,
        "joined_rows": int(frame.height), "feature_set_version": features.feature_set_version,
        "metric": contract.metric, "results": results, "at": ctx.timestamp()}, if_absent=True)
    ctx.log.info("wrote backtest   %s on %d new labels: %s", contract.model, labels.height, ", ".join(
        f"v{r['version']} {r['metrics'][contract.metric]:.4f}" for r in results if "metrics" in r))
    return []
