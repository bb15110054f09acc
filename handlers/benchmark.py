"""Stage 4: the promotion gate. The candidate is compared with the current champion (or, for a model's first
version, the naive baseline) on the same holdout rows, and its inference is benchmarked (ml/gate.py).

    runs/<dataset>/<run id>/run.json  ->  registry/<model>/candidates/<run id>.candidate.json
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import polars as pl

from sluice.core import keys
from sluice.core.context import Context
from sluice.events.pipeline import CandidateBenchmarked
from sluice.events.run import read as read_run
from sluice.events.s3 import ObjectCreated
from sluice.ml import bundle, gate, leakage
from sluice.ml.contract import load_contract
from sluice.ml.registry import ModelRegistry
from sluice.ml.runs import artifact


def handle(event: ObjectCreated, ctx: Context) -> list[Any]:
    """Score candidate, champion and baseline on the candidate's holdout, benchmark inference; write the verdict."""
    run = read_run(ctx.store.get_json(event.key))
    contract = load_contract(ctx.store, run["dataset"], ctx.extensions)
    model = run["model"]
    out_key = keys.Candidate(model, run["run_id"]).key
    if ctx.store.exists(out_key):
        return []
    holdout = pl.read_parquet(io.BytesIO(artifact(ctx.store, run, "holdout")))
    # The candidate and the champion are loaded exactly as users load them (ml/bundle.py), and checked against
    # the run's and the registry's records of their bundles.
    t0 = time.perf_counter()
    candidate = bundle.load_run(ctx.store, run, ctx.extensions)
    load_ms = (time.perf_counter() - t0) * 1000
    encoding = candidate.encoding
    y = encoding.labels(holdout)
    known = y >= 0
    holdout, y = holdout.filter(pl.Series(known)), y[known]
    n_classes = len(encoding.classes) if encoding.classes else None
    candidate_scores = candidate.score_features(holdout)
    baseline_scores = _baseline(run, len(y))

    champion = ModelRegistry(ctx.store, ctx.state).champion(model)
    if champion is None:
        reference_scores, reference_name = baseline_scores, "naive baseline"
    else:
        champion_model = bundle.load_version(ctx.store, champion, evaluated=True, extensions=ctx.extensions)
        reference_scores = champion_model.score_features(holdout)
        reference_name = f"champion v{champion['version']}"
    # Size and latency are the shipped model's (the refit on train + holdout, when the run has one); the metric
    # is the evaluated model's, on rows it never saw.
    refit = run.get("refit")
    if refit:
        t0 = time.perf_counter()
        shipped = bundle.read_bundle(ctx.store.get, refit["bundle"]["key"], expected_sha256=refit["bundle"]["sha256"],
                                     extensions=ctx.extensions)
        load_ms = (time.perf_counter() - t0) * 1000
    benchmark = gate.inference_benchmark(shipped if refit else candidate, holdout, load_ms=load_ms)
    verdict = gate.evaluate(contract, holdout, y, candidate_scores, reference_scores, baseline=baseline_scores,
                            reference_name=reference_name, n_classes=n_classes, benchmark=benchmark,
                            refusals=leakage.reasons(run.get("leakage")))
    metric = verdict.metric
    decision = CandidateBenchmarked(
        run_id=run["run_id"], run_key=event.key, dataset=run["dataset"], model=model, metric=contract.metric,
        higher_is_better=contract.higher_is_better,
        scores={"candidate": metric["candidate"], "champion": metric["reference"] if champion else None,
                "baseline": metric["baseline"]},
        compared_with=champion["version"] if champion else None, holdout_rows=len(y),
        promote=verdict.outcome == gate.PROMOTE, reasons=[verdict.outcome, *verdict.reasons],
        benchmarked_at=ctx.timestamp(), outcome=verdict.outcome, gate=verdict.to_dict(), benchmark=benchmark,
        trace_id=run.get("trace_id"), trace_links=list(run.get("trace_links") or []),
    )
    ctx.store.put_json(out_key, decision.to_dict(), if_absent=True)
    ctx.log.info("wrote benchmark  %s: %s; p99 %.2f ms, %.0f rows/s", run["run_id"], "; ".join(decision.reasons),
                 benchmark["p99_ms"], benchmark["rows_per_s"])
    return []


def _baseline(run: dict[str, Any], n: int) -> np.ndarray:
    """The naive model's scores for `n` holdout rows: constant, as recorded by the run (training priors or mean)."""
    row = np.asarray(run["holdout"]["baseline_row"], dtype=float)
    return np.tile(row, (n, 1)) if row.ndim == 1 and row.size > 1 else np.full(n, float(row.reshape(-1)[0]))
