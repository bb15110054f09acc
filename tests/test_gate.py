"""The promotion gate on synthetic scores: bootstrap, the three outcomes, slices, guardrails, limits, benchmark."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest

from sluice.core.errors import ContractError
from sluice.ml import gate, modeling
from sluice.ml.contract import ColumnSpec, Contract, PromotionSpec

FAST = {"size_bytes": 1000, "p99_ms": 0.5}


def contract(**promotion: Any) -> Contract:
    return Contract(dataset="d", target="y", task="binary", metric="roc_auc",
                    columns={"x": ColumnSpec(dtype="float"), "region": ColumnSpec(dtype="str"),
                             "y": ColumnSpec(dtype="str", categories=["no", "yes"])},
                    promotion=PromotionSpec(**promotion))


def data(n: int, seed: int = 1) -> tuple[pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    region = np.where(np.arange(n) < n * 3 // 4, "north", "south")
    return pl.DataFrame({"x": rng.random(n), "region": region}), y


def noisy(y: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Scores that rank the classes well when `noise` is small, at random when large."""
    return np.asarray(y + np.random.default_rng(seed).normal(0, noise, len(y)))


@pytest.mark.parametrize(("metric", "task"), [("roc_auc", "binary"), ("log_loss", "binary"), ("accuracy", "binary"),
                                              ("f1", "binary"), ("log_loss", "multiclass"), ("accuracy", "multiclass"),
                                              ("rmse", "regression"), ("mae", "regression"), ("r2", "regression")])
def test_vectorised_metrics_agree_with_sklearn(metric: str, task: str) -> None:
    rng = np.random.default_rng(3)
    n = 150
    if task == "regression":
        y, pred = rng.normal(size=n), rng.normal(size=n)
    elif task == "binary":
        y, pred = rng.integers(0, 2, n), rng.random(n)
        pred[::7] = 0.5  # ties, which roc_auc must count as halves
    else:
        y, pred = rng.integers(0, 3, n), rng.dirichlet([1, 1, 1], n)
    ours = gate.resampled_metric(metric, y, pred, np.arange(n)[None, :])[0]
    assert ours == pytest.approx(modeling.score(metric, y, pred, 3 if task == "multiclass" else None), abs=1e-9)


def test_bootstrap_is_paired_seeded_and_directional() -> None:
    _, y = data(300)
    good, bad = noisy(y, 0.3, 1), noisy(y, 3.0, 2)
    ci = gate.paired_bootstrap("roc_auc", True, y, good, bad, resamples=500, seed=7)
    assert ci.low > 0 and ci.low < ci.estimate < ci.high and ci.resamples == 500
    assert ci == gate.paired_bootstrap("roc_auc", True, y, good, bad, resamples=500, seed=7)
    assert ci != gate.paired_bootstrap("roc_auc", True, y, good, bad, resamples=500, seed=8)
    # Lower is better for log_loss: the better model still shows a positive improvement.
    p_good, p_bad = 1 / (1 + np.exp(-4 * (good - 0.5))), 1 / (1 + np.exp(-(bad - 0.5)))
    assert gate.paired_bootstrap("log_loss", False, y, p_good, p_bad, resamples=300).low > 0
    same = gate.paired_bootstrap("roc_auc", True, y, good, good, resamples=300)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)


def rankdata_auc(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The gate's AUC before it sorted once: rank every resample (the reference the fast path must equal)."""
    from scipy.stats import rankdata

    with np.errstate(divide="ignore", invalid="ignore"):
        yy = (y[idx] == 1).astype(float)
        ranks = rankdata(s[idx], axis=1)
        pos = yy.sum(axis=1)
        neg = idx.shape[1] - pos
        auc = ((ranks * yy).sum(axis=1) - pos * (pos + 1) / 2) / (pos * neg)
        return np.where((pos > 0) & (neg > 0), auc, np.nan)


@pytest.mark.parametrize("case", ["separable", "ties", "coarse", "rare_positives", "nan_score", "tiny"])
def test_sorting_once_gives_the_same_intervals_as_ranking_every_resample(
        case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    n = 5 if case == "tiny" else 600
    y = (rng.random(n) < (0.03 if case == "rare_positives" else 0.4)).astype(int)
    candidate, reference = noisy(y, 0.8, 1), noisy(y, 1.5, 2)
    if case == "ties":
        candidate[::3], reference[::4] = 0.5, 0.25
    if case == "coarse":  # few distinct scores, as from a shallow tree: nearly every row ties
        candidate, reference = np.round(candidate, 1), np.round(reference)
    if case == "nan_score":
        candidate[17] = np.nan
    idx = rng.integers(0, n, (300, n))
    fast, slow = gate.resampled_auc(y, candidate, idx), rankdata_auc(y, candidate, idx)
    assert np.array_equal(fast, slow, equal_nan=True)
    if case in ("nan_score", "tiny"):  # the undefined resamples are exercised, not just the easy ones
        assert np.isnan(fast).any()

    def fields(ci: gate.Interval) -> np.ndarray:
        return np.array([ci.estimate, ci.low, ci.high, *ci.candidate, *ci.reference, ci.resamples])

    for seed in (0, 2024):
        new = gate.paired_bootstrap("roc_auc", True, y, candidate, reference, resamples=300, seed=seed)
        with monkeypatch.context() as m:
            m.setattr(gate, "resampled_auc", rankdata_auc)
            today = gate.paired_bootstrap("roc_auc", True, y, candidate, reference, resamples=300, seed=seed)
        assert np.array_equal(fields(new), fields(today), equal_nan=True)  # bit for bit, not approximately


def test_pairing_narrows_the_interval() -> None:
    """Scoring both models on the same resampled rows cancels the rows' shared difficulty."""
    _, y = data(400)
    reference = noisy(y, 1.0, 4)
    candidate = reference + 0.15 * (2 * y - 1)  # the same model, nudged the right way on every row
    paired = gate.paired_bootstrap("roc_auc", True, y, candidate, reference, resamples=400)
    rng = np.random.default_rng(0)
    unpaired = [gate.resampled_metric("roc_auc", y, candidate, rng.integers(0, 400, (1, 400)))[0]
                - gate.resampled_metric("roc_auc", y, reference, rng.integers(0, 400, (1, 400)))[0]
                for _ in range(400)]
    assert paired.high - paired.low < (np.percentile(unpaired, 97.5) - np.percentile(unpaired, 2.5)) / 3
    assert paired.low > 0


def evaluate(frame: pl.DataFrame, y: np.ndarray, candidate: np.ndarray, reference: np.ndarray,
             benchmark: dict[str, Any] = FAST, **policy: Any) -> gate.GateResult:
    return gate.evaluate(contract(**policy), frame, y, candidate, reference, baseline=np.full(len(y), 0.5),
                         reference_name="champion v1", n_classes=None, benchmark=benchmark)


def test_promote_when_the_whole_interval_is_above_the_minimum_improvement() -> None:
    frame, y = data(300)
    result = evaluate(frame, y, noisy(y, 0.3, 1), noisy(y, 3.0, 2))
    assert result.outcome == "promote"
    assert "on the same 300 holdout rows" in result.reasons[0] and "lies above min_improvement" in result.reasons[1]
    d = result.metric["difference"]
    assert d["low"] > 0 and d["resamples"] == 1000 and d["confidence"] == 0.95
    # A minimum improvement larger than anything plausible turns the same evidence into a rejection.
    assert evaluate(frame, y, noisy(y, 0.3, 1), noisy(y, 3.0, 2), min_improvement=0.9).outcome == "reject"


def test_reject_when_confidently_worse() -> None:
    frame, y = data(300)
    result = evaluate(frame, y, noisy(y, 3.0, 2), noisy(y, 0.3, 1))
    assert result.outcome == "reject" and "at or below min_improvement" in result.reasons[-1]


def test_insufficient_evidence_when_the_interval_straddles_or_the_holdout_is_small() -> None:
    frame, y = data(300)
    reference = noisy(y, 1.0, 5)
    candidate = reference.copy()
    candidate[:6] += 0.5 * (2 * y[:6] - 1)  # better on three rows or so, worse on three others
    candidate[6:12] -= 0.5 * (2 * y[6:12] - 1)
    result = evaluate(frame, y, candidate, reference)
    assert result.outcome == "insufficient_evidence" and "straddles" in result.reasons[-1]
    d = result.metric["difference"]
    assert d["low"] < 0 < d["high"]

    small, y_small = data(20)
    result = evaluate(small, y_small, y_small.astype(float), 1.0 - y_small)  # perfect vs. perfectly wrong
    assert result.outcome == "insufficient_evidence"
    # It says what to do: the contract's keys by their names, and how many rows give a big enough holdout.
    assert result.reasons[-1] == (
        "the holdout has 20 rows, fewer than promotion.min_holdout_rows 30: too few to decide. For the gate to "
        "decide, drop more rows (a holdout of 30 needs about 150 labelled rows at training.holdout_fraction 0.2), "
        "raise training.holdout_fraction, or lower promotion.min_holdout_rows in the contract; or promote this "
        "version by hand (`sluice models promote`)")


def test_a_first_version_better_than_the_naive_baseline_is_promoted_on_short_evidence() -> None:
    """No champion to keep: a first version whose point estimate beats the naive baseline is promoted even where the
    interval straddles min_improvement or the holdout is small, saying so; the contract can ask for the evidence."""
    frame, y = data(300)
    baseline = noisy(y, 1.0, 5)
    slightly = baseline.copy()
    slightly[:6] += 0.5 * (2 * y[:6] - 1)  # better on a few rows, worse on about as many
    slightly[6:10] -= 0.5 * (2 * y[6:10] - 1)

    def first(frame: pl.DataFrame, y: np.ndarray, candidate: np.ndarray, **policy: Any) -> gate.GateResult:
        reference = baseline[: len(y)]
        return gate.evaluate(contract(**policy), frame, y, candidate, reference, baseline=reference,
                             reference_name="naive baseline", n_classes=None, benchmark=FAST)

    result = first(frame, y, slightly)
    d = result.metric["difference"]
    assert d["low"] < 0 < d["high"] and d["estimate"] > 0
    assert result.outcome == "promote" and "straddles" in result.reasons[-1]
    assert "promoted as the model's first version" in result.reasons[-1]
    assert first(frame, y, slightly, first_model_needs_evidence=True).outcome == "insufficient_evidence"
    worse = baseline.copy()
    worse[:10] -= 0.5 * (2 * y[:10] - 1)  # worse than the baseline on its point estimate: not promoted
    assert first(frame, y, worse).outcome != "promote"
    small, y_small = data(20)
    result = first(small, y_small, y_small.astype(float))  # 20 rows: too few to decide, yet clearly better
    assert result.outcome == "promote" and "fewer than promotion.min_holdout_rows 30" in result.reasons[-1]
    assert "For the gate to decide" not in result.reasons[-1]  # it did


def test_a_slice_that_gets_worse_rejects_even_when_the_whole_improves() -> None:
    frame, y = data(400)
    south = (frame["region"] == "south").to_numpy()
    reference = np.where(south, y, noisy(y, 2.0, 1))  # the champion is perfect on the south only
    candidate = np.where(south, noisy(y, 1.0, 2), y)  # the candidate is perfect on the north, weaker south
    result = evaluate(frame, y, candidate, reference, slices=["region"], non_inferiority_margin=0.02)
    assert result.outcome == "reject"
    by_slice = {s["slice"]: s for s in result.slices}
    assert by_slice["region=north"]["status"] == "ok" and by_slice["region=south"]["status"] == "inferior"
    assert any(r.startswith("slice region=south (100 rows)") for r in result.reasons)
    # Numeric slices are holdout quartiles; slices below min_slice_rows are reported, not judged.
    result = evaluate(frame, y, y.astype(float), reference, slices=["x"], min_slice_rows=150)
    assert [s["rows"] for s in result.slices] == [100, 100, 100, 100]
    assert all(s["status"].startswith("skipped: 100 rows") for s in result.slices)


def test_guardrails_size_and_latency_limits_reject_with_their_reasons() -> None:
    frame, y = data(300)
    good, bad = noisy(y, 0.3, 1), noisy(y, 3.0, 2)
    p = 1 / (1 + np.exp(-2 * (good - 0.5)))
    result = evaluate(frame, y, p, bad, guardrails={"accuracy": {"min": 0.999}, "log_loss": {"max": 5.0}})
    assert result.outcome == "reject"
    assert [g["ok"] for g in result.guardrails] == [False, True]
    assert any(r.startswith("guardrail accuracy") and "below its minimum 0.999" in r for r in result.reasons)

    result = evaluate(frame, y, good, bad, benchmark={"size_bytes": 5000, "p99_ms": 12.5}, max_model_bytes=4096,
                      max_p99_latency_ms=10)
    assert result.outcome == "reject"
    assert "model size 5000 bytes exceeds the maximum 4096 bytes" in result.reasons
    assert "p99 single-row latency 12.5 ms exceeds the maximum 10 ms" in result.reasons
    ok = evaluate(frame, y, good, bad, benchmark={"size_bytes": 4000, "p99_ms": 9.0}, max_model_bytes=4096,
                  max_p99_latency_ms=10)
    assert ok.outcome == "promote" and all(limit["ok"] for limit in ok.limits)


def test_a_later_model_must_still_beat_the_naive_baseline() -> None:
    frame, y = data(300)
    constant = np.full(len(y), 0.5)
    result = evaluate(frame, y, constant, 1.0 - noisy(y, 0.3, 1))  # champion ranks backwards
    assert result.outcome == "reject" and any("does not beat the naive baseline" in r for r in result.reasons)


def test_inference_benchmark_measures_the_users_path() -> None:
    from sluice.ml import bundle
    from sluice.ml.contract import parse_contract

    rng = np.random.default_rng(0)
    frame = pl.DataFrame({"a": rng.random(300), "b": rng.random(300)}).with_columns(
        y=pl.when(pl.col("a") > 0.5).then(pl.lit("yes")).otherwise(pl.lit("no")))
    contract = parse_contract("dataset: d\ntarget: y\ntask: binary\nmetric: roc_auc\n"
                              "columns: {a: {dtype: float}, b: {dtype: float}, y: {dtype: str}}\n"
                              "training: {time_budget_s: 0.5}\n")
    encoding = modeling.Encoding.fit(frame, contract)
    trained = modeling.train(frame, encoding, contract)
    manifest, files = bundle.bundle_files(contract=contract, encoding=encoding, model_bytes=trained.model_bytes,
                                          model_format=trained.model_format, frequencies={}, run_id="r")
    model = bundle.model_from_files(manifest, files)
    b = gate.inference_benchmark(model, frame, single_rows=50, min_batch_rows=1000)
    assert b["size_bytes"] == len(trained.model_bytes) and b["batch_rows"] == 1200 and b["single_row_samples"] == 50
    assert 0 < b["p50_ms"] <= b["p99_ms"] and b["rows_per_s"] > 0 and b["path"] == "Model.predict"


def test_the_policy_is_checked_against_the_contract() -> None:
    from sluice.ml.contract import parse_contract

    base = ("dataset: d\ntarget: y\ntask: binary\nmetric: roc_auc\n"
            "columns: {x: {dtype: float}, y: {dtype: str}}\n")
    with pytest.raises(ContractError, match="promotion slice 'nope' is not a feature column"):
        parse_contract(base + "promotion: {slices: [nope]}\n")
    with pytest.raises(ContractError, match="guardrail metric 'rmse' does not fit task 'binary'"):
        parse_contract(base + "promotion: {guardrails: {rmse: {max: 1}}}\n")
    parsed = parse_contract(base + "promotion: {slices: [x], guardrails: {log_loss: {max_regression: 0.01}}, "
                                   "max_model_bytes: 1000000, max_p99_latency_ms: 20}\n")
    assert parsed.promotion.guardrails["log_loss"].max_regression == 0.01
