"""Stage 5 and 6: the benchmarked candidate becomes a registry version; a promotion is published.

    registry/<model>/candidates/<run id>.candidate.json  ->  registry/<model>/versions/<n>.json,
                                                            aliases/champion.json, history/; SNS event
"""

from __future__ import annotations

from typing import Any

from sluice.core.context import Context
from sluice.core.registry import ModelRegistry
from sluice.events.model import PROMOTED, REJECTED, ModelEvent
from sluice.events.pipeline import CandidateBenchmarked
from sluice.events.s3 import ObjectCreated


def handle(event: ObjectCreated, ctx: Context) -> list[Any]:
    """Register the candidate (once per run) and return the model event to publish."""
    candidate = CandidateBenchmarked.from_dict(ctx.store.get_json(event.key))
    run = ctx.store.get_json(candidate.run_key)
    registry = ModelRegistry(ctx.store, ctx.state)
    model = candidate.model
    promote = candidate.promote
    reasons = list(candidate.reasons)
    champion = registry.alias(model)
    current = int(champion["version"]) if champion else None
    if promote and current != candidate.compared_with:
        # Another candidate was promoted while this one was benchmarked: the comparison is stale.
        promote = False
        reasons = ["reject", f"the champion changed (v{candidate.compared_with} -> v{current}) while this "
                   "candidate was benchmarked; drop new data or retrain to compare against the new champion"]
    model_artifact = run["artifacts"]["model"]
    doc = {
        "run_id": run["run_id"],
        "run_key": candidate.run_key,
        "dataset": run["dataset"],
        "metric": candidate.metric,
        "scores": candidate.scores,
        "reasons": reasons,
        "artifact": {"uri": ctx.store.uri(model_artifact["key"]), "sha256": model_artifact["sha256"],
                     "format": "lightgbm-text"},
        "lineage": {"data_versions": run["data_versions"], "sources": run["sources"],
                    "feature_set_version": run["feature_set_version"], "run_id": run["run_id"],
                    "contract_version": run["contract_version"]},
    }
    version, created = registry.register(model, doc, promote=promote, at=ctx.timestamp())
    alias = registry.alias(model)
    ctx.log.info("%s register   %s v%d (%s)", "wrote" if created else "same ", model, version["version"],
                 version["decision"])
    is_promoted = version["decision"] == "promote"
    return [ModelEvent(
        type=PROMOTED if is_promoted else REJECTED,
        model=model,
        dataset=run["dataset"],
        version=version["version"],
        time=version["registered_at"],
        source=ctx.source,
        data={
            "previous_version": (alias or {}).get("previous") if is_promoted else current,
            "metric": {"name": version["metric"], **version["scores"]},
            "reasons": version["reasons"],
            "artifact": version["artifact"],
            "lineage": version["lineage"],
        },
    )]
