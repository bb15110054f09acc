"""Stage 5 and 6: the benchmarked candidate becomes a registry version with a model card; the decision is published.

    registry/<model>/candidates/<run id>.candidate.json  ->  registry/<model>/versions/<n>.json and <n>.md,
                                                            history/, aliases/; SNS event
"""

from __future__ import annotations

from typing import Any

from sluice.core.context import Context
from sluice.events.model import for_transition
from sluice.events.pipeline import CandidateBenchmarked
from sluice.events.run import read as read_run
from sluice.events.s3 import ObjectCreated
from sluice.ml.card import render_card
from sluice.ml.registry import ModelRegistry

REGISTERED_BY = "sluice/register"


def handle(event: ObjectCreated, ctx: Context) -> list[Any]:
    """Register the candidate (once per run), write its card, and return the model event to publish."""
    candidate = CandidateBenchmarked.from_dict(ctx.store.get_json(event.key))
    run = read_run(ctx.store.get_json(candidate.run_key))
    registry = ModelRegistry(ctx.store, ctx.state)
    model = candidate.model
    # A refitted run ships its refit (trained on train + holdout); the gate judged the holdout-evaluated bundle,
    # which is kept beside it so a later gate scores this version on rows it never saw.
    refit = run.get("refit")
    model_artifact = refit["model"] if refit else run["artifacts"]["model"]
    doc = {
        "run_id": run["run_id"],
        "run_key": candidate.run_key,
        "dataset": run["dataset"],
        "metric": candidate.metric,
        "scores": candidate.scores,
        "reasons": list(candidate.reasons),
        "gate": candidate.gate,
        "benchmark": candidate.benchmark,
        "artifact": {"uri": ctx.store.uri(model_artifact["key"]), "sha256": model_artifact["sha256"],
                     "format": model_artifact.get("format") or run.get("model_format", "lightgbm-text"),
                     "bytes": model_artifact.get("bytes")},
        # What `sluice.load_model` reads: the registry's record of the bundle is what it is checked against.
        **({"bundle": refit["bundle"] if refit else run["bundle"]} if run.get("bundle") else {}),
        **({"evaluated_bundle": run["bundle"]} if refit else {}),
        "lineage": {"data_versions": run["data_versions"], "sources": run["sources"],
                    "feature_set_version": run["feature_set_version"], "run_id": run["run_id"],
                    "contract_version": run["contract_version"]},
        # Columns that gave the target away (ml/leakage.py), and what the contract's policy did about them.
        **({"leakage": run["leakage"]} if run.get("leakage") else {}),
        **({"trace_id": candidate.trace_id, "trace_links": candidate.trace_links} if candidate.trace_id else {}),
        "training": {"params": run["params"], "best_estimator": run["best_estimator"],
                     "best_config": run["best_config"], "holdout": run["holdout"],
                     "durations_s": run["durations_s"],
                     **({"refit": {k: refit[k] for k in ("rows", "fit_s", "bag") if k in refit}} if refit else {}),
                     **({"refit_skipped": run["refit_skipped"]} if run.get("refit_skipped") else {}),
                     **({"blend": run["blend"]} if run.get("blend") else {}),
                     "environment": run["environment"]},
    }
    outcome = candidate.outcome or ("promote" if candidate.promote else "reject")
    reg = registry.register(model, doc, outcome=outcome, compared_with=candidate.compared_with,
                            at=ctx.timestamp(), by=REGISTERED_BY)
    version = reg.version
    previous = registry.version(model, version["compared_with"]) if version.get("compared_with") else None
    ctx.store.put(registry.card_key(model, version["version"]), render_card(version, previous).encode(),
                  if_absent=True, content_type="text/markdown")
    ctx.log.info("%s register   %s v%d (%s, %s)", "wrote" if reg.created else "same ", model, version["version"],
                 version["decision"], reg.record["action"])
    return [for_transition(version, reg.record, ctx.source)]
