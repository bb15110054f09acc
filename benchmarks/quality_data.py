"""The public datasets of benchmarks/model_quality.py: shipped with scikit-learn (no download) or generated here,
with categorical columns, dates and missing values among them. Shared with tests/test_quality_data.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import polars as pl


@dataclass(frozen=True)
class Dataset:
    """One benchmark dataset: its rows, the target column and the task."""

    name: str
    target: str
    task: str
    frame: pl.DataFrame


def _sklearn(loader: Callable[..., object], name: str, task: str) -> Dataset:
    bunch = loader(as_frame=True)
    pdf = bunch.frame.rename(columns=lambda c: str(c).strip().replace(" ", "_").replace("/", "_")  # type: ignore[attr-defined]
                             .replace("(", "").replace(")", "").lower())
    frame = pl.from_pandas(pdf)
    if task != "regression":
        # Classes as readable labels, as a data team would export them.
        names = list(getattr(bunch, "target_names", []))
        frame = frame.with_columns(pl.col("target").map_elements(
            lambda v: str(names[int(v)]) if names else str(v), return_dtype=pl.Utf8))
    return Dataset(name, "target", task, frame)


def churn(n: int = 6000, seed: int = 7) -> Dataset:
    """Binary, generated: subscribers with a plan, a region, a signup date, usage with gaps, and churn."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "plus", "pro", "family"], n, p=[0.4, 0.3, 0.2, 0.1])
    region = rng.choice([f"r{i:02d}" for i in range(30)], n)
    region_effect = {f"r{i:02d}": e for i, e in enumerate(rng.normal(0, 0.6, 30))}
    signup = [date(2020, 1, 1) + timedelta(days=int(d)) for d in rng.integers(0, 1800, n)]
    tenure = np.array([(date(2025, 1, 1) - d).days for d in signup]) / 365
    usage = rng.gamma(2.0, 10.0, n)
    tickets = rng.poisson(1.2, n)
    price = np.select([plan == "basic", plan == "plus", plan == "pro"], [9.0, 15.0, 25.0], 30.0) * rng.uniform(
        0.9, 1.1, n)
    logit = (-1.0 + 0.35 * tickets - 0.04 * usage - 0.5 * tenure + 0.04 * price
             + np.vectorize(region_effect.get)(region) + 0.8 * (plan == "family") * (tickets > 2))
    churned = rng.random(n) < 1 / (1 + np.exp(-logit))
    usage_seen = np.where(rng.random(n) < 0.1, np.nan, usage)
    frame = pl.DataFrame({
        "plan": plan, "region": np.where(rng.random(n) < 0.05, None, region), "signup": signup,
        "usage_hours": usage_seen, "tickets": tickets, "monthly_price": price.round(2),
        "churned": np.where(churned, "yes", "no"),
    }).with_columns(pl.col("usage_hours").fill_nan(None))
    return Dataset("churn (generated)", "churned", "binary", frame)


def sales(n: int = 10000, seed: int = 11) -> Dataset:
    """Regression, generated: daily store sales with a store, a category, a date (weekday and season), promotions
    and missing temperatures."""
    rng = np.random.default_rng(seed)
    store = rng.choice([f"s{i:03d}" for i in range(40)], n)
    store_size = {f"s{i:03d}": s for i, s in enumerate(rng.lognormal(0, 0.4, 40))}
    category = rng.choice(["food", "drinks", "home", "toys", "garden"], n)
    base = {"food": 100.0, "drinks": 60.0, "home": 40.0, "toys": 30.0, "garden": 20.0}
    day = [date(2023, 1, 1) + timedelta(days=int(d)) for d in rng.integers(0, 730, n)]
    weekday = np.array([d.weekday() for d in day])
    month = np.array([d.month for d in day])
    promo = rng.random(n) < 0.2
    temp = 12 + 10 * np.sin((month - 4) / 12 * 2 * np.pi) + rng.normal(0, 3, n)
    seasonal = np.where(category == "garden", 1 + 0.05 * temp, 1.0) * np.where(category == "toys",
                                                                             1 + 1.5 * (month == 12), 1.0)
    mean = (np.vectorize(base.get)(category) * np.vectorize(store_size.get)(store) * seasonal
            * (1 + 0.3 * (weekday >= 5)) * (1 + 0.4 * promo))
    units = rng.gamma(8.0, mean / 8.0)
    frame = pl.DataFrame({
        "store": store, "category": category, "day": day, "promo": promo,
        "temperature": np.where(rng.random(n) < 0.15, np.nan, temp.round(1)), "units": units.round(1),
    }).with_columns(pl.col("temperature").fill_nan(None))
    return Dataset("sales (generated)", "units", "regression", frame)


def diamonds(n: int = 54000, seed: int = 13) -> Dataset:
    """Regression, generated, the size of the largest dataset in issue 10's evaluation: gem prices from carat,
    three graded categories (listed in grade order, not alphabetical), measurements with gaps and a sale date."""
    rng = np.random.default_rng(seed)
    carat = np.clip(rng.lognormal(-0.45, 0.55, n), 0.2, 5.0).round(2)
    cuts, colors = ["Ideal", "Premium", "Very Good", "Good", "Fair"], list("DEFGHIJ")
    clarities = ["IF", "VVS1", "VVS2", "VS1", "VS2", "SI1", "SI2", "I1"]
    cut = rng.choice(cuts, n, p=[0.4, 0.25, 0.2, 0.1, 0.05])
    color = rng.choice(colors, n)
    clarity = rng.choice(clarities, n, p=[0.04, 0.07, 0.1, 0.15, 0.22, 0.24, 0.16, 0.02])
    grade = (np.vectorize(cuts.index)(cut) * -0.04 + np.vectorize(colors.index)(color) * -0.08
             + np.vectorize(clarities.index)(clarity) * -0.1)
    day = [date(2021, 1, 1) + timedelta(days=int(d)) for d in rng.integers(0, 1000, n)]
    trend = np.array([(d - date(2021, 1, 1)).days for d in day]) / 1000 * 0.1
    depth = rng.normal(61.7, 1.4, n).round(1)
    table = rng.normal(57.4, 2.2, n).round(0)  # whole numbers stored as floats, as exports do
    x = (6.4 * carat ** (1 / 3) + rng.normal(0, 0.05, n)).round(2)
    price = np.exp(8.4 + 1.75 * np.log(carat) + grade + trend - 0.03 * np.abs(depth - 61.7)
                   + rng.normal(0, 0.12, n)).round(0)
    frame = pl.DataFrame({
        "carat": carat, "cut": cut, "color": color, "clarity": clarity,
        "depth": np.where(rng.random(n) < 0.03, np.nan, depth), "table": table, "x": x, "sold": day,
        "price": price,
    }).with_columns(pl.col("depth").fill_nan(None))
    return Dataset("diamonds (generated)", "price", "regression", frame)


def extra_datasets() -> list[Dataset]:
    """Run by name only (`--datasets diamonds`): larger than the six, and slower to measure."""
    return [diamonds()]


def all_datasets() -> list[Dataset]:
    """The six datasets: binary, multiclass and regression; 178 to 10,000 rows."""
    from sklearn import datasets

    return [
        _sklearn(datasets.load_breast_cancer, "breast_cancer", "binary"),
        churn(),
        _sklearn(datasets.load_wine, "wine", "multiclass"),
        _sklearn(datasets.load_digits, "digits", "multiclass"),
        _sklearn(datasets.load_diabetes, "diabetes", "regression"),
        sales(),
    ]


def halves(frame: pl.DataFrame, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Two files of the same source: the rows shuffled, then split in the middle."""
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=seed)
    mid = shuffled.height // 2
    return shuffled.head(mid), shuffled.tail(shuffled.height - mid)
