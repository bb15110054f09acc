"""Stage 4: the candidate is compared with the current champion (or the naive baseline) on the same holdout.

    runs/<dataset>/<run id>/run.json  ->  registry/<model>/candidates/<run id>.candidate.json
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import polars as pl

from sluice.core import modeling
from sluice.core.context import Context
from sluice.core.contract import load_contract
from sluice.core.errors import TransientError
from sluice.core.registry import ModelRegistry
from sluice.events.pipeline import CandidateBenchmarked
from sluice.events.s3 import ObjectCreated
from sluice.infra.store import S3Store


def handle(event: ObjectCreated, ctx: Context) -> list[Any]:
    """Score candidate, champion and baseline on the candidate's holdout; write the decision."""
    run = ctx.store.get_json(event.key)
    contract = load_contract(ctx.store, run["dataset"])
    model = run["model"]
    out_key = f"registry/{model}/candidates/{run['run_id']}.candidate.json"
    if ctx.store.exists(out_key):
        return []
    holdout = pl.read_parquet(io.BytesIO(artifact(ctx.store, run, "holdout")))
    encoding = modeling.Encoding.from_dict(artifact_json(ctx.store, run, "encoding"))
    y = encoding.labels(holdout)
    known = y >= 0
    holdout, y = holdout.filter(pl.Series(known)), y[known]
    n_classes = len(encoding.classes) if encoding.classes else None
    candidate = modeling.score(contract.metric, y, _scores(ctx.store, run, holdout), n_classes)
    baseline = run["holdout"]["baseline"][contract.metric]

    registry = ModelRegistry(ctx.store, ctx.state)
    champion = registry.champion(model)
    margin = contract.promotion.min_improvement
    hib = contract.higher_is_better
    reasons: list[str] = []
    champion_score = None
    if champion is None:
        promote = modeling.better(candidate, baseline, hib, margin)
        reasons.append(f"first model: {contract.metric} {candidate:.4f} vs naive baseline {baseline:.4f} "
                       f"(needs to be better by more than {margin}) on {len(y)} holdout rows")
    else:
        champion_run = ctx.store.get_json(champion["run_key"])
        champion_score = modeling.score(contract.metric, y, _scores(ctx.store, champion_run, holdout), n_classes)
        promote = modeling.better(candidate, champion_score, hib, margin)
        reasons.append(f"{contract.metric} {candidate:.4f} vs champion v{champion['version']} {champion_score:.4f} "
                       f"(needs to be better by more than {margin}) on the same {len(y)} holdout rows")
        if not modeling.better(candidate, baseline, hib, 0.0):
            promote = False
            reasons.append(f"does not beat the naive baseline ({baseline:.4f})")
    reasons.insert(0, "promote" if promote else "reject")
    decision = CandidateBenchmarked(
        run_id=run["run_id"], run_key=event.key, dataset=run["dataset"], model=model, metric=contract.metric,
        higher_is_better=hib, scores={"candidate": candidate, "champion": champion_score, "baseline": baseline},
        compared_with=champion["version"] if champion else None, holdout_rows=len(y), promote=promote,
        reasons=reasons, benchmarked_at=ctx.timestamp(),
    )
    ctx.store.put_json(out_key, decision.to_dict(), if_absent=True)
    ctx.log.info("wrote benchmark  %s: %s", run["run_id"], "; ".join(reasons))
    return []


def artifact(store: S3Store, run: dict[str, Any], name: str) -> bytes:
    """An artifact's bytes, checked against the sha256 the run recorded."""
    meta = run["artifacts"][name]
    data = store.get(meta["key"])
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise TransientError(f"{meta['key']}: sha256 mismatch with run {run['run_id']}; refusing to load it")
    return data


def artifact_json(store: S3Store, run: dict[str, Any], name: str) -> Any:
    """A JSON artifact, checked."""
    import json

    return json.loads(artifact(store, run, name))


def _scores(store: S3Store, run: dict[str, Any], holdout: pl.DataFrame) -> np.ndarray:
    encoding = modeling.Encoding.from_dict(artifact_json(store, run, "encoding"))
    fmt = run["artifacts"]["model"].get("format", modeling.LGBM_TEXT)
    return modeling.predict_model(fmt, artifact(store, run, "model"), encoding.features(holdout), run["task"])
