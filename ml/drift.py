"""Data profiles and drift: PSI per column against the champion's training profile.

A reference profile (made at training time) keeps, per numeric column, decile edges and the share of
training rows in each bin; per categorical column, the share of each category (the 50 most frequent, the
rest pooled). New data is binned the same way, and the Population Stability Index compares the two:
PSI = sum((new - ref) * ln(new / ref)). The usual reading: < 0.1 stable, 0.1-0.25 moderate, > 0.25 major.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from sluice.ml.contract import DriftSpec

BINS = 10
TOP_CATEGORIES = 50
OTHER = "__other__"
NULL = "__null__"
EPS = 1e-4


def reference_profile(frame: pl.DataFrame, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The binning of every column of `frame`, to compare later data against."""
    columns: dict[str, Any] = {}
    for name in frame.columns:
        if name in exclude:
            continue
        s = frame[name]
        if s.dtype.is_numeric() and s.dtype != pl.Boolean:
            values = s.drop_nulls().drop_nans() if s.dtype.is_float() else s.drop_nulls()
            if values.len() == 0:
                continue
            qs = np.quantile(values.cast(pl.Float64).to_numpy(), np.linspace(0, 1, BINS + 1)[1:-1])
            edges = sorted(set(float(q) for q in qs))
            columns[name] = {"kind": "numeric", "edges": edges,
                             "fractions": _numeric_fractions(s, edges)}
        else:
            counts = s.cast(pl.Utf8).fill_null(NULL).value_counts(sort=True)
            top = counts.head(TOP_CATEGORIES)
            total = s.len()
            fractions = {str(v): c / total for v, c in zip(top[counts.columns[0]], top["count"], strict=True)}
            rest = 1.0 - sum(fractions.values())
            if rest > 1e-12:
                fractions[OTHER] = rest
            columns[name] = {"kind": "categorical", "fractions": fractions}
    return {"rows": frame.height, "columns": columns}


def data_profile(sample: pl.DataFrame, rows: int, nulls: dict[str, int]) -> dict[str, Any]:
    """A human-readable profile of a data version: counts and nulls (exact), quantiles and top values (sample)."""
    columns: dict[str, Any] = {}
    for name in sample.columns:
        s = sample[name]
        entry: dict[str, Any] = {"count": rows, "nulls": int(nulls.get(name, 0))}
        if s.dtype.is_numeric() and s.dtype != pl.Boolean and s.drop_nulls().len():
            v = s.drop_nulls().cast(pl.Float64).to_numpy()
            entry.update(min=float(v.min()), max=float(v.max()), mean=float(v.mean()),
                         quantiles={str(q): float(np.quantile(v, q)) for q in (0.01, 0.25, 0.5, 0.75, 0.99)})
        else:
            top = s.cast(pl.Utf8).drop_nulls().value_counts(sort=True).head(10)
            entry["top"] = {str(a): int(b) for a, b in zip(top[top.columns[0]], top["count"], strict=True)}
        columns[name] = entry
    return {"rows": rows, "sample_rows": sample.height, "columns": columns}


def psi(reference: dict[str, Any], frame: pl.DataFrame) -> dict[str, float]:
    """PSI of each column of `frame` that the reference knows."""
    out = {}
    for name, ref in reference["columns"].items():
        if name not in frame.columns or frame.height == 0:
            continue
        s = frame[name]
        if ref["kind"] == "numeric":
            if not s.dtype.is_numeric():
                continue
            new = _numeric_fractions(s, ref["edges"])
            out[name] = _psi(ref["fractions"], new)
        else:
            values = s.cast(pl.Utf8).fill_null(NULL)
            known = set(ref["fractions"]) - {OTHER}
            mapped = pl.select(pl.when(values.is_in(sorted(known))).then(values).otherwise(pl.lit(OTHER))).to_series()
            counts = mapped.value_counts()
            total = mapped.len()
            new_map = {str(v): c / total for v, c in zip(counts[counts.columns[0]], counts["count"], strict=True)}
            keys = sorted(set(ref["fractions"]) | set(new_map))
            out[name] = _psi([ref["fractions"].get(k, 0.0) for k in keys], [new_map.get(k, 0.0) for k in keys])
    return out


def summarize(reference: dict[str, Any] | None, frame: pl.DataFrame, spec: DriftSpec,
              reference_run: str | None) -> dict[str, Any] | None:
    """The drift summary carried on the data.validated event; None when there is no champion to compare with."""
    if reference is None:
        return None
    scores = psi(reference, frame)
    drifted = sorted(c for c, v in scores.items() if v > spec.psi_threshold)
    share = len(drifted) / len(scores) if scores else 0.0
    return {
        "reference_run": reference_run,
        "psi": {c: round(v, 4) for c, v in sorted(scores.items())},
        "drifted_columns": drifted,
        "drifted_share": round(share, 4),
        "psi_threshold": spec.psi_threshold,
        "max_drifted_share": spec.max_drifted_share,
        "drifted": bool(scores) and share > spec.max_drifted_share,
    }


def _numeric_fractions(s: pl.Series, edges: list[float]) -> list[float]:
    """Shares of rows per bin (-inf, e0], (e0, e1], ..., (e_last, inf), plus one bin for nulls and NaN."""
    values = s.cast(pl.Float64).to_numpy()
    missing = np.isnan(values)
    present = values[~missing]
    total = len(values)
    if total == 0:
        return [0.0] * (len(edges) + 2)
    idx = np.searchsorted(np.asarray(edges), present, side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(float)
    return [*(counts / total).tolist(), float(missing.sum()) / total]


def _psi(ref: list[float], new: list[float]) -> float:
    total = 0.0
    for r, n in zip(ref, new, strict=True):
        if r < EPS and n < EPS:
            continue
        r, n = max(r, EPS), max(n, EPS)
        total += (n - r) * math.log(n / r)
    return float(total)
