"""Training and scoring: a deterministic holdout, an explicit feature encoding, FLAML search, native LightGBM.

The model artifact is the learner's own format (LightGBM text, XGBoost JSON), so loading it runs no code. For
that to be safe the frame handed to FLAML is already encoded the way FLAML's DataTransformer would leave it
(categoricals first, as pandas categories with a `__NAN__` slot, constant columns dropped), and training checks
that the stored model, loaded back, predicts exactly what FLAML's estimator predicts.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from sluice.core.app import Extensions
from sluice.core.errors import AppError, SluiceError, TransientError
from sluice.ml import blend, linear
from sluice.ml.blend import BLEND_JSON
from sluice.ml.contract import Contract
from sluice.ml.linear import LINEAR_JSON

NAN_CATEGORY = "__NAN__"  # FLAML's sentinel for missing and unseen categories
# Characters a learner refuses or rewrites in a feature name: LightGBM turns a space into `_` (the stored model
# then names columns the encoding does not know) and refuses `"`, `,`, `:`, `[`, `]`, `{`, `}`; XGBoost refuses
# `[`, `]`, `<`.
_UNSAFE_NAME = re.compile(r'[\s",:\[\]{}<>]')


# The holdout split's method. Runs record the one they used (`holdout.split`) and `runs reproduce` recomputes that
# one; runs recorded before the field used version 1.
#   1: the first 8 bytes of sha256(seed, the row's values as text), one digest per row. Building the text (float
#      formatting, concatenation) and a digest per row cost 0.3 s at 100,000 rows x 21 columns.
#   2: one 64-bit word per cell from the value itself (an integer's value, a float's IEEE bits, a date's days; text
#      and everything else: sha256 of the text, once per distinct value), folded per row with splitmix64's mixer,
#      all in numpy: 30x faster, and as stable (defined by numpy's uint64 arithmetic and sha256, not a library's
#      internal hash).
SPLIT_VERSION = 2


def holdout_mask(frame: pl.DataFrame, fraction: float, seed: int, version: int = SPLIT_VERSION) -> np.ndarray:
    """True for holdout rows. A row's side depends only on its content and the seed (and the split's `version`),
    never on its position, so the same row is in the holdout in every snapshot that contains it.

    The row's 64-bit key (see SPLIT_VERSION) is compared with `fraction` of 2**64.
    """
    if version not in (1, 2):
        raise ValueError(f"unknown holdout split version {version!r} (this Sluice knows 1 and 2)")
    if version == 2:
        return split(frame, fraction, seed)[0]
    cols = sorted(frame.columns)
    if not cols or frame.height == 0:
        return np.zeros(frame.height, dtype=bool)
    return _below(_row_keys_v1(frame, cols, seed), fraction)


def split(frame: pl.DataFrame, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The current split (SPLIT_VERSION): (True for holdout rows, each row's 64-bit key). The keys also give the
    search's validation rows (search_validation), without hashing the rows again."""
    cols = sorted(frame.columns)
    if not cols or frame.height == 0:
        return np.zeros(frame.height, dtype=bool), np.full(frame.height, np.iinfo(np.uint64).max, dtype=np.uint64)
    keys = _row_keys_v2(frame, cols, seed)
    return _below(keys, fraction), keys


def _threshold(fraction: float) -> int:
    return max(int(fraction * 2**64), 0)


def _below(keys: np.ndarray, fraction: float) -> np.ndarray:
    threshold = _threshold(fraction)
    if threshold >= 2**64:  # every 8-byte value is below it
        return np.ones(len(keys), dtype=bool)
    return np.asarray(keys < np.uint64(threshold))


def _row_keys_v1(frame: pl.DataFrame, cols: list[str], seed: int) -> np.ndarray:
    keys = frame.select(
        pl.concat_str([pl.col(c).cast(pl.Utf8).fill_null("\x00") for c in cols], separator="\x1f").cast(pl.Binary)
    )[:, 0].to_list()
    salted = hashlib.sha256(f"{seed}\x1e".encode())

    def head(key: bytes, fresh: Callable[[], Any] = salted.copy) -> bytes:
        h = fresh()
        h.update(key)
        return bytes(h.digest()[:8])

    return np.frombuffer(b"".join(map(head, keys)), dtype=">u8").astype(np.uint64)


def _word(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 arrays (arithmetic modulo 2**64)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    out: np.ndarray = h ^ (h >> np.uint64(31))
    return out


def _cell_words(s: pl.Series) -> tuple[str, np.ndarray]:
    """(the value's kind, one uint64 per cell; nulls give 0 and are told apart by the caller)."""
    dtype = s.dtype
    if dtype == pl.Boolean:
        return "bool", s.fill_null(False).cast(pl.UInt64).to_numpy()
    if dtype.is_integer():  # any width: an int32 3 and an int64 3 are the same value, as in version 1's text
        if dtype == pl.UInt64:
            return "int", s.fill_null(0).to_numpy().astype(np.uint64)
        return "int", s.cast(pl.Int64).fill_null(0).to_numpy().view(np.uint64)
    if dtype.is_float():
        x = s.cast(pl.Float64).fill_null(0.0).to_numpy().copy()
        x[x == 0] = 0.0  # -0.0 is 0.0
        x[np.isnan(x)] = np.nan  # one NaN
        return "float", x.view(np.uint64)
    if dtype.is_temporal():  # days, or ticks of the column's unit (part of the kind)
        return f"temporal:{dtype}", s.to_physical().cast(pl.Int64).fill_null(0).to_numpy().view(np.uint64)
    text = s.cast(pl.Utf8)
    distinct = text.drop_nulls().unique()
    words = pl.Series([_word(v) for v in distinct.to_list()], dtype=pl.UInt64)
    return "text", text.replace_strict(distinct, words, default=0, return_dtype=pl.UInt64).fill_null(0).to_numpy()


def _row_keys_v2(frame: pl.DataFrame, cols: list[str], seed: int) -> np.ndarray:
    h = np.full(frame.height, _word(f"sluice-split-2\x1e{seed}"), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, name in enumerate(cols):
            s = frame[name]
            kind, words = _cell_words(s)
            salt = np.uint64(_word(f"{seed}\x1e{i}\x1e{kind}"))
            cell = _mix(words ^ salt)
            if s.null_count():
                cell = np.where(s.is_null().to_numpy(), np.uint64(_word(f"{seed}\x1e{i}\x1enull")), cell)
            h = _mix(h ^ cell)
    return h


@dataclass
class Encoding:
    """How a validated frame becomes model input. Stored beside the model, so scoring needs no training code.

    `order` is the column order the model was trained on. It is stored explicitly: a JSON object's key order is
    not a contract (an earlier version wrote this document with sorted keys, and every stored model then received
    its categorical columns in alphabetical order). Loaders still order columns by the model's own feature names.
    """

    target: str
    task: str
    classes: list[str] | None
    categorical: dict[str, list[str]] = field(default_factory=dict)
    numeric: list[str] = field(default_factory=list)
    # FLAML's DataTransformer fills missing numbers with the training median before fitting, so the model only
    # ever saw medians there; filling them the same way here keeps the stored model's input identical.
    medians: dict[str, float] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    @classmethod
    def fit(cls, frame: pl.DataFrame, contract: Contract, exclude: list[str] | None = None) -> Encoding:
        """Learn categories and the usable columns from training rows (never the `exclude` columns)."""
        skip = set(exclude or ())
        classes = None
        if contract.task != "regression":
            classes = sorted(str(v) for v in frame[contract.target].drop_nulls().unique().to_list())
        categorical: dict[str, list[str]] = {}
        numeric: list[str] = []
        medians: dict[str, float] = {}
        names = [n for n in frame.columns if n != contract.target and n not in skip]
        # Every column's statistics in one select: polars computes them in parallel.
        stats = frame.select(_column_stats(n, frame.schema[n]) for n in names).row(0) if names else ()
        for name, stat in zip(names, stats, strict=True):
            s = frame[name]
            if s.dtype == pl.Utf8:
                if stat["distinct"] < 2 or stat["distinct"] == frame.height - s.null_count():
                    continue  # constant, or an identifier (unique per row): FLAML would drop it behind our back
                categorical[name] = [*sorted(str(v) for v in s.drop_nulls().unique().to_list()), NAN_CATEGORY]
                continue
            median = _median(s, stat)
            if median is None:
                continue  # constant: nothing to learn
            numeric.append(name)
            medians[name] = median
        # Categoricals first: the order FLAML's DataTransformer leaves them in.
        return cls(contract.target, contract.task, classes, categorical, numeric, medians,
                   [*categorical, *numeric])

    @property
    def columns(self) -> list[str]:
        """Model input columns, in the order the model was trained on."""
        return list(self.order) or [*self.categorical, *self.numeric]

    def column_of(self, model_name: str) -> str:
        """The column a model's feature name stands for (`model_name` of it, or the column itself)."""
        if model_name in self.columns:
            return model_name
        named = {feature_name(c): c for c in self.columns}
        if model_name not in named:
            raise ModelMismatch(f"the model's feature {model_name!r} is none of the encoding's columns "
                                f"{self.columns}")
        return named[model_name]

    def with_order(self, names: list[str]) -> Encoding:
        """The same encoding with the model's own column order; refuses names it does not know."""
        if sorted(names) != sorted(self.columns):
            raise ModelMismatch(f"the model's features {names} are not the encoding's columns {self.columns}")
        return Encoding(self.target, self.task, self.classes, self.categorical, self.numeric, self.medians,
                        list(names))

    def features(self, frame: pl.DataFrame) -> pd.DataFrame:
        """Model input for FLAML, as pandas; unseen categories map to the `__NAN__` slot."""
        # Every column in one select: polars computes them in parallel (one select per column cost 6 ms each at
        # 100,000 rows on a loaded machine, the train stage calling this four times).
        encoded = frame.select(self._code_expr(name) if name in self.categorical else self._number_expr(frame, name)
                               for name in self.columns)
        out: dict[str, Any] = {}
        for name in self.columns:
            values = encoded[name].to_numpy()
            out[name] = (pd.Categorical.from_codes(values, categories=self.categorical[name])
                         if name in self.categorical else values)
        # Learners get names they keep as they are; `column_of` maps a stored model's names back.
        return pd.DataFrame({feature_name(n): v for n, v in out.items()}, columns=[feature_name(n) for n in out])

    def matrix(self, frame: pl.DataFrame) -> np.ndarray:
        """Model input as a float matrix in `columns` order: category codes (what LightGBM and FLAML's XGBoost
        turn pandas categories into) and numbers with missing values filled as in training."""
        if not self.columns:
            return np.empty((frame.height, 0))
        exprs = [self._code_expr(name).cast(pl.Float64) if name in self.categorical
                 else self._number_expr(frame, name) for name in self.columns]
        return frame.select(exprs).to_numpy().astype(np.float64, copy=False)

    def _code_expr(self, name: str) -> pl.Expr:
        cats = self.categorical[name]
        index = {c: i for i, c in enumerate(cats)}
        unknown = len(cats) - 1  # the `__NAN__` slot: missing and unseen categories
        return (pl.col(name).cast(pl.Utf8).replace_strict(index, default=unknown, return_dtype=pl.Int32)
                .fill_null(unknown).alias(name))

    def _codes(self, frame: pl.DataFrame, name: str) -> pl.Series:
        return frame.select(self._code_expr(name)).to_series()

    def _number_expr(self, frame: pl.DataFrame, name: str) -> pl.Expr:
        dtype = frame.schema[name]
        col = pl.col(name)
        if dtype == pl.Date:
            col = col.cast(pl.Int32)
        elif isinstance(dtype, pl.Datetime):
            col = col.dt.epoch("s")
        return col.cast(pl.Float64).fill_nan(None).fill_null(self.medians.get(name, float("nan"))).alias(name)

    def _numbers(self, frame: pl.DataFrame, name: str) -> pl.Series:
        return frame.select(self._number_expr(frame, name)).to_series()

    def labels(self, frame: pl.DataFrame) -> np.ndarray:
        """Targets: class indices for classification, floats for regression."""
        y = frame[self.target]
        if self.classes is None:
            return y.cast(pl.Float64).to_numpy()
        index = {c: i for i, c in enumerate(self.classes)}
        # Python's str() names the classes (True, 1.0), so it maps each distinct value once, not each row.
        values = y.drop_nulls().unique()
        codes = pl.Series([index.get(str(v), -1) for v in values.to_list()], dtype=pl.Int64)
        mapped = y.replace_strict(values, codes, default=-1, return_dtype=pl.Int64)
        mapped = pl.select(pl.when(y.is_null()).then(index.get("None", -1)).otherwise(mapped)).to_series()
        return mapped.to_numpy().astype(np.int64, copy=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form. Categorical columns are a list of [name, categories] pairs: their order is data."""
        return {"target": self.target, "task": self.task, "classes": self.classes,
                "categorical": [[name, cats] for name, cats in self.categorical.items()],
                "numeric": self.numeric, "medians": self.medians, "order": self.columns}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Encoding:
        """Inverse of `to_dict`; also reads the older form (categoricals as an object, no `order`)."""
        cats = doc.get("categorical") or {}
        categorical = dict(cats.items()) if isinstance(cats, dict) else {str(n): list(c) for n, c in cats}
        return cls(doc["target"], doc["task"], doc.get("classes"), categorical, list(doc.get("numeric", [])),
                   dict(doc.get("medians", {})), list(doc.get("order", [])))


class ModelMismatch(SluiceError):
    """A stored model and its encoding disagree about the model's input columns."""


LGBM_TEXT = "lightgbm-text"
XGBOOST_JSON = "xgboost-json"
# Learners whose fitted model has a format that loads without running code. Anything else is never stored.
FORMAT_OF_LEARNER = {"lgbm": LGBM_TEXT, "xgboost": XGBOOST_JSON, "xgb_limitdepth": XGBOOST_JSON,
                     "linear": LINEAR_JSON}
EXTENSION = {LGBM_TEXT: "txt", XGBOOST_JSON: "json", LINEAR_JSON: "json", BLEND_JSON: "json"}
# FLAML keeps the running search in module globals (flaml/tune/tune.py: `_runner`, `_running_trial`,
# `_training_iteration`): two searches at once in one process break each other (a StopIteration inside FLAML in
# one, the other recording a configuration of the first one's learner; tests/test_training.py). A worker runs
# stages on several threads, so its searches take turns: `train` holds this lock, and the train stage holds it for
# its whole model work (handlers/train.py), because two fits at once on a 2-core worker would also halve each
# one's trials within its wall-clock budget. Reentrant: the stage's hold covers its own call of `train`.
ONE_SEARCH = threading.RLock()
# Sluice's own learners, added to FLAML's by name (`AutoML.add_learner`).
CUSTOM_LEARNERS: dict[str, Callable[[], type]] = {"linear": linear.flaml_learner}
CUSTOM = "custom:"  # + the learner's name: a model the app's learner saved (`app.learner(..., save=, load=)`)
PICKLE_MAGIC = b"\x80"  # every pickle of protocol 2 or later starts with it


def extension_of(fmt: str) -> str:
    """The file extension of a stored model format."""
    return "bin" if fmt.startswith(CUSTOM) else EXTENSION[fmt]
TASK_METRICS = {"binary": ("roc_auc", "log_loss", "accuracy", "f1"), "multiclass": ("log_loss", "accuracy"),
                "regression": ("rmse", "mae", "r2")}


class TrainingCancelled(Exception):
    """Raised inside a running fit when `sluice runs cancel` asked for it."""


def _summarised(dtype: pl.DataType) -> bool:
    """Columns `_column_stats` summarises without counting their distinct values."""
    return dtype.is_integer() or dtype.is_float() or dtype == pl.Boolean or dtype == pl.Date or isinstance(
        dtype, pl.Datetime)


def _column_stats(name: str, dtype: pl.DataType) -> pl.Expr:
    """What `Encoding.fit` learns of a column, as a struct: a text column's count of distinct values (is it
    constant, or an identifier?); a number's count of values and NaNs, its least and greatest value besides NaN
    (is it constant?) and the two middle values of it as floats (its median). Counting distinct numbers hashes
    every value and np.median went column by column: together 70 ms of the train stage at 100,000 rows x 20."""
    col = pl.col(name)
    if not _summarised(dtype):
        return pl.struct(col.drop_nulls().n_unique().alias("distinct")).alias(name)
    own = col.fill_nan(None) if dtype.is_float() else col
    numbers = _float_expr(col, dtype).fill_nan(None)
    return pl.struct(
        col.count().alias("values"),
        (col.is_nan().sum() if dtype.is_float() else pl.lit(0)).cast(pl.Int64).alias("nans"),
        own.min().alias("least"), own.max().alias("greatest"),
        numbers.count().alias("numbers"),
        numbers.quantile(0.5, "lower").alias("low"), numbers.quantile(0.5, "higher").alias("high"),
    ).alias(name)


def _median(s: pl.Series, stat: dict[str, Any]) -> float | None:
    """A non-text column's median as float (np.median of its numbers besides NaN), or None when it is constant
    (at most one distinct value besides nulls, NaN counting as one; -0.0 is 0.0)."""
    if "distinct" in stat:  # a column `_column_stats` does not summarise
        if stat["distinct"] < 2:
            return None
        return float(np.median(_as_float(s).drop_nulls().drop_nans().to_numpy()))
    values, nans = stat["values"], stat["nans"]
    if values == 0 or nans == values or (nans == 0 and stat["least"] == stat["greatest"]):
        return None
    low, high = float(stat["low"]), float(stat["high"])
    # np.median's own arithmetic: the middle value, or the mean of the two; + 0.0 as its sum never gives -0.0.
    return (low if stat["numbers"] % 2 else (low + high) / 2) + 0.0


def _float_expr(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """`_as_float` as an expression."""
    if dtype == pl.Date:
        col = col.cast(pl.Int32)
    elif isinstance(dtype, pl.Datetime):
        col = col.dt.epoch("s")
    return col.cast(pl.Float64)


def _as_float(s: pl.Series) -> pl.Series:
    """A numeric, date or datetime column as floats (days or seconds since the epoch for times)."""
    if s.dtype == pl.Date:
        s = s.cast(pl.Int32)
    elif isinstance(s.dtype, pl.Datetime):
        s = s.dt.epoch("s")
    return s.cast(pl.Float64)


@dataclass
class Trained:
    """The outcome of one FLAML search: the model artifact and what the search did."""

    model_bytes: bytes
    model_format: str
    best_config: dict[str, Any]
    best_estimator: str
    best_loss: float
    fit_seconds: float
    trial_log: str
    feature_importance: dict[str, float]
    warm_start: dict[str, Any] | None = None
    # The fitted learner (LightGBM's or XGBoost's scikit-learn model), for `refit`; never stored.
    estimator: Any = field(default=None, repr=False)
    # Unfitted scikit-learn models of the best configuration of each blendable learner the search reached, the
    # winner first (ml/blend.py); never stored.
    templates: dict[str, Any] = field(default_factory=dict, repr=False)
    # FLAML's validation loss of each learner's best configuration.
    learner_losses: dict[str, float] = field(default_factory=dict)
    # Seconds FLAML took to train the winning configuration (its `best_config_train_time`): what one more fit of
    # it costs, about, before the blend decides whether it has time.
    best_fit_s: float = 0.0
    best_fit_rows: int = 0  # the rows of that fit
    # How the model the gate judges was fitted, when it is the search's own trial model (`search_validation`):
    # the rows FLAML validated on, the rows it was fitted on, and the boosting rounds it ran (FLAML may stop a
    # trial's boosting early to keep its budget). What `runs reproduce` needs to fit it again. None: FLAML
    # cross-validated and fitted the winner once more on every row.
    search: dict[str, Any] | None = None


@dataclass
class Progress:
    """Trials done and the best loss so far, read from FLAML's trial log while it searches."""

    trials: int = 0
    best_loss: float | None = None
    elapsed_s: float = 0.0


# FLAML validates on a held-out share of the rows when the data is too large to cross-validate in the budget; it
# then fits the winner once more on every row ("retrain_full"). Sluice refits the winner on train + holdout anyway,
# so that extra fit (3 s of a 10 s budget at 100,000 rows, and past the budget) is left out: FLAML is given the
# validation rows itself (a row-hash split, as reproducible as the holdout) and keeps its best trial's model.
SEARCH_VALIDATION_FRACTION = 0.1  # FLAML's own share (flaml.config.SPLIT_RATIO)
RARE_CLASS_ROWS = 20  # classes this rare stay whole in the search's training rows (FLAML's own threshold)


def search_validation(keys: np.ndarray, y: np.ndarray, holdout_fraction: float, classes: list[str] | None
                      ) -> np.ndarray:
    """The training rows FLAML validates its trials on (True), from their split keys (`split`): the band of
    SEARCH_VALIDATION_FRACTION of the keys just above the holdout's, so a row's side depends only on the row, as
    the holdout's does. Rows of classes under RARE_CLASS_ROWS stay out of it: the search's models must see them."""
    low = min(_threshold(holdout_fraction), 2**64 - 1)
    high = min(low + int(SEARCH_VALIDATION_FRACTION * (2**64 - low)), 2**64 - 1)
    mask = (keys >= np.uint64(low)) & (keys < np.uint64(high))
    if classes is not None:
        counts = np.bincount(y[y >= 0], minlength=len(classes))
        mask &= counts[np.clip(y, 0, None)] >= RARE_CLASS_ROWS
    return np.asarray(mask)


def _holds_out(X: pd.DataFrame, validation: np.ndarray, budget_s: float, y_val: np.ndarray,
               classes: list[str] | None) -> bool:
    """Whether FLAML would validate on a held-out share rather than cross-validate (its own rule,
    AutoML._decide_eval_method), the validation rows have every class, and FLAML keeps every column of the
    search's training rows (a column that varies in train may be constant without the validation rows)."""
    from flaml.config import CV_HOLDOUT_THRESHOLD, SMALL_LARGE_THRES

    rows, cols = X.shape
    if rows * cols / 0.9 < SMALL_LARGE_THRES * (budget_s / 3600) and rows < CV_HOLDOUT_THRESHOLD:
        return False
    if classes is not None and len(np.unique(y_val)) != len(classes):
        return False
    return all(_flaml_keeps(X[name], ~validation) for name in X.columns)


def _flaml_keeps(column: pd.Series, rows: np.ndarray) -> bool:
    """Whether FLAML's DataTransformer keeps `column` fitted on `rows` of it (flaml.automl.data): not constant,
    and, for a categorical, not unique per row."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes = np.asarray(column.cat.codes)[rows]
        return len(codes) > 0 and codes.min() != codes.max() and not (
            len(column.cat.categories) >= len(codes) and len(np.unique(codes)) == len(codes))
    values = np.asarray(column, dtype=np.float64)[rows]
    values = values[~np.isnan(values)]
    return len(values) > 0 and values.min() != values.max()


def train(
    frame: pl.DataFrame, encoding: Encoding, contract: Contract, *,
    validation: np.ndarray | None = None,
    starting_points: dict[str, dict[str, Any]] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    time_budget_s: float | None = None,
    extensions: Extensions | None = None,
    on_search_start: Callable[[], None] | None = None,
) -> Trained:
    """FLAML AutoML over the contract's estimators and budget (or `time_budget_s`: what is left of it), on the
    encoded rows of `frame`.

    The artifact is the best learner's own format (LightGBM text or XGBoost JSON): loading it runs no code.
    Before it is returned, the stored form is loaded back through `Predictor` and must predict exactly what
    FLAML's in-memory model predicts on training rows.

    `validation` (search_validation's rows of `frame`): when FLAML would validate on held-out rows, it validates
    on these and the model is its best trial's, fitted on the others; otherwise it cross-validates on all rows.

    `on_search_start` is called once the search has its first model (or has ended without one): work that can
    wait for it (handlers/train.py) slows neither the encoding of FLAML's input nor the first trial, the one that
    guarantees a model in a short budget.
    """
    from flaml.automl import AutoML

    spec = contract.training
    budget_s = time_budget_s or spec.time_budget_s
    X, y = encoding.features(frame), encoding.labels(frame)
    held: dict[str, Any] = {}
    if validation is not None and validation.any() and _holds_out(X, validation, budget_s, y[validation],
                                                                   encoding.classes):
        held = {"X_val": X[validation].reset_index(drop=True), "y_val": y[validation],
                # No final refit of the winner by FLAML, and no duplicated rare-class rows (search_validation keeps
                # them whole): the model is a trial's, fitted on exactly the rows `runs reproduce` recomputes.
                "retrain_full": False, "auto_augment": False}
        X, y, frame = X[~validation].reset_index(drop=True), y[~validation], frame.filter(pl.Series(~validation))
    automl = AutoML()  # type: ignore[no-untyped-call]
    for name in spec.estimators:
        if name in CUSTOM_LEARNERS:
            automl.add_learner(name, CUSTOM_LEARNERS[name]())  # type: ignore[no-untyped-call]
        elif name not in FORMAT_OF_LEARNER:  # the app's own learner (an AppError naming what is registered if not)
            automl.add_learner(name, (extensions or Extensions()).learner(name).estimator)  # type: ignore[no-untyped-call]
    task = "regression" if contract.task == "regression" else "classification"
    jobs = worker_jobs(spec.n_jobs, X.shape[0] * max(X.shape[1], 1))
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "trials.jsonl"
        watcher = _Watcher(log, on_progress, should_cancel, on_first_trial=on_search_start)
        with ONE_SEARCH:
            started = time.perf_counter()
            watcher.start()
            try:
                automl.fit(
                    X_train=X, y_train=y, task=task, metric=contract.metric,
                    time_budget=budget_s,
                    estimator_list=list(spec.estimators), seed=spec.seed, n_jobs=jobs, verbose=0,
                    log_file_name=str(log), log_type="all",
                    starting_points=search_starts(starting_points, list(spec.estimators)), **held,
                )
            finally:
                watcher.stop()
                watcher.first_trial()  # when the search ended before the watcher saw its first trial
            fit_seconds = time.perf_counter() - started
        trial_log = log.read_text() if log.exists() else ""
    warm = None
    if starting_points:
        first = next((t for t in parse_trials(trial_log) if t["learner"] in starting_points), None)
        wanted = starting_points.get(first["learner"]) if first else None
        used = bool(first and wanted and all(_close(first["config"].get(k), v) for k, v in wanted.items()))
        warm = {"starting_points": _jsonable(starting_points), "used": used}
    if automl.best_estimator is None:
        # Nothing finished within the budget: an overloaded worker, or a budget too small for the data.
        raise TransientError(f"FLAML finished no trial within the {spec.time_budget_s:g}s budget (the worker may be "
                             "overloaded); retrying. If it keeps happening, raise training.time_budget_s.")
    model = automl.model
    search = None
    fit_rows, best_fit_s = X.shape[0], float(automl.best_config_train_time or 0.0)
    if held:
        sample_rows = automl._search_states[automl.best_estimator].best_config_sample_size
        again = None
        if sample_rows is not None and sample_rows < X.shape[0]:
            # The winner was found on FLAML's sample of the rows (its shuffled first rows, on a short budget):
            # fitted again on all of them, as FLAML's final retrain would have, so that its rows are the recorded.
            again = f"found on a sample of {sample_rows:,} of the {X.shape[0]:,} rows"
            started_again = time.perf_counter()
            model = _Fitted(refit_template(model.estimator).fit(X, y))
            best_fit_s = time.perf_counter() - started_again
            fit_seconds += best_fit_s
        # FLAML may stop a trial's boosting early to keep its budget: the rounds it ran are the model it scored.
        rounds = boosted_rounds(model.estimator)
        search = {"validation": {"method": "row-hash-band", "version": SPLIT_VERSION,
                                 "fraction": SEARCH_VALIDATION_FRACTION, "seed": spec.seed,
                                 "rare_class_rows": RARE_CLASS_ROWS, "rows": len(held["y_val"])},
                  "train_rows": fit_rows, **({"fitted_again": again} if again else {}),
                  **({"rounds": rounds} if rounds != automl.best_config.get("n_estimators", rounds) else {})}
    data, fmt = export(automl.best_estimator, model, extensions)
    # The promise behind the stored artifact: loaded back, it predicts exactly what FLAML's own model predicts.
    sample = frame.head(min(frame.height, 200))
    ours = Predictor(fmt, data, contract.task, encoding, extensions).score(sample)
    X_sample = X.head(sample.height)
    predictor = automl if model is automl.model else model.estimator  # FLAML's, or the winner fitted again
    theirs = predictor.predict_proba(X_sample) if task == "classification" else predictor.predict(X_sample)
    theirs = np.asarray(theirs)[:, 1] if contract.task == "binary" else np.asarray(theirs)
    if not np.allclose(ours, theirs, atol=1e-6):
        if fmt.startswith(CUSTOM):
            raise AppError(f"learner {automl.best_estimator!r}: the model its `load` returns predicts differently "
                           "from the fitted one; its `save` must keep everything the predictions depend on")
        raise RuntimeError("the stored model disagrees with FLAML's predictions; the encoding drifted from FLAML's "
                           "DataTransformer (is the installed FLAML newer than tested?)")
    losses = {name: float(loss) for name, loss in (automl.best_loss_per_estimator or {}).items()
              if loss is not None and math.isfinite(float(loss))}
    return Trained(data, fmt, _jsonable(automl.best_config), automl.best_estimator, float(automl.best_loss),
                   fit_seconds, trial_log, _importance(model, encoding.columns), warm,
                   estimator=getattr(model, "estimator", None),
                   templates=_templates(automl, model, list(spec.estimators), contract.task, jobs, spec.seed),
                   learner_losses=losses, best_fit_s=best_fit_s, best_fit_rows=fit_rows, search=search)


def boosted_rounds(fitted: Any) -> int | None:
    """The rounds a fitted LightGBM or XGBoost model ran (None for other learners)."""
    booster = getattr(fitted, "booster_", None)
    if booster is not None:
        return int(booster.current_iteration())
    return int(fitted.get_booster().num_boosted_rounds()) if hasattr(fitted, "get_booster") else None


def _templates(automl: Any, model: Any, estimators: list[str], task: str, n_jobs: int, seed: int
               ) -> dict[str, Any]:
    """Unfitted scikit-learn models of each blendable learner's best configuration, the search's winner first,
    then the fixed members (ml/blend.py) when LightGBM is searched, and the linear model's twin on rows scaled to
    one norm (blend.LINEAR_ROWS) when the linear model is, for regression."""
    out: dict[str, Any] = {}
    fixed = blend.fixed_templates(task, n_jobs, seed) if "lgbm" in estimators else {}
    for name in [automl.best_estimator, *estimators]:
        if name in out or name not in blend.BLENDABLE or not (automl.best_config_per_estimator or {}).get(name):
            continue
        if name == automl.best_estimator:
            out[name] = refit_template(model.estimator)
            continue
        flaml_estimator = automl.best_model_for_estimator(name)
        if flaml_estimator is None:
            continue
        params = dict(flaml_estimator.params)
        if name == "lgbm":
            params.setdefault("verbose", -1)
        out[name] = flaml_estimator.estimator_class(**params)
    twin = blend.linear_rows(out["linear"]) if "linear" in out and task in blend.LINEAR_ROWS_TASKS else None
    return out | fixed | ({blend.LINEAR_ROWS: twin} if twin is not None else {})


def refit_template(fitted: Any) -> Any:
    """An unfitted copy of a fitted learner that fits the same model again: FLAML may stop boosting early to keep
    its budget, so the copy asks for the rounds that were evaluated, not the rounds configured."""
    from sklearn.base import clone

    estimator = clone(fitted)
    rounds = boosted_rounds(fitted)
    if rounds is not None:
        estimator.set_params(n_estimators=rounds)
    return estimator


# A single tree model ships as a bag: fitted BAG_FOLDS times, each time on all labelled rows but one fold of them
# (seeded folds, stratified for classes), their predictions averaged, instead of fitted once on all of them. Every
# fit has as many rows as the configuration was chosen on (the training rows are 4/5 of them), and the average takes
# out much of a tree model's variance on small data; it is what AutoGluon ships. Measured on single LightGBM models
# (benchmarks/bag_refit.py --extra: 15 datasets, scikit-learn's, statsmodels', vega_datasets' and generated, 8 test
# splits each, LightGBM's defaults and a small configuration, 2026-11-29, load 3-5 on 2 cores): the bag beat the
# single fit on 180 of 240 splits; mean test scores e.g. anes96 log loss 2.037 -> 1.761, cars' origin 0.519 ->
# 0.467, seattle weather 1.272 -> 1.199, wine 0.081 -> 0.042, diabetes RMSE 61.9 -> 60.0, randhie (20,000 rows)
# 3.970 -> 3.970; worse on the mean in 3 of the 30 (dataset, configuration) pairs: breast cancer's defaults (ROC AUC
# 0.9890 -> 0.9888), iris's small configuration (log loss 0.158 -> 0.175) and modechoice's (ROC AUC 0.9941 ->
# 0.9937). A blend of two members or more is not bagged: it already averages. On the stage's own choices
# (benchmarks/blend_folds.py, `5 widen bag`: one FLAML search per split, 4 splits of 7 datasets) bagging a kept
# blend's tree members changed the test score by noise: better on 14 of 28 splits, worse on 11, the mean better on
# 3 datasets (seattle weather 4 of 4 splits) and worse on 3 (wine 0.0578 -> 0.0620), for 4 times the refit's fits
# and 5 times the models to score. It costs BAG_FOLDS - 1 times a single refit's fit; when that does not fit in
# what is left of the budget, the refit is one fit, as before (handlers/train.py).
BAG_FOLDS = 5
BAG = "-bag"  # a bag's member: <member>-bag<i>
# Only trees are bagged. A linear model varies little from fit to fit, so its fits on 4/5 of the rows average to a
# model that saw fewer rows, no steadier: it is fitted once on every row. Measured on the stage's own choices
# (benchmarks/blend_folds.py, the `5 widen bag` column: one FLAML search per split, 4 splits, 7 datasets,
# 2026-11-29): with every member bagged, the bag lost where linear members carry the blend (breast cancer 4 of 4
# splits, diabetes 3 of 4, wine 3 of 4) and won where trees do (seattle weather 4 of 4, cars' origin 2 of 4).
BAGGED_LEARNERS = ("lgbm", "xgboost", "xgb_limitdepth")


@dataclass
class Refit:
    """The chosen configuration fitted again on more rows (train + holdout): the model that ships."""

    model_bytes: bytes
    model_format: str
    rows: int
    fit_seconds: float
    members: dict[str, tuple[str, bytes]] | None = None  # a blend's member files: {role: (format, bytes)}
    bag: int = 0  # fits per member, each on all rows but one fold (0: one fit on every row)


@dataclass
class RefitInput:
    """A refit's rows encoded: every row of `frame` whose label the encoding knows, and the first 200 of them as a
    frame, for the check of the stored model."""

    X: pd.DataFrame
    y: np.ndarray
    sample: pl.DataFrame


def refit_input(frame: pl.DataFrame, encoding: Encoding) -> RefitInput:
    """What `refit` and `refit_blend` fit on (made beforehand, beside the search, by handlers/train.py)."""
    X, y = encoding.features(frame), encoding.labels(frame)
    known = y >= 0 if encoding.classes is not None else np.ones(len(y), dtype=bool)
    return RefitInput(X[known], y[known], frame.filter(pl.Series(known)).head(200))


def refit(trained: Trained, frame: pl.DataFrame, encoding: Encoding, contract: Contract,
          extensions: Extensions | None = None, prepared: RefitInput | None = None, bag: int = 0) -> Refit:
    """The search's best learner and hyperparameters, fitted on every row of `frame` (or `prepared`: its
    `refit_input`), in a storable format; with `bag` (>= 2) a bag of that many fits (see BAG_FOLDS), stored as a
    blend of them.

    Same learner, same configuration, same encoding: only the rows differ. Like `train`, the stored form is loaded
    back and must predict what the fitted learner predicts."""
    if trained.estimator is None:
        raise ModelMismatch("nothing to refit: the search returned no fitted learner")
    rows = prepared or refit_input(frame, encoding)
    X, y, sample = rows.X, rows.y, rows.sample
    if bag >= 2:
        one = blend.Blend([trained.best_estimator], [1.0], True, "the search's winner")
        bagged = _bagged(one, {trained.best_estimator: refit_template(trained.estimator)}, rows, encoding, contract,
                         bag, extensions)
        if bagged is not None:
            return bagged
    estimator = refit_template(trained.estimator)
    started = time.perf_counter()
    estimator.fit(X, y)
    seconds = time.perf_counter() - started
    data, fmt = export(trained.best_estimator, _Fitted(estimator), extensions)
    ours = Predictor(fmt, data, contract.task, encoding, extensions).score(sample)
    X_sample = X.head(sample.height)
    theirs = np.asarray(estimator.predict(X_sample) if contract.task == "regression"
                        else estimator.predict_proba(X_sample))
    theirs = theirs[:, 1] if contract.task == "binary" else theirs
    if not np.allclose(ours, theirs, atol=1e-6):
        raise RuntimeError("the stored refit model disagrees with the fitted learner's predictions")
    return Refit(data, fmt, len(y), seconds)


def refit_blend(chosen: blend.Blend, templates: dict[str, Any], frame: pl.DataFrame, encoding: Encoding,
                contract: Contract, extensions: Extensions | None = None, prepared: RefitInput | None = None,
                bag: int = 0) -> Refit:
    """A kept blend's members, each fitted again on every row of `frame` (or `prepared`: its `refit_input`), with
    the same weights; with `bag` (>= 2) each member a bag of that many fits sharing its weight (see BAG_FOLDS)."""
    from dataclasses import replace

    from sklearn.base import clone

    rows = prepared or refit_input(frame, encoding)
    if bag >= 2:
        bagged = _bagged(chosen, templates, rows, encoding, contract, bag, extensions)
        if bagged is not None:
            return bagged
    X, y = rows.X, rows.y
    started = time.perf_counter()
    fitted = {n: clone(templates[n]).fit(X, y) for n, w in zip(chosen.learners, chosen.weights, strict=True) if w > 0}
    seconds = time.perf_counter() - started
    again = replace(chosen, fitted=fitted)
    doc, files = export_blend(again, contract.task, extensions)
    check_blend(doc, files, again, rows.sample, encoding, contract.task, extensions)
    return Refit(doc, BLEND_JSON, len(y), seconds, members=files)


def _bagged(chosen: blend.Blend, templates: dict[str, Any], rows: RefitInput, encoding: Encoding,
            contract: Contract, bag: int, extensions: Extensions | None) -> Refit | None:
    """`chosen`'s weighted tree members (BAGGED_LEARNERS), each fitted `bag` times on all of `rows` but one seeded
    fold, sharing its weight, and its other members fitted once on every row, stored and checked as a blend; None
    when there is no tree to bag or the rows cannot be split so (a class with a single row)."""
    from dataclasses import replace

    from sklearn.base import clone

    X, y = rows.X, rows.y
    splits = blend.folds(y, contract.task != "regression", contract.training.seed, bag)
    if len(splits) < 2:
        return None
    used = [(n, w) for n, w in zip(chosen.learners, chosen.weights, strict=True) if w > 0]
    if not any(blend.learner_of(n) in BAGGED_LEARNERS for n, _ in used):
        return None
    names, weights, fitted = [], [], {}
    started = time.perf_counter()
    for name, weight in used:
        if blend.learner_of(name) not in BAGGED_LEARNERS:  # one fit on every row
            fitted[name] = clone(templates[name]).fit(X, y)
            names.append(name)
            weights.append(weight)
            continue
        for i, (fit_rows, _) in enumerate(splits):
            member = f"{name}{BAG}{i}"
            fitted[member] = clone(templates[name]).fit(X.iloc[fit_rows], y[fit_rows])
            names.append(member)
            weights.append(weight / len(splits))
    seconds = time.perf_counter() - started
    again = replace(chosen, learners=names, weights=weights, fitted=fitted)
    doc, files = export_blend(again, contract.task, extensions)
    check_blend(doc, files, again, rows.sample, encoding, contract.task, extensions)
    return Refit(doc, BLEND_JSON, len(y), seconds, members=files, bag=len(splits))


@dataclass
class _Fitted:
    """What `export` reads: FLAML's estimator wrapper exposes the learner's model as `.estimator`."""

    estimator: Any


# LightGBM's own defaults, in FLAML's search space (its regularisation floor is 1/1024, not 0). FLAML starts from
# a deliberately tiny, cheap configuration and climbs; on small data and short budgets it can end below what the
# library's defaults give for free (measured: benchmarks/model_quality.py). Evaluating the defaults as well means
# the search never returns something its own cross-validation scores below the plain default.
LIBRARY_DEFAULTS: dict[str, dict[str, Any]] = {
    "lgbm": {"n_estimators": 100, "num_leaves": 31, "min_child_samples": 20, "learning_rate": 0.1,
             "log_max_bin": 8, "colsample_bytree": 1.0, "reg_alpha": 1 / 1024, "reg_lambda": 1 / 1024},
}
# FLAML's own first point (4 trees of 4 leaves): given starting points replace it, yet it is what guarantees a
# model within a budget of a second or two, so it stays ahead of the defaults.
LOW_COST_START: dict[str, dict[str, Any]] = {
    "lgbm": {"n_estimators": 4, "num_leaves": 4, "min_child_samples": 20, "learning_rate": 0.1,
             "log_max_bin": 8, "colsample_bytree": 1.0, "reg_alpha": 1 / 1024, "reg_lambda": 1.0},
}


# Below this many cells (rows x model columns) a fit runs on one thread when `n_jobs` is -1. LightGBM's OpenMP
# threads spin while they wait; on a shared machine (2 cores at load 7-10) a default fit of breast cancer's 364
# rows took 3.5 to 10 s on 2 threads against 0.14 to 0.2 s on one, and the search ran a few trials; one of
# 80,000 rows x 20 columns took 6.8 to 9.5 s on 2 threads against 1.8 to 2.4 s on one.
SMALL_FIT_CELLS = 5_000_000


def worker_jobs(n_jobs: int, cells: int | None = None) -> int:
    """Threads a fit uses: `training.n_jobs`; -1 (the default) means one thread for a frame of fewer than
    SMALL_FIT_CELLS cells, every core this worker has otherwise (or when the size is not given)."""
    if n_jobs >= 1:
        return n_jobs
    return 1 if cells is not None and cells < SMALL_FIT_CELLS else (os.cpu_count() or 1)


def search_starts(warm: dict[str, dict[str, Any]] | None, estimators: list[str]) -> dict[str, Any]:
    """FLAML's `starting_points`: the champion's configuration first (warm start), FLAML's cheap first point,
    then the library defaults."""
    out: dict[str, Any] = {}
    for name in estimators:
        points = [*([warm[name]] if warm and name in warm else []),
                  *([LOW_COST_START[name], LIBRARY_DEFAULTS[name]] if name in LIBRARY_DEFAULTS else [])]
        if points:
            out[name] = points
    return out


def export(learner: str, model: Any, extensions: Extensions | None = None) -> tuple[bytes, str]:
    """A fitted FLAML estimator in a format that loads without running code."""
    if extensions is not None and learner in extensions.learners:
        own = extensions.learners[learner]
        data = own.save(model.estimator)
        if not isinstance(data, bytes | bytearray):
            raise AppError(f"learner {learner!r}: `save` returned a {type(data).__name__}; it must return bytes "
                           "(e.g. json.dumps(...).encode())")
        if bytes(data[:1]) == PICKLE_MAGIC:
            raise AppError(f"learner {learner!r}: `save` returned a pickle, which Sluice never stores or loads; "
                           "save the fitted parameters as JSON (or the library's own text format) instead")
        return bytes(data), own.format
    fmt = FORMAT_OF_LEARNER.get(learner)
    if fmt == LGBM_TEXT:
        return model.estimator.booster_.model_to_string().encode(), fmt
    if fmt == XGBOOST_JSON:
        return bytes(model.estimator.get_booster().save_raw(raw_format="json")), fmt
    if fmt == LINEAR_JSON:
        return bytes(model.estimator.to_json()), fmt
    raise ModelMismatch(f"learner {learner!r} has no format that loads without running code; "
                        f"use one of {sorted(FORMAT_OF_LEARNER)}")


def export_blend(chosen: blend.Blend, task: str, extensions: Extensions | None = None
                 ) -> tuple[bytes, dict[str, tuple[str, bytes]]]:
    """A kept blend as its JSON document and its members' files ({role: (format, bytes)}), members with no
    weight left out."""
    members, files = [], {}
    for name, weight in zip(chosen.learners, chosen.weights, strict=True):
        if weight <= 0:
            continue
        data, fmt = export(blend.learner_of(name), _Fitted(chosen.fitted[name]), extensions)
        files[blend.role(name)] = (fmt, data)
        members.append({"learner": blend.learner_of(name), "format": fmt, "role": blend.role(name),
                        "sha256": hashlib.sha256(data).hexdigest(), "weight": weight})
    return blend.document(members, task), files


def check_blend(doc: bytes, files: dict[str, tuple[str, bytes]], chosen: blend.Blend, frame: pl.DataFrame,
                encoding: Encoding, task: str, extensions: Extensions | None = None) -> None:
    """The promise behind a stored blend: loaded back, it predicts what its fitted members' average predicts."""
    sample = frame.head(min(frame.height, 200))
    ours = Predictor(BLEND_JSON, doc, task, encoding, extensions,
                     members={r: data for r, (_, data) in files.items()}).score(sample)
    X = encoding.features(sample)
    used = [(n, w) for n, w in zip(chosen.learners, chosen.weights, strict=True) if w > 0]
    theirs = blend.combine([blend.predict(chosen.fitted[n], X, task) for n, _ in used], [w for _, w in used])
    if not np.allclose(ours, theirs, atol=1e-6):
        raise RuntimeError("the stored blend disagrees with its fitted members' predictions")


class Predictor:
    """A stored model, loaded once, with its encoding: `score(frame)` gives P(class 1), class probabilities, or
    values. Columns are handed to the model by name, in the order of the model's own feature names.

    A blend (`sluice-blend-json`) gets its members' files in `members` ({bundle role: bytes}); each is checked
    against the sha256 the blend names and loaded as a Predictor of its own format."""

    def __init__(self, fmt: str, data: bytes, task: str, encoding: Encoding, extensions: Extensions | None = None,
                 members: dict[str, bytes] | None = None):
        self.task, self.format = task, fmt
        self.booster: Any
        self.feature_names: list[str]
        self.parts: list[tuple[float, Predictor, np.ndarray]] = []
        if fmt == BLEND_JSON:
            names = list(encoding.columns)
            try:
                found = blend.read_document(data, members or {})
            except (ValueError, KeyError) as exc:
                raise ModelMismatch(f"blend: {exc}") from exc
            position = {n: i for i, n in enumerate(names)}
            for meta, raw in found:
                if meta["format"] == BLEND_JSON:
                    raise ModelMismatch("a blend's member cannot be a blend")
                member = Predictor(meta["format"], raw, task, encoding, extensions)
                self.parts.append((float(meta["weight"]), member, np.asarray(
                    [position[encoding.column_of(n)] for n in member.feature_names], dtype=np.int64)))
            self.booster = None
        elif fmt.startswith(CUSTOM):
            name = fmt.removeprefix(CUSTOM)
            if extensions is None or name not in extensions.learners:
                have = ", ".join(sorted(extensions.learners)) if extensions and extensions.learners else "none"
                raise AppError(f"this model was trained by the app's own learner {name!r}, which this process does "
                               f"not register (registered: {have}); load it with the app that registers it: "
                               "sluice.load_model(ref, app=app), or run the worker with --app module:app")
            self.booster = extensions.learners[name].load(bytes(data))
            names = list(encoding.columns)
        elif fmt == LGBM_TEXT:
            import lightgbm as lgb

            self.booster = lgb.Booster(model_str=data.decode())
            names = list(self.booster.feature_name())
        elif fmt == XGBOOST_JSON:
            import xgboost as xgb

            self.booster = xgb.Booster()
            self.booster.load_model(bytearray(data))
            names = list(self.booster.feature_names or [])
        elif fmt == LINEAR_JSON:
            self.booster = linear.LinearModel.from_json(data)
            names = list(self.booster.features_)
        else:
            raise ModelMismatch(f"model format {fmt!r} is not one Sluice loads (it loads {sorted(EXTENSION)}; "
                                "pickled models are never loaded)")
        self.encoding = encoding.with_order([encoding.column_of(n) for n in names])
        self.feature_names = names  # as the model knows them: a custom learner's frame and XGBoost's DMatrix

    def score(self, frame: pl.DataFrame) -> np.ndarray:
        """Scores for the rows of an encoded-ready frame (typed, with the contract's features)."""
        return self.score_matrix(self.encoding.matrix(frame))

    def score_matrix(self, X: np.ndarray) -> np.ndarray:
        """Scores for a float matrix whose columns are `feature_names`."""
        if self.parts:
            return blend.combine([p.score_matrix(X[:, cols]) for _, p, cols in self.parts],
                                 [w for w, _, _ in self.parts])
        if self.format.startswith(CUSTOM):
            import pandas as pd

            frame = pd.DataFrame(X, columns=self.feature_names)
            if self.task == "regression":
                return np.asarray(self.booster.predict(frame), dtype=float)
            proba = np.asarray(self.booster.predict_proba(frame), dtype=float)
            return proba[:, 1] if self.task == "binary" else proba
        if self.format == XGBOOST_JSON:
            import xgboost as xgb

            return np.asarray(self.booster.predict(xgb.DMatrix(X, feature_names=self.feature_names)))
        if self.format == LINEAR_JSON:
            return np.asarray(self.booster.scores(X))
        return np.asarray(self.booster.predict(X))


def parse_trials(trial_log: str) -> list[dict[str, Any]]:
    """FLAML's trial log: every trial's learner, configuration, validation loss and wall-clock time."""
    out = []
    for line in trial_log.splitlines():
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line FLAML is still writing
        if "config" not in doc:
            continue
        out.append({"record_id": doc.get("record_id"), "learner": doc.get("learner"), "config": doc["config"],
                    "loss": doc.get("validation_loss"), "trial_time_s": doc.get("trial_time"),
                    "wall_clock_s": doc.get("wall_clock_time")})
    return out


def holdout_metrics(task: str, y: np.ndarray, scores: np.ndarray, n_classes: int | None) -> dict[str, float]:
    """Every standard metric of the task on the holdout."""
    return {name: score(name, y, scores, n_classes) for name in TASK_METRICS[task]}


class _Watcher:
    """Tails FLAML's trial log during the fit: reports progress, stops the fit on request, and calls
    `on_first_trial` once, when the log has its first trial (looked for every FIRST_TRIAL_POLL_S)."""

    FIRST_TRIAL_POLL_S = 0.05

    def __init__(self, log: Path, on_progress: Callable[[Progress], None] | None,
                 should_cancel: Callable[[], bool] | None, every_s: float = 1.0,
                 on_first_trial: Callable[[], None] | None = None):
        self.log, self.on_progress, self.should_cancel, self.every_s = log, on_progress, should_cancel, every_s
        self.on_first_trial = on_first_trial
        self.first_lock = threading.Lock()  # held while `on_first_trial` runs: a caller waits until it is done
        self.target = threading.get_ident()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sluice-fit-watcher", daemon=True)
        self.started = time.perf_counter()

    def start(self) -> None:
        if self.on_progress or self.should_cancel or self.on_first_trial:
            self.thread.start()

    def first_trial(self) -> None:
        """Call `on_first_trial`, unless it was called already."""
        with self.first_lock:
            if self.on_first_trial is not None:
                call, self.on_first_trial = self.on_first_trial, None
                call()

    def _trials(self) -> list[dict[str, Any]]:
        return parse_trials(self.log.read_text(errors="ignore").rsplit("\n", 1)[0]) if self.log.exists() else []

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    def _run(self) -> None:
        last, due = -1, time.perf_counter() + self.every_s
        while not self.stopping.wait(max(0.0, min(due - time.perf_counter(), self.FIRST_TRIAL_POLL_S)
                                         if self.on_first_trial else due - time.perf_counter())):
            if self.on_first_trial and self._trials():
                self.first_trial()
            if time.perf_counter() < due:
                continue
            due = time.perf_counter() + self.every_s
            if self.should_cancel and self.should_cancel():
                # The same mechanism as Dramatiq's time limits: an exception raised in the fitting thread.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.target),
                                                           ctypes.py_object(TrainingCancelled))
                return
            if self.on_progress and self.log.exists():
                trials = self._trials()
                if len(trials) != last:
                    last = len(trials)
                    losses = [t["loss"] for t in trials if t["loss"] is not None]
                    self.on_progress(Progress(len(trials), min(losses) if losses else None,
                                              time.perf_counter() - self.started))


def feature_name(column: str) -> str:
    """The name a learner is given for a column: the column's own, unless a learner would refuse or rewrite it;
    then one with `_` for those characters and a short hash of the original, so that no two columns share one."""
    if column and not _UNSAFE_NAME.search(column):  # "" (pandas' unnamed index column): LightGBM's model text loses it
        return column
    return f"{_UNSAFE_NAME.sub('_', column)}_{hashlib.sha256(column.encode()).hexdigest()[:8]}"


def _importance(model: Any, columns: list[str]) -> dict[str, float]:
    estimator = getattr(model, "estimator", model)
    booster = getattr(estimator, "booster_", None)
    if booster is not None:
        values = booster.feature_importance(importance_type="gain")
    elif hasattr(estimator, "feature_importances_"):
        values = estimator.feature_importances_
    else:
        return {}
    total = float(np.sum(values)) or 1.0
    pairs = sorted(zip(columns, (float(v) / total for v in values), strict=False), key=lambda p: -p[1])
    return dict(pairs)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def score(metric: str, y: np.ndarray, pred: np.ndarray, n_classes: int | None) -> float:
    """The holdout metric. `pred` holds scores as returned by `predict` (or a baseline's)."""
    from sklearn import metrics as m

    if metric == "rmse":
        return float(math.sqrt(m.mean_squared_error(y, pred)))
    if metric == "mae":
        return float(m.mean_absolute_error(y, pred))
    if metric == "r2":
        return float(m.r2_score(y, pred))
    proba = pred if pred.ndim == 2 else np.column_stack([1 - pred, pred])
    labels = list(range(n_classes or proba.shape[1]))
    if metric == "roc_auc":
        if len(set(y.tolist())) < 2:
            return float("nan")
        return float(m.roc_auc_score(y, proba[:, 1]) if proba.shape[1] == 2
                     else m.roc_auc_score(y, proba, multi_class="ovr", labels=labels))
    if metric == "log_loss":
        return float(m.log_loss(y, np.clip(proba, 1e-15, 1), labels=labels))
    predicted = proba.argmax(axis=1)
    if metric == "accuracy":
        return float(m.accuracy_score(y, predicted))
    return float(m.f1_score(y, predicted))


def baseline_scores(y_train: np.ndarray, n: int, task: str, n_classes: int | None) -> np.ndarray:
    """The naive model: class priors (so the majority class wins any argmax), or the training mean."""
    if task == "regression":
        return np.full(n, float(np.mean(y_train)))
    k = n_classes or int(y_train.max()) + 1
    priors = np.bincount(y_train, minlength=k) / len(y_train)
    scores = np.tile(priors, (n, 1))
    return scores[:, 1] if k == 2 else scores


def better(a: float, b: float, higher_is_better: bool, margin: float = 0.0) -> bool:
    """True when `a` beats `b` by more than `margin` in the metric's direction."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a - b > margin if higher_is_better else b - a > margin


def _jsonable(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(doc, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    return out
