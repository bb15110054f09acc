"""The promotion gate: a paired bootstrap on identical holdout rows, the contract's policy, an inference benchmark.

Outcomes, each with its reasons:

    reject                a hard limit failed (slice non-inferiority, guardrail, model size, p99 latency, not
                          better than the naive baseline), or the whole confidence interval of the improvement
                          lies at or below `min_improvement`: confidently not better by enough
    promote               every limit holds and the interval lies entirely above `min_improvement`
    insufficient_evidence the interval straddles `min_improvement`, or the holdout has fewer than
                          `min_holdout_rows` rows: a larger holdout is needed to decide. Not for a model's first
                          version that beats the naive baseline on the holdout: it is promoted (no champion to
                          keep; `promotion.first_model_needs_evidence: true` asks it for the whole interval)

"Improvement" is always in the metric's good direction: candidate - reference for roc_auc, reference -
candidate for log_loss. The reference is the champion, or the naive baseline for a model's first version.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from sluice.ml import modeling
from sluice.ml.blend import MEMBER
from sluice.ml.contract import HIGHER_IS_BETTER, Contract, PromotionSpec

PROMOTE = "promote"
REJECT = "reject"
INSUFFICIENT = "insufficient_evidence"
OUTCOMES = (PROMOTE, REJECT, INSUFFICIENT)
# Bound the (resamples x rows) index matrix so a large holdout does not need gigabytes.
_CELLS_PER_CHUNK = 2_000_000
_DISCRETE_MAX_VALUES = 10


@dataclass(frozen=True)
class Interval:
    """A paired-bootstrap estimate of the improvement, with the candidate's and reference's own intervals."""

    estimate: float
    low: float
    high: float
    confidence: float
    resamples: int
    candidate: tuple[float, float]
    reference: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"estimate": _num(self.estimate), "low": _num(self.low), "high": _num(self.high),
                "confidence": self.confidence, "resamples": self.resamples,
                "candidate_ci": [_num(v) for v in self.candidate], "reference_ci": [_num(v) for v in self.reference]}


def _num(v: float) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), 6)


def _proba(pred: np.ndarray) -> np.ndarray:
    return pred if pred.ndim == 2 else np.column_stack([1 - pred, pred])


def resampled_auc(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """ROC AUC on each row of `idx`, sorting the scores once instead of once per resample.

    A resample is a count per holdout row, so it is a count per (distinct score, class). The Mann-Whitney U
    (ties count half, as in sklearn) is then sum over scores of positives x (negatives below + half the negatives
    level), all in integers: U is exact and the AUC is the same float as ranking each resample.
    """
    levels, level = np.unique(s, return_inverse=True)  # the one sort: scores -> tie groups in score order
    n_levels = len(levels)
    key = 2 * level.astype(np.int64) + (y == 1)  # (tie group, class) per holdout row
    rows = idx.shape[0]
    offsets = (np.arange(rows, dtype=np.int64) * 2 * n_levels)[:, None]
    counts = np.bincount((key[idx] + offsets).ravel(), minlength=rows * 2 * n_levels).reshape(rows, n_levels, 2)
    neg_at, pos_at = counts[:, :, 0], counts[:, :, 1]
    neg_below = np.cumsum(neg_at, axis=1) - neg_at
    twice_u = (pos_at * (2 * neg_below + neg_at)).sum(axis=1)
    pos, neg = pos_at.sum(axis=1), neg_at.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (twice_u / 2) / (pos * neg).astype(float)
    defined = (pos > 0) & (neg > 0)
    nan_scores = np.isnan(s)
    if nan_scores.any():  # a resample holding a NaN score has no ranking, as with rankdata's "propagate"
        defined &= ~nan_scores[idx].any(axis=1)
    return np.where(defined, auc, np.nan)


def resampled_metric(metric: str, y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The metric on each row of `idx` (resamples x rows of indices), vectorised; NaN where it is undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "roc_auc":
            return resampled_auc(y, pred if pred.ndim == 1 else pred[:, 1], idx)
        if metric == "log_loss":
            proba = np.clip(_proba(pred), 1e-15, 1)
            proba = proba / proba.sum(axis=1, keepdims=True)
            per_row = -np.log(proba[np.arange(len(y)), y.astype(int)])
            return np.asarray(per_row[idx].mean(axis=1))
        if metric in ("accuracy", "f1"):
            predicted = _proba(pred).argmax(axis=1)
            if metric == "accuracy":
                return np.asarray((predicted == y)[idx].mean(axis=1))
            tp = ((predicted == 1) & (y == 1))[idx].sum(axis=1)
            wrong = ((predicted == 1) != (y == 1))[idx].sum(axis=1)
            denominator = 2 * tp + wrong
            return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
        err = (pred - y)[idx]
        if metric == "rmse":
            return np.asarray(np.sqrt((err**2).mean(axis=1)))
        if metric == "mae":
            return np.asarray(np.abs(err).mean(axis=1))
        if metric == "r2":
            yb = y[idx]
            sst = ((yb - yb.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
            return np.where(sst > 0, 1 - (err**2).sum(axis=1) / sst, np.nan)
    raise ValueError(f"unknown metric {metric!r}")


def paired_bootstrap(metric: str, higher_is_better: bool, y: np.ndarray, candidate: np.ndarray,
                     reference: np.ndarray, *, resamples: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> Interval:
    """Percentile CI of the improvement, resampling the same row indices for both models (paired)."""
    n = len(y)
    rng = np.random.default_rng(seed)
    sign = 1.0 if higher_is_better else -1.0
    cand_parts, ref_parts = [], []
    chunk = max(1, _CELLS_PER_CHUNK // max(n, 1))
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        cand_parts.append(resampled_metric(metric, y, candidate, idx))
        ref_parts.append(resampled_metric(metric, y, reference, idx))
    cand, ref = np.concatenate(cand_parts), np.concatenate(ref_parts)
    diff = sign * (cand - ref)
    ok = ~np.isnan(diff)
    everything = np.arange(n)[None, :]
    estimate = float(sign * (resampled_metric(metric, y, candidate, everything)[0]
                             - resampled_metric(metric, y, reference, everything)[0]))
    if ok.sum() < resamples / 2:  # e.g. roc_auc on a holdout where most resamples hold one class
        nan = float("nan")
        return Interval(estimate, nan, nan, confidence, int(ok.sum()), (nan, nan), (nan, nan))
    q = [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100]
    low, high = np.percentile(diff[ok], q)
    c_low, c_high = np.percentile(cand[ok], q)
    r_low, r_high = np.percentile(ref[ok], q)
    return Interval(estimate, float(low), float(high), confidence, int(ok.sum()),
                    (float(c_low), float(c_high)), (float(r_low), float(r_high)))


def improvement(a: float, b: float, higher_is_better: bool) -> float:
    """How much better `a` is than `b`, in the metric's good direction."""
    return a - b if higher_is_better else b - a


def slices(frame: pl.DataFrame, columns: list[str]) -> list[tuple[str, str, np.ndarray]]:
    """(column, label, row mask) per slice: by value for discrete columns, by holdout quartile otherwise."""
    out: list[tuple[str, str, np.ndarray]] = []
    for name in columns:
        s = frame[name]
        numeric = s.dtype.is_numeric() and s.dtype != pl.Boolean
        if not numeric or s.n_unique() <= _DISCRETE_MAX_VALUES:
            values = s.cast(pl.Utf8).fill_null("(null)").to_numpy()
            for v in sorted(set(values.tolist())):
                out.append((name, f"{name}={v}", values == v))
            continue
        x = s.cast(pl.Float64).to_numpy()
        finite = x[~np.isnan(x)]
        edges = np.unique(np.quantile(finite, [0.25, 0.5, 0.75])) if len(finite) else np.array([])
        bins = np.where(np.isnan(x), -1, np.searchsorted(edges, x, side="right"))
        bounds = [-math.inf, *edges.tolist(), math.inf]
        for b in range(len(bounds) - 1):
            out.append((name, f"{name} in [{bounds[b]:.4g}, {bounds[b + 1]:.4g})", bins == b))
        if (bins == -1).any():
            out.append((name, f"{name}=(null)", bins == -1))
    return out


@dataclass
class GateResult:
    """The gate's decision, its reasons and the evidence behind them."""

    outcome: str
    reasons: list[str]
    reference: str  # "champion v3" or "naive baseline"
    metric: dict[str, Any]
    slices: list[dict[str, Any]] = field(default_factory=list)
    guardrails: list[dict[str, Any]] = field(default_factory=list)
    limits: list[dict[str, Any]] = field(default_factory=list)
    policy: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


def evaluate(contract: Contract, holdout: pl.DataFrame, y: np.ndarray, candidate: np.ndarray,
             reference: np.ndarray, *, baseline: np.ndarray, reference_name: str, n_classes: int | None,
             benchmark: dict[str, Any], refusals: list[str] | None = None) -> GateResult:
    """Apply the contract's promotion policy to candidate and reference scores on the same holdout rows.

    `refusals` are reasons found before the gate (a leak under `training.leakage: refuse`): each one rejects."""
    policy: PromotionSpec = contract.promotion
    metric, hib, m = contract.metric, contract.higher_is_better, policy.min_improvement
    first = reference_name == "naive baseline"
    cand_score = modeling.score(metric, y, candidate, n_classes)
    ref_score = modeling.score(metric, y, reference, n_classes)
    base_score = modeling.score(metric, y, baseline, n_classes)
    ci = paired_bootstrap(metric, hib, y, candidate, reference, resamples=policy.bootstrap_resamples,
                          confidence=policy.confidence, seed=contract.training.seed)
    pct = f"{policy.confidence:.0%}"
    failures: list[str] = list(refusals or [])

    if not first and not modeling.better(cand_score, base_score, hib):
        failures.append(f"{metric} {cand_score:.4f} does not beat the naive baseline ({base_score:.4f})")

    slice_docs = []
    for column, label, mask in slices(holdout, policy.slices):
        rows = int(mask.sum())
        doc: dict[str, Any] = {"column": column, "slice": label, "rows": rows}
        if rows < policy.min_slice_rows:
            doc["status"] = f"skipped: {rows} rows < min_slice_rows {policy.min_slice_rows}"
        else:
            c = modeling.score(metric, y[mask], candidate[mask], n_classes)
            r = modeling.score(metric, y[mask], reference[mask], n_classes)
            delta = improvement(c, r, hib)
            doc.update(candidate=_num(c), reference=_num(r), improvement=_num(delta))
            if math.isnan(delta):
                doc["status"] = f"skipped: {metric} undefined on this slice (one class)"
            elif delta < -policy.non_inferiority_margin:
                doc["status"] = "inferior"
                failures.append(f"slice {label} ({rows} rows): {metric} {c:.4f} vs {reference_name} {r:.4f}, "
                                f"worse by more than the non-inferiority margin {policy.non_inferiority_margin}")
            else:
                doc["status"] = "ok"
        slice_docs.append(doc)

    guardrail_docs = []
    for name, spec in policy.guardrails.items():
        c = modeling.score(name, y, candidate, n_classes)
        r = modeling.score(name, y, reference, n_classes)
        delta = improvement(c, r, HIGHER_IS_BETTER[name])
        problems = []
        if spec.max_regression is not None and delta < -spec.max_regression:
            problems.append(f"{name} {c:.4f} vs {reference_name} {r:.4f} regresses by more than {spec.max_regression}")
        if spec.min is not None and not c >= spec.min:
            problems.append(f"{name} {c:.4f} is below its minimum {spec.min}")
        if spec.max is not None and not c <= spec.max:
            problems.append(f"{name} {c:.4f} is above its maximum {spec.max}")
        failures += [f"guardrail {p}" for p in problems]
        guardrail_docs.append({"metric": name, "candidate": _num(c), "reference": _num(r),
                               "improvement": _num(delta), "ok": not problems, **spec.model_dump(exclude_none=True)})

    limit_docs = []
    for what, value, limit, unit in (("model size", benchmark["size_bytes"], policy.max_model_bytes, "bytes"),
                                     ("p99 single-row latency", benchmark["p99_ms"], policy.max_p99_latency_ms, "ms")):
        if limit is None:
            continue
        ok = value <= limit
        limit_docs.append({"limit": what, "value": value, "max": limit, "unit": unit, "ok": ok})
        if not ok:
            failures.append(f"{what} {value:g} {unit} exceeds the maximum {limit:g} {unit}")

    n = len(y)
    interval = f"{ci.estimate:+.4f} ({pct} CI [{ci.low:+.4f}, {ci.high:+.4f}], {ci.resamples} paired resamples)"
    comparison = (f"{metric} {cand_score:.4f} vs {reference_name} {ref_score:.4f} on the same {n} holdout rows: "
                  f"improvement {interval}")
    if failures:
        outcome, reasons = REJECT, [comparison, *failures]
    elif n < policy.min_holdout_rows:
        outcome, reasons = INSUFFICIENT, [comparison, f"the holdout has {n} rows, fewer than "
                                                      f"promotion.min_holdout_rows {policy.min_holdout_rows}: too few "
                                                      "to decide"]
    elif math.isnan(ci.low):
        outcome, reasons = INSUFFICIENT, [comparison, f"{metric} is undefined on most resamples of the {n} holdout "
                                                      "rows (one class): too few to decide"]
    elif ci.low > m:
        outcome, reasons = PROMOTE, [comparison, f"the whole {pct} interval lies above min_improvement {m}"]
    elif ci.high <= m:
        outcome, reasons = REJECT, [comparison, f"the whole {pct} interval lies at or below min_improvement {m}: "
                                                "not better by enough"]
    else:
        outcome, reasons = INSUFFICIENT, [comparison, f"the {pct} interval straddles min_improvement {m}: "
                                                      f"{n} holdout rows are too few to tell"]
    if outcome == INSUFFICIENT and first and not policy.first_model_needs_evidence and ci.estimate > m:
        outcome, reasons = PROMOTE, [comparison, f"{reasons[-1]}; promoted as the model's first version: better "
                                     "than the naive baseline on the holdout, and there is no champion to keep "
                                     "(promotion.first_model_needs_evidence: true asks it for the whole interval)"]
    if outcome == INSUFFICIENT and n < policy.min_holdout_rows:
        reasons[-1] += f". {_more_holdout(policy.min_holdout_rows, contract.training.holdout_fraction)}"
    return GateResult(
        outcome=outcome, reasons=reasons, reference=reference_name,
        metric={"name": metric, "higher_is_better": hib, "candidate": _num(cand_score), "reference": _num(ref_score),
                "baseline": _num(base_score), "difference": ci.to_dict(), "holdout_rows": n},
        slices=slice_docs, guardrails=guardrail_docs, limits=limit_docs, policy=policy.model_dump(mode="json"),
    )


def _more_holdout(min_rows: int, fraction: float) -> str:
    """What to do about a holdout under `promotion.min_holdout_rows` (the gate decides nothing until it is not)."""
    return (f"For the gate to decide, drop more rows (a holdout of {min_rows} needs about "
            f"{math.ceil(min_rows / fraction)} labelled rows at training.holdout_fraction {fraction:g}), raise "
            "training.holdout_fraction, or lower promotion.min_holdout_rows in the contract; or promote this version "
            "by hand (`sluice models promote`)")


def inference_benchmark(model: Any, rows: pl.DataFrame, *, load_ms: float | None = None, single_rows: int = 200,
                        min_batch_rows: int = 2000, repeats: int = 3) -> dict[str, Any]:
    """Rows/s on a batch, p50/p99 of single-row predict (ms), and the model's size in bytes, measured on the path
    users call: `Model.predict` (typing, rule checks, declared features, encoding, model) on `rows`."""
    batch = pl.concat([rows] * max(1, math.ceil(min_batch_rows / max(rows.height, 1))))
    model.predict(batch.head(10))  # warm up: first calls pay for lazy initialisation
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        model.predict(batch)
        best = min(best, time.perf_counter() - t)
    # One row as a service receives it (a JSON object), sliced before timing, so the latency is the model's.
    singles = [rows.slice(i % max(rows.height, 1), 1).to_dicts() for i in range(single_rows)]
    for row in singles[:5]:
        model.predict(row)
    latencies = []
    for row in singles:
        t = time.perf_counter()
        model.predict(row)
        latencies.append((time.perf_counter() - t) * 1000)
    p50, p99 = np.percentile(latencies, [50, 99])
    return {"batch_rows": batch.height, "rows_per_s": round(batch.height / best, 1), "p50_ms": round(float(p50), 4),
            "p99_ms": round(float(p99), 4), "single_row_samples": single_rows,
            "load_ms": None if load_ms is None else round(load_ms, 3),
            "size_bytes": int(sum(meta["bytes"] for r, meta in model.manifest["files"].items()
                                  if r == "model" or r.startswith(MEMBER))), "format": model.manifest["model_format"],
            "path": "Model.predict", "machine": platform.machine(),
            "python": platform.python_version()}

