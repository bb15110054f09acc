"""The contract's declared features as polars expressions: the same code when a feature set is materialized and
when a stored model scores new rows. Only the operations below exist; no code ever comes from the bucket.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from sluice.core.app import Extensions
from sluice.ml.contract import DATE_PARTS, ROW_OPS, WINDOW_OPS, Contract, Transform

NULL_KEY = "\x00null"  # the share of missing values in a frequency table (a JSON key cannot be null)


def apply_transforms(frame: pl.DataFrame, contract: Contract, extensions: Extensions | None = None) -> pl.DataFrame:
    """Add the contract's declared features, in order. Only the operations below exist: no code comes from the bucket.

    Per-entity operations see an entity's events sorted by event time: a window covers (t - days, t], so the
    value at an event never includes later events, and a lag is the value `periods` events earlier.
    """
    if contract.entity is not None:
        frame = frame.sort([contract.entity.key, contract.entity.timestamp])
    for t in contract.features:
        if t.op == "frequency" and contract.entity is not None:
            frame = _frequency_as_of(frame, t, contract.entity.timestamp)
        else:
            frame = frame.with_columns(_expression(t, contract, frame, extensions).alias(t.name))
    return frame


def _frequency_as_of(frame: pl.DataFrame, t: Transform, ts: str) -> pl.DataFrame:
    """A category's share among the events up to each event's time: over the whole snapshot it would leak the
    future into every earlier row's feature."""
    col = pl.col(t.columns[0])
    ordered = frame.with_row_index("_sluice_pos").sort(ts, maintain_order=True)
    share = (pl.int_range(pl.len()).over(col) + 1) / (pl.int_range(pl.len()) + 1)
    return ordered.with_columns(share.cast(pl.Float64).alias(t.name)).sort("_sluice_pos").drop("_sluice_pos")


def _expression(t: Transform, contract: Contract, frame: pl.DataFrame,
                extensions: Extensions | None = None) -> pl.Expr:
    if t.op == "custom":
        return custom_feature(t, extensions or Extensions())
    col = pl.col(t.columns[0])
    a = col.cast(pl.Float64) if t.op in ROW_OPS or t.op in WINDOW_OPS else col
    b = pl.col(t.columns[-1]).cast(pl.Float64)
    if t.op in ROW_OPS:
        return _row_op(t, a, b)
    if t.op in DATE_PARTS:
        return {"year": col.dt.year(), "month": col.dt.month(), "day": col.dt.day(), "dayofweek": col.dt.weekday(),
                "hour": col.dt.hour()}[t.op].cast(pl.Int32)
    if t.op == "category_code":
        spec = contract.columns[t.columns[0]]
        codes = {c: i for i, c in enumerate(spec.categories or [])}
        return col.replace_strict(codes, default=None, return_dtype=pl.Int32)
    if t.op == "frequency":
        return (pl.len().over(col) / pl.len()).cast(pl.Float64)
    assert contract.entity is not None  # checked when the contract was parsed
    key, ts = contract.entity.key, contract.entity.timestamp
    if t.op == "lag":
        return col.shift(t.periods or 1).over(key)
    window = f"{t.days}d"
    if t.op == "window_count":
        return col.is_not_null().cast(pl.Float64).rolling_sum_by(ts, window_size=window).over(key)
    rolling = {"window_sum": a.rolling_sum_by, "window_mean": a.rolling_mean_by, "window_min": a.rolling_min_by,
               "window_max": a.rolling_max_by}[t.op]
    return rolling(ts, window_size=window).over(key)


def custom_feature(t: Transform, extensions: Extensions) -> pl.Expr:
    """A feature the app's function computes: one expression per column in, one expression out."""
    fn = extensions.feature(str(t.function))  # an AppError naming what is registered when it is not
    expr = fn(*(pl.col(c) for c in t.columns), **t.params)
    if not isinstance(expr, pl.Expr):
        from sluice.core.errors import AppError

        raise AppError(f"feature function {t.function!r} returned a {type(expr).__name__}, not a polars expression "
                       "(e.g. `return (a / b).log1p()`)")
    return expr


def _row_op(t: Transform, a: pl.Expr, b: pl.Expr) -> pl.Expr:
    if t.op == "log1p":
        return a.log1p()
    if t.op == "abs":
        return a.abs()
    if t.op == "square":
        return a * a
    if t.op == "clip":
        return a.clip(t.lower, t.upper)
    if t.op == "add":
        return a + b
    if t.op == "subtract":
        return a - b
    if t.op == "multiply":
        return a * b
    return pl.when(b != 0).then(a / b).otherwise(None)  # divide: a zero divisor gives null, not inf


def frequency_tables(frame: pl.DataFrame, contract: Contract) -> dict[str, dict[str, float]]:
    """For each `frequency` feature, the share each category had in the training rows (its latest value for
    entity data), so a model scores a new row with the feature it was trained on, whatever else is in the batch."""
    out: dict[str, dict[str, float]] = {}
    for t in contract.features:
        if t.op == "frequency" and t.name in frame.columns:
            latest = frame.group_by(t.columns[0], maintain_order=True).agg(pl.col(t.name).last())
            out[t.name] = {NULL_KEY if k is None else str(k): float(v) for k, v in latest.iter_rows() if v is not None}
    return out


def transforms_for_scoring(frame: pl.DataFrame, contract: Contract, frequencies: dict[str, dict[str, float]],
                           extensions: Extensions | None = None) -> tuple[pl.DataFrame, dict[str, str]]:
    """The declared features of rows to be scored, one row at a time in effect: row operations and date parts as
    in training, `frequency` from the training table. A per-entity feature (window, lag) needs the entity's history,
    so it must come with the rows; returns the frame and, per missing feature, why it cannot be computed."""
    missing: dict[str, str] = {}
    plan = frame.lazy()  # one collect for every feature: scoring a single row must stay cheap
    for t in contract.features:
        if t.per_entity:
            if t.name not in frame.columns:
                missing[t.name] = (f"feature {t.name!r} ({t.op} over an entity's history) must be supplied with the "
                                   f"rows, e.g. from the online store (`sluice features get`)")
            continue
        if t.op == "frequency":
            table = frequencies.get(t.name, {})
            expr: Any = (pl.col(t.columns[0]).cast(pl.Utf8).fill_null(NULL_KEY)
                         .replace_strict(table, default=0.0, return_dtype=pl.Float64))
            plan = plan.with_columns(expr.alias(t.name))
        else:
            plan = plan.with_columns(_expression(t, contract, frame, extensions).alias(t.name))
    return plan.collect(), missing
