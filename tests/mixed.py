"""Data that looks like users' data: several categorical columns in non-alphabetical order, a date, nulls, unseen
categories, integers written as floats. All-numeric test data hid a column-order bug that every load path had."""

from __future__ import annotations

import functools
import io
from datetime import date, timedelta

import numpy as np
import polars as pl

from sluice.ml.contract import Contract, parse_contract

DATASET = "shop"
ZONES = ["west", "north", "east", "south", "central"]
COLORS = ["red", "green", "blue", "amber"]
BRANDS = [f"b{i:02d}" for i in range(12)]

CONTRACT = f"""
dataset: {DATASET}
target: price
task: regression
metric: rmse
columns:
  zone: {{dtype: str, nullable: true, categories: {ZONES}}}
  color: {{dtype: str, nullable: true, categories: {COLORS}}}
  brand: {{dtype: str, nullable: true}}
  signup: {{dtype: date, nullable: true}}
  visits: {{dtype: int, nullable: true, min: 0}}
  amount: {{dtype: float, nullable: true}}
  price: {{dtype: float}}
features:
  - {{name: signup_month, op: month, columns: [signup]}}
  - {{name: log_amount, op: log1p, columns: [amount]}}
  - {{name: brand_share, op: frequency, columns: [brand]}}
# LightGBM only, no blend: the loader tests compare the stored model with the booster's own predictions (a
# blend's round trip on these rows is tests/test_blend.py's).
training: {{time_budget_s: 2, debounce_s: 0, warm_start: false, estimators: [lgbm], blend: false}}
"""


def contract(budget_s: float = 2.0) -> Contract:
    """The shop contract with a training budget of `budget_s`."""
    return parse_contract(CONTRACT.replace("time_budget_s: 2,", f"time_budget_s: {budget_s},"))


def frame(n: int, seed: int, *, unseen: bool = False) -> pl.DataFrame:
    """`n` rows whose price depends mostly on the three categorical columns, so a model given them in the wrong
    order scores badly. Columns are in the order zone, color, brand (alphabetically: brand, color, zone)."""
    rng = np.random.default_rng(seed)
    zone = rng.choice(ZONES, n)
    color = rng.choice(COLORS, n)
    brands = BRANDS + (["b98", "b99"] if unseen else [])
    brand = rng.choice(brands, n)
    signup = [date(2024, 1, 1) + timedelta(days=int(d)) for d in rng.integers(0, 700, n)]
    visits = rng.integers(0, 40, n)
    amount = rng.gamma(2.0, 50.0, n)
    effect = ({z: i * 40.0 for i, z in enumerate(ZONES)}, {c: i * -25.0 for i, c in enumerate(COLORS)},
              {b: (i % 5) * 30.0 for i, b in enumerate(brands)})
    price = (np.array([effect[0][z] for z in zone]) + np.array([effect[1][c] for c in color])
             + np.array([effect[2][b] for b in brand]) + 0.8 * amount + 2.0 * visits
             + rng.normal(0, 5, n))
    out = pl.DataFrame({"zone": zone, "color": color, "brand": brand, "signup": signup, "visits": visits,
                        "amount": amount, "price": np.round(price, 2)})
    # Nulls in every feature column.
    nulls = rng.random((n, 6)) < 0.05
    return out.with_columns([pl.when(pl.Series(nulls[:, i])).then(None).otherwise(pl.col(c)).alias(c)
                             for i, c in enumerate(["zone", "color", "brand", "signup", "visits", "amount"])])


def csv_bytes(df: pl.DataFrame, *, ints_as_floats: bool = False) -> bytes:
    """CSV as a data team would send it; `ints_as_floats` writes visits as 3.0 (what pandas does with nulls)."""
    if ints_as_floats:
        df = df.with_columns(pl.col("visits").cast(pl.Float64))
    buf = io.BytesIO()
    df.write_csv(buf, float_precision=None)
    return buf.getvalue()


@functools.lru_cache(maxsize=4)
def trained_bundle(rows: int, budget_s: float) -> tuple[bytes, dict[str, bytes]]:
    """A model trained in-process on `rows` shop rows with FLAML, as a bundle: (manifest, {file: bytes}). Bytes only,
    so tests share one per size. A loaded machine can finish no trial in a small budget: then, as the worker's
    retry would, the budget is doubled (twice at most)."""
    from sluice.core.errors import TransientError
    from sluice.ml import bundle, modeling
    from sluice.ml.transforms import apply_transforms, frequency_tables

    for attempt in range(3):
        shop = contract(budget_s * 2 ** attempt)
        train = apply_transforms(frame(rows, 0), shop)
        encoding = modeling.Encoding.fit(train, shop)
        try:
            trained = modeling.train(train, encoding, shop)
            break
        except TransientError:
            if attempt == 2:
                raise
    return bundle.bundle_files(contract=shop, encoding=encoding, model_bytes=trained.model_bytes,
                               model_format=trained.model_format, frequencies=frequency_tables(train, shop),
                               run_id="in-process")
