"""Correcting past records: re-compute registered versions' gate scores with the current loader.

Versions registered before the loader scored models by their own feature names may have been judged on
mis-ordered columns. Their documents are immutable, so a correction is a `rescored` history record holding the
scores before and after; the gate's decision itself is not re-taken (promote or roll back by hand if it matters).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from typing import Any

import polars as pl

from sluice.core.app import Extensions
from sluice.core.errors import SluiceError
from sluice.events.run import read as read_run
from sluice.ml import modeling
from sluice.ml.bundle import load_version
from sluice.ml.registry import ModelRegistry
from sluice.ml.runs import artifact

TOLERANCE = 1e-6  # the gate records scores rounded to 6 decimals


def version_scores(registry: ModelRegistry, model: str, version: dict[str, Any],
                   extensions: Extensions | None = None) -> dict[str, Any]:
    """The version's gate scores on its own holdout, computed now: candidate, the champion it was compared with,
    and the naive baseline as recorded. `extensions`: the app's feature functions and learners, for models that
    name them."""
    store = registry.store
    run = read_run(store.get_json(version["run_key"]))
    holdout = pl.read_parquet(io.BytesIO(artifact(store, run, "holdout")))
    candidate = load_version(store, version, evaluated=True, extensions=extensions)
    y = candidate.encoding.labels(holdout)
    known = y >= 0
    holdout, y = holdout.filter(pl.Series(known)), y[known]
    n_classes = len(candidate.classes) if candidate.classes else None
    metric = version["metric"]
    after: dict[str, Any] = {
        "candidate": modeling.score(metric, y, candidate.score_features(holdout), n_classes),
        "champion": None, "baseline": version["scores"].get("baseline"),
    }
    compared = version.get("compared_with")
    if compared:
        reference = registry.version(model, int(compared))
        if reference is not None:
            judged = load_version(store, reference, evaluated=True, extensions=extensions)
            after["champion"] = modeling.score(metric, y, judged.score_features(holdout), n_classes)
    return after


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    for k in ("candidate", "champion"):
        x, y = a.get(k), b.get(k)
        if x is None or y is None:
            if x is not y:
                return False
        elif not math.isclose(float(x), float(y), rel_tol=0, abs_tol=TOLERANCE):
            return False
    return True


def rescore(registry: ModelRegistry, model: str, *, by: str, at: str, dry_run: bool = False,
            extensions: Extensions | None = None) -> Iterator[str]:
    """Re-score every version; yield one line per version saying what changed and whether it was recorded."""
    for version in registry.versions(model):
        number = version["version"]
        before = {k: version["scores"].get(k) for k in ("candidate", "champion", "baseline")}
        try:
            after = version_scores(registry, model, version, extensions)
        except SluiceError as exc:
            yield f"v{number}: cannot re-score ({exc})"
            continue
        if _same(before, after):
            yield f"v{number}: unchanged ({version['metric']} {after['candidate']:.4f})"
            continue
        change = ", ".join(f"{k} {_fmt(before[k])} -> {_fmt(after[k])}" for k in ("candidate", "champion")
                           if before.get(k) is not None or after.get(k) is not None)
        if dry_run:
            yield f"v{number}: would record {change}"
            continue
        record = registry.record_rescore(model, number, scores_before=before, scores_after=after, by=by, at=at,
                                         reason="gate scores re-computed with the loader that scores by the "
                                                "model's own feature names")
        yield f"v{number}: {change}" + ("" if record else " (already recorded)")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"
