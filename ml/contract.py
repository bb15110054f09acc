"""Dataset contracts: what a drop must look like and how its model is trained and promoted.

A contract lives in the bucket at `contracts/<dataset>.yaml`. It is parsed with pydantic at that boundary
(untrusted YAML), and inferred from a sample by `sluice contract infer`.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Literal

import polars as pl
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from sluice.core import keys
from sluice.core.errors import ContractError, SluiceError, clip
from sluice.core.ports import ObjectStore

DType = Literal["int", "float", "str", "bool", "date", "datetime"]
Task = Literal["binary", "multiclass", "regression"]
Metric = Literal["roc_auc", "log_loss", "accuracy", "f1", "rmse", "mae", "r2"]

HIGHER_IS_BETTER = {"roc_auc": True, "accuracy": True, "f1": True, "r2": True,
                    "log_loss": False, "rmse": False, "mae": False}
TASK_METRICS: dict[str, set[str]] = {
    "binary": {"roc_auc", "log_loss", "accuracy", "f1"},
    "multiclass": {"log_loss", "accuracy"},
    "regression": {"rmse", "mae", "r2"},
}
DEFAULT_METRIC = {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}
MAX_CATEGORIES = 50
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    """One column: its type, whether it may be null, and its allowed values."""

    dtype: DType
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    categories: list[str] | None = None
    # Checks the app registers (`@app.check`), by name, or as {name: {parameter: value}}: the user's own code,
    # never code from the bucket. A row failing one is quarantined like any other rule.
    checks: list[str | dict[str, dict[str, Any]]] = Field(default_factory=list)
    # A date or datetime column's layout when it is not one polars reads unaided (`%m/%d/%Y`: US dates, which it
    # reads as day first where it can and not at all where it cannot). Written by `contract infer`; validation and
    # every scoring path read the column with it (ISO dates are taken too).
    format: str | None = Field(default=None, pattern=r"^(%[dmYyHMS]|%\.f|[-/. :T])+$")

    @model_validator(mode="after")
    def _format_for_dates(self) -> ColumnSpec:
        if self.format is not None and self.dtype not in ("date", "datetime"):
            raise ValueError(f"format {self.format!r} is for a date or datetime column, not {self.dtype}")
        return self

    @model_serializer(mode="wrap")
    def _without_unset_format(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A contract without formats dumps (and fingerprints) as it did before the field existed.
        out: dict[str, Any] = handler(self)
        if out.get("format") is None:
            out.pop("format", None)
        return out

    @field_validator("checks")
    @classmethod
    def _check_names(cls, value: list[str | dict[str, dict[str, Any]]]) -> list[str | dict[str, dict[str, Any]]]:
        for item in value:
            if isinstance(item, dict) and len(item) != 1:
                raise ValueError(f"a check is a name or {{name: {{parameter: value}}}}, got {item!r}")
        return value


class LimitsSpec(_Strict):
    """What one dropped file may cost a worker. Each is checked before (or while) the file is read; a file over a
    limit is quarantined with the limit it broke, and the contract can raise it."""

    max_file_bytes: int = Field(default=2 << 30, gt=0)  # after decompression
    max_compression_ratio: float = Field(default=100.0, gt=1)  # once 64 MiB are decompressed; Parquet: 10 x, decoded
    max_rows: int = Field(default=10_000_000, gt=0)
    max_columns: int = Field(default=1_000, gt=0)
    max_cell_bytes: int = Field(default=64 << 10, gt=0)
    max_header_field_bytes: int = Field(default=1 << 10, gt=0)
    # Rows a training run learns from: the snapshot grows with every drop, and FLAML and LightGBM hold several
    # copies of what they train on. Above it, a seeded random sample of this size is trained on (and recorded).
    max_training_rows: int = Field(default=1_000_000, gt=0)


class TrainingSpec(_Strict):
    """How FLAML searches: budget, metric direction, estimators, seed, the holdout share, coalescing, warm start."""

    time_budget_s: float = Field(default=10.0, gt=0, le=24 * 3600)
    # Only learners whose fitted model loads without running code (LightGBM text, XGBoost JSON, Sluice's linear
    # JSON), and the app's own (`app.learner`, each with a non-pickle format); scikit-learn's forests would need
    # pickle, and nothing from the bucket is ever unpickled. Names the app does not register are refused by the
    # stage, saying what is.
    # `linear` (ml/linear.py: logistic or ridge regression stored as JSON) joined the default by measurement
    # (benchmarks/model_quality.py): it wins where the signal is additive (generated churn: +0.02 ROC AUC over plain
    # FLAML) and costs a gradient-boosting win nothing; xgboost at the same budget never won a dataset. Measured
    # again on 14 tables, three splits each (model_quality.py --variant x:estimators=lgbm+linear+xgboost, stop 24):
    # adding xgboost was better on the mean on 5 tables and worse on 7, randhie (plain FLAML's XGBoost table)
    # included: not in the default.
    estimators: list[str] = Field(default_factory=lambda: ["lgbm", "linear"], min_length=1)
    seed: int = 42
    # Threads per fit; -1: every core of the worker (measured in benchmarks/model_quality.py).
    n_jobs: int = Field(default=-1, ge=-1)
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)
    # Drops within this many seconds of each other make one training run on the snapshot, not one per file.
    debounce_s: float = Field(default=30.0, ge=0, le=24 * 3600)
    # Start the search from the champion's best configuration.
    warm_start: bool = True
    # What a suspected leak (a column that alone predicts the target almost perfectly, an identifier that encodes
    # the label, a target that is a function of one column) does: refuse promotion, drop the column and train
    # without it, or only warn. Every finding is named in the run, the card, the event and `sluice status`.
    leakage: Literal["refuse", "exclude", "warn"] = "refuse"
    # Fit the chosen configuration again on train + holdout once the search is evaluated, and ship that model
    # (the gate still judges the holdout-evaluated one). False ships the evaluated model itself.
    refit: bool = True
    # Blend the best model of each blendable learner (lgbm, linear) with weights chosen out of fold, and ship the
    # blend when it beats the best single one on the holdout (ml/blend.py). False ships the single best model.
    blend: bool = True

    @field_validator("estimators", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        for name in value if isinstance(value, list) else []:
            if name in ("rf", "extra_tree", "extra_trees", "kneighbor", "lrl1", "lrl2", "catboost", "histgb", "sgd",
                        "svc", "enet", "lassolars"):
                raise ValueError(f"estimator {name!r} cannot be stored without pickle, which Sluice never loads; "
                                 "use lgbm, xgboost, xgb_limitdepth or linear, or register a learner of your own with "
                                 "app.learner(name, estimator, save=..., load=...)")
            if not isinstance(name, str) or not re.match(r"^[a-z][a-z0-9_]{0,62}$", name):
                raise ValueError(f"estimator {name!r}: a learner name is lowercase letters, digits and '_'")
        return value

    @property
    def time_limit_s(self) -> int:
        """The training actor's time limit: the budget, FLAML's final refit, and room to load and store."""
        return int(self.time_budget_s * 3 + 120)


class GuardrailSpec(_Strict):
    """A secondary metric that must not get worse than the reference by more than `max_regression`, or leave bounds."""

    max_regression: float | None = Field(default=None, ge=0.0)
    min: float | None = None
    max: float | None = None


class PromotionSpec(_Strict):
    """The promotion gate: how a candidate must compare with the champion (first model: the naive baseline).

    The candidate is promoted when the lower bound of the paired-bootstrap confidence interval of its improvement
    exceeds `min_improvement`, and rejected when the upper bound does not, or when a slice, guardrail, size or
    latency limit fails; otherwise (or below `min_holdout_rows`) the evidence is insufficient, except for a model's
    first version that beats the naive baseline (`first_model_needs_evidence`).
    """

    min_improvement: float = Field(default=0.0, ge=0.0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    bootstrap_resamples: int = Field(default=1000, ge=100, le=100_000)
    min_holdout_rows: int = Field(default=30, ge=1)
    # A model's first version has no champion to protect: it is promoted when it beats the naive baseline on the
    # holdout, even where the interval straddles min_improvement or the holdout is under min_holdout_rows (no model
    # at all serves nobody; a noisy target or a small dataset left every version a challenger, and
    # `load_model('m@champion')` failed). True asks the first version for the same evidence as a challenger.
    first_model_needs_evidence: bool = False
    # Slices are contract columns: by value for text, booleans and small integers, by quartile otherwise.
    slices: list[str] = Field(default_factory=list)
    non_inferiority_margin: float = Field(default=0.02, ge=0.0)
    min_slice_rows: int = Field(default=20, ge=1)
    guardrails: dict[Metric, GuardrailSpec] = Field(default_factory=dict)
    max_model_bytes: int | None = Field(default=None, gt=0)
    max_p99_latency_ms: float | None = Field(default=None, gt=0)


class DriftSpec(_Strict):
    """When new data counts as drifted from the champion's training data, and what that triggers."""

    psi_threshold: float = Field(default=0.2, gt=0)
    max_drifted_share: float = Field(default=0.3, ge=0, le=1)
    # always: every new data version retrains; on_drift: only drifted data does; never: data is only recorded.
    retrain: Literal["always", "on_drift", "never"] = "always"


BINARY_OPS = ("add", "subtract", "multiply", "divide")
ROW_OPS = ("log1p", "abs", "square", "clip", *BINARY_OPS)
DATE_PARTS = ("year", "month", "day", "dayofweek", "hour")
ENCODINGS = ("category_code", "frequency")
WINDOW_OPS = ("window_count", "window_sum", "window_mean", "window_min", "window_max")
TransformOp = Literal[
    "log1p", "abs", "square", "clip", "add", "subtract", "multiply", "divide",
    "year", "month", "day", "dayofweek", "hour",
    "category_code", "frequency",
    "window_count", "window_sum", "window_mean", "window_min", "window_max", "lag", "custom",
]


class Transform(_Strict):
    """A declared feature: one operation from a fixed, safe set over contract columns, never code.

    Row operations (arithmetic, log1p, clip), date parts of a date/datetime column, categorical encodings, and
    per-entity operations over event time (windowed count/sum/mean/min/max over `days`, and `lag` by `periods`
    earlier events), which need the contract's `entity`.
    """

    name: str
    op: TransformOp
    columns: list[str] = Field(min_length=1, max_length=16)
    lower: float | None = None
    upper: float | None = None
    days: int | None = Field(default=None, ge=1, le=3650)
    periods: int | None = Field(default=None, ge=1, le=1000)
    # op custom: a feature function the app registers (`@app.feature`), called with one polars expression per
    # column and `params` as keywords. Row-wise: a model scores rows one at a time with the same function.
    function: str | None = None
    params: dict[str, float | int | str | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _arity(self) -> Transform:
        if (self.op == "custom") != (self.function is not None):
            raise ValueError(f"transform {self.name!r}: `function` (a feature function the app registers) goes with "
                             "op custom, and op custom needs one")
        if self.params and self.op != "custom":
            raise ValueError(f"transform {self.name!r}: `params` are for op custom")
        if self.op == "custom":
            return self
        binary = self.op in BINARY_OPS
        if binary != (len(self.columns) == 2) or len(self.columns) > 2:
            need = "two columns" if binary else "one column"
            raise ValueError(f"transform {self.name!r}: op {self.op!r} takes {need}")
        if self.op in WINDOW_OPS and self.days is None:
            raise ValueError(f"transform {self.name!r}: op {self.op!r} needs `days` (the window length)")
        if self.op == "lag" and self.periods is None:
            raise ValueError(f"transform {self.name!r}: op 'lag' needs `periods` (how many events back)")
        if self.op == "clip" and self.lower is None and self.upper is None:
            raise ValueError(f"transform {self.name!r}: op 'clip' needs `lower`, `upper` or both")
        return self

    @property
    def per_entity(self) -> bool:
        """True for operations over an entity's history (windows and lags)."""
        return self.op in WINDOW_OPS or self.op == "lag"


class EntitySpec(_Strict):
    """The data are events about entities: which column names the entity, which holds the event time."""

    key: str
    timestamp: str


class LabelsSpec(_Strict):
    """Labels arrive separately, in labels/<dataset>/, as (entity key, label time, target) rows."""

    timestamp: str = "label_time"
    target: ColumnSpec
    # Feature rows older than this at label time are too stale to use (the row gets nulls instead).
    ttl_days: float | None = Field(default=None, gt=0)


class Contract(_Strict):
    """The contract of one dataset."""

    dataset: str
    target: str
    task: Task
    metric: Metric
    columns: dict[str, ColumnSpec]
    extra_columns: Literal["allow", "drop", "reject"] = "reject"
    # Share of rows that may be split out into the quarantine while the rest goes on; above it, the whole file stops.
    max_invalid_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    model_name: str | None = None
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    drift: DriftSpec = Field(default_factory=DriftSpec)
    entity: EntitySpec | None = None
    labels: LabelsSpec | None = None
    features: list[Transform] = Field(default_factory=list)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    # Comments for `to_yaml`, by dotted field path (`max_invalid_fraction`, `columns.<name>`): what an inferred
    # value means and how to tighten it. Not part of the contract or its fingerprint.
    _notes: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Contract:
        if not NAME.match(self.dataset):
            raise ValueError(f"dataset {self.dataset!r}: use lowercase letters, digits, '-' and '_'")
        if self.labels is None and self.target not in self.columns:
            raise ValueError(f"target {self.target!r} is not among the columns")
        if self.labels is not None:
            if self.entity is None:
                raise ValueError("labels need an `entity` (key and timestamp columns) to be joined to the features")
            if self.target in self.columns:
                raise ValueError(f"target {self.target!r} comes with the labels: remove it from `columns`")
        if self.entity is not None:
            for role, c in (("key", self.entity.key), ("timestamp", self.entity.timestamp)):
                if c not in self.columns:
                    raise ValueError(f"entity {role} {c!r} is not among the columns")
            if self.columns[self.entity.timestamp].dtype not in ("date", "datetime"):
                raise ValueError(f"entity timestamp {self.entity.timestamp!r} must have dtype date or datetime")
        if self.metric not in TASK_METRICS[self.task]:
            raise ValueError(f"metric {self.metric!r} does not fit task {self.task!r}: "
                             f"use one of {sorted(TASK_METRICS[self.task])}")
        names = set(self.columns)
        for t in self.features:
            _check_transform(t, self, names)
            names.add(t.name)
        for c in self.promotion.slices:
            if c not in self.columns or c == self.target:
                raise ValueError(f"promotion slice {c!r} is not a feature column of the contract")
        for g in self.promotion.guardrails:
            if g not in TASK_METRICS[self.task]:
                raise ValueError(f"guardrail metric {g!r} does not fit task {self.task!r}: "
                                 f"use one of {sorted(TASK_METRICS[self.task])}")
        return self

    @property
    def target_spec(self) -> ColumnSpec:
        """The target's type and classes, wherever the target arrives."""
        return self.labels.target if self.labels else self.columns[self.target]

    @property
    def model(self) -> str:
        """The registered model's name."""
        return self.model_name or self.dataset

    @property
    def higher_is_better(self) -> bool:
        """The direction of the metric."""
        return HIGHER_IS_BETTER[self.metric]

    def to_yaml(self) -> str:
        """The contract as YAML, in field order, with the notes of `contract infer` as comments."""
        doc = self.model_dump(mode="json", exclude_none=True)
        if not self._notes:
            return yaml.safe_dump(doc, sort_keys=False)
        lines = [*_comment(self._notes.get(""), 0)]
        for key, value in doc.items():
            lines += _comment(self._notes.get(key), 0)
            if not (isinstance(value, dict) and value and any(f"{key}.{name}" in self._notes for name in value)):
                lines += yaml.safe_dump({key: value}, sort_keys=False).splitlines()
                continue
            lines.append(f"{key}:")  # a block with notes on its entries (columns, limits, promotion, drift)
            for name, item in value.items():
                lines += _comment(self._notes.get(f"{key}.{name}"), 2)
                lines += ["  " + line for line in yaml.safe_dump({name: item}, sort_keys=False).splitlines()]
        return "\n".join(lines) + "\n"

    def __eq__(self, other: object) -> bool:
        """Contracts are equal by content; comments are not part of it."""
        return isinstance(other, Contract) and self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]

    def with_notes(self, notes: dict[str, str]) -> Contract:
        """The same contract, with comments for `to_yaml`."""
        copy = self.model_copy()
        copy._notes = dict(notes)
        return copy

    def attention(self) -> list[str]:
        """The notes of `contract infer` a person should read before putting the contract: columns left out
        (identifiers, pandas' index) and warnings in capitals (dates in several layouts, numbers written as text)."""
        return [f"{key.removeprefix('columns.')}: {text}" for key, text in self._notes.items()
                if key == "extra_columns" or re.search(r"\b[A-Z]{4,}(?: [A-Z]{2,})+\b", text)]

    def fingerprint(self) -> str:
        """sha256 of the canonical contract: the contract version recorded with every data version."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def _check_transform(t: Transform, contract: Contract, known: set[str]) -> None:
    """A transform may only use columns that exist by then, of a type its operation understands."""
    if t.name in known:
        raise ValueError(f"transform {t.name!r} would overwrite a column or an earlier feature")
    for c in t.columns:
        if c not in known or c == contract.target:
            raise ValueError(f"transform {t.name!r} uses {c!r}, which is not a feature column (known: {sorted(known)})")
    if t.op == "custom":
        return  # the function is the app's: it is looked up (and its types are its own business) when it runs
    spec = contract.columns.get(t.columns[0])
    dtype = spec.dtype if spec else "float"  # derived features are numeric
    if t.per_entity and contract.entity is None:
        raise ValueError(f"transform {t.name!r}: {t.op!r} runs over an entity's history; declare `entity` "
                         "(key and timestamp columns) in the contract")
    if t.op in DATE_PARTS and dtype not in ("date", "datetime"):
        raise ValueError(f"transform {t.name!r}: {t.op!r} needs a date or datetime column, {t.columns[0]!r} is {dtype}")
    if t.op in ENCODINGS and dtype != "str":
        raise ValueError(f"transform {t.name!r}: {t.op!r} encodes a str column, {t.columns[0]!r} is {dtype}")
    if t.op == "category_code" and (spec is None or not spec.categories):
        raise ValueError(f"transform {t.name!r}: category_code needs `categories` on column {t.columns[0]!r}")
    numeric_only = (*ROW_OPS, "window_sum", "window_mean", "window_min", "window_max")
    if t.op in numeric_only and dtype not in ("int", "float"):
        raise ValueError(f"transform {t.name!r}: {t.op!r} needs numeric columns, {t.columns[0]!r} is {dtype}")


def contract_key(dataset: str) -> str:
    """Where a dataset's contract lives in the bucket."""
    return keys.Contract(dataset).key


def parse_contract(text: str | bytes, source: str = "contract") -> Contract:
    """Parse and check a contract document; errors name the field and the fix."""
    try:
        # libyaml's parser when PyYAML has it: the same documents, 10x faster (a training run parses the contract
        # three times; 0.28 s at load 3 with the pure-Python parser).
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ContractError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ContractError(f"{source}: expected a mapping with dataset, target, task, metric and columns")
    try:
        return Contract.model_validate(doc)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise ContractError(f"{source}: invalid contract:\n" + "\n".join(lines)) from exc


# `contract infer` sees one sample; the next file of the same source has other extremes, other categories and
# the odd missing value. Inferred limits are therefore wide (the observed range widened on each side by its span or
# by a tenth of its largest magnitude, whichever is more, never across zero: by its span alone, a narrow range far
# from zero such as years 1931 to 1932 refused 1934), features may be missing, and a small share of bad rows is
# quarantined rather than stopping the file. Every such choice is written next to the value, with how to tighten it.
INFERRED_MAX_INVALID_FRACTION = 0.01
UNLABELLED = (" A row without a label passes and is left out of training (its label may come later); set "
              "`nullable: false` to quarantine such rows instead.")
WIDEN_BY_SPAN = 1.0
WIDEN_BY_MAGNITUDE = 0.1


def infer_contract(frame: pl.DataFrame, dataset: str, target: str, time_budget_s: float = 10.0,
                   debounce_s: float = 30.0) -> Contract:
    """A starting contract from a sample: types, widened ranges, the task, and comments on how to tighten it."""
    if target not in frame.columns:
        raise ContractError(f"target {target!r} is not a column of the sample; columns: {frame.columns}")
    columns: dict[str, ColumnSpec] = {}
    notes: dict[str, str] = {}
    index = _pandas_index(frame, target)
    identifiers = [name for name in frame.columns if name not in index and name != target
                   and _identifier(frame[name], name)]
    for name in frame.columns:
        if name in index or name in identifiers:
            continue
        spec, note = _infer_column(frame[name], is_target=name == target)
        if spec.dtype == "str" and name != target and (found := _date_layout(frame[name])) is not None:
            dtype, layout = found
            spec = ColumnSpec(dtype=dtype, nullable=True, format=layout)  # type: ignore[arg-type]
            note = (f"{frame[name].null_count()} missing of {frame.height}; every value reads as {layout} (kept as "
                    "`format`, so a day that could be a month is never read the other way)")
        elif spec.dtype == "str" and name != target and len(layouts := _date_layouts(frame[name])) > 1:
            note += (f"; DATES IN {len(layouts)} LAYOUTS ({', '.join(layouts)}): kept as text, so the model takes "
                     "each date for a category of its own. Export the column in one layout (2024-03-01) and infer "
                     "again to read it as a date")
        columns[name], notes[f"columns.{name}"] = spec, note
    y = frame[target].drop_nulls()
    if y.dtype == pl.Utf8 and _numbers_for_people(y):
        raise ContractError(f"target {target!r} holds numbers written for people ({clip(str(y[0]), 40)!r}: thousands "
                            "separators or a % sign), which would make every value a class of its own. Export the "
                            "column as plain numbers (1234, 0.12) and infer again.")
    distinct = y.n_unique()
    # pandas writes an integer column that has a missing value as floats (1.0, 2.0, ...): labels with a gap must not
    # turn a classifier into a regression, so whole-number floats count as the integers they are.
    whole = _dtype_of(y.dtype) == "int" or (_dtype_of(y.dtype) == "float" and y.len() > 0
                                             and bool((y == y.round(0)).all()) and bool(y.is_finite().all()))
    task: Task
    if distinct <= 2:
        task = "binary"
    elif _dtype_of(y.dtype) in ("str", "bool") or (whole and distinct <= 20):
        task = "multiclass"
    else:
        task = "regression"
    if task != "regression" and _dtype_of(y.dtype) == "bool":
        # A bool target stays bool: validation reads it however the file spells it (pandas writes True/False,
        # other tools true/false or 1/0), where pinned text categories would refuse every row of the sample.
        columns[target] = ColumnSpec(dtype="bool", nullable=True)
        notes[f"columns.{target}"] = "target: true or false (True/False, 1/0 are read the same)." + UNLABELLED
    elif task != "regression":
        # Labels are classes, not a range: pin them so an unseen class is caught at validation.
        classes = [str(v) for v in y.cast(pl.Utf8).unique().sort().to_list()]
        columns[target] = ColumnSpec(dtype="str", nullable=True, categories=classes)
        notes[f"columns.{target}"] = (f"target: the {len(classes)} classes of the sample; a row with another class "
                                      "is quarantined. Add a class here before data with it arrives." + UNLABELLED)
    else:
        notes[f"columns.{target}"] = f"target: {notes[f'columns.{target}']}." + UNLABELLED
    notes[""] = (f"Inferred by `sluice contract infer` from {frame.height} rows. Review it, then "
                 "`sluice contract put`. Limits are deliberately loose so the next file of the same source passes; "
                 "the comments say how to tighten each one.")
    notes["columns"] = (
        "Each column's comment says what the sample held. Numeric min/max are the observed range widened on each "
        f"side by its span or by {WIDEN_BY_MAGNITUDE:.0%} of its largest absolute value, whichever is more (never "
        "across zero), so the next file of the same source passes, a year column's next seasons too; a row outside "
        "is quarantined. Tighten them to the observed range to be strict. Features are nullable (the model "
        "handles missing values): set `nullable: false` to require a value. Text features accept any value (an "
        "unseen one scores as missing): add `categories: [...]` to quarantine rows with other values.")
    notes["task"] = f"{task}: from the target's {distinct} distinct values and type." + (
        " They are whole numbers written as decimals (pandas writes an integer column with missing values so): "
        "set `task: regression` and drop the target's `categories` if they are amounts, not classes."
        if whole and _dtype_of(y.dtype) == "float" and task == "multiclass" else "")
    notes["max_invalid_fraction"] = (
        f"Up to {INFERRED_MAX_INVALID_FRACTION:.0%} of a file's rows may break a rule: they are quarantined with a "
        "report (file, row, column, rule) and the rest goes on; above it the whole file stops. One bad row in a "
        "large export should not hold back the rest. Set 0 to stop any file with a bad row.")
    notes["training"] = ("FLAML's search budget in seconds; debounce_s: drops that arrive while earlier ones are "
                         "still on their way train once, after this many quiet seconds; a drop when nothing else is "
                         "pending trains at once (a file dropped after that training started makes a run of its "
                         "own). leakage: refuse (no promotion), exclude (train without the column) or warn, when "
                         "one column alone predicts the target.")
    notes.update(_LIMIT_NOTES)
    # A date reaches the model as a day number: a trend, but no season or weekday. Their parts are declared
    # features, as a data scientist would add them (plain FLAML expands dates the same way).
    features = [Transform(name=f"{name}_{part}", op=part, columns=[name])  # type: ignore[arg-type]
                for name, spec in columns.items() if name != target and spec.dtype in ("date", "datetime")
                for part in ("month", "day", "dayofweek", *(("hour",) if spec.dtype == "datetime" else ()))
                if f"{name}_{part}" not in columns]
    if features:
        notes["features"] = ("Date parts (month, day of month, weekday, and hour for datetimes) as features: the "
                             "date itself only gives the model a trend. Remove any that should not matter.")
    dropped = []
    if identifiers:
        dropped.append(
            f"{', '.join(repr(n) for n in identifiers)} {'is' if len(identifiers) == 1 else 'are'} unique per row, "
            "like an identifier (a customer or order number): left out of `columns`, so not model input. A model "
            "that learns from ids does not carry over to new ones, and the next file's new ids would fall outside "
            "any range inferred from this one. To train on one anyway, add it under `columns`")
    if index:
        where = (f"the sample's first column {index[0]!r} is unnamed and numbers its rows (pandas' index, written by "
                 "`to_csv()` without `index=False`)" if not PARQUET_INDEX.match(index[0]) else
                 f"the sample's column {index[0]!r} is pandas' index (written by `to_parquet()` for a frame whose "
                 "index is not 0, 1, 2, ...: filtered, sampled or sorted; `reset_index(drop=True)` leaves it out)")
        dropped.append(f"{where}: it is not data, so it is left out of `columns`. Set `reject` once files come "
                       "without it")
    if dropped:
        notes["extra_columns"] = ("drop: columns the contract does not name are dropped. " + "; ".join(dropped)
                                  + ".")
    return Contract(
        dataset=dataset, target=target, task=task, metric=DEFAULT_METRIC[task],  # type: ignore[arg-type]
        columns=columns, max_invalid_fraction=INFERRED_MAX_INVALID_FRACTION, features=features,
        training=TrainingSpec(time_budget_s=time_budget_s, debounce_s=debounce_s),
        extra_columns="drop" if index or identifiers else "reject",
    ).with_notes(notes)


# What `contract infer` writes next to the blocks it leaves at their defaults: what each value means, how to tighten it.
_LIMIT_NOTES = {
    "promotion": ("The gate a new model passes to replace the champion (the first one: the naive baseline), on the "
                  "held-out rows. Defaults; tighten by raising min_improvement or confidence, or adding slices and "
                  "guardrails."),
    "promotion.min_improvement": "promoted only when the whole confidence interval of the gain is above this",
    "promotion.confidence": "of that paired-bootstrap interval; 0.99 asks for stronger evidence",
    "promotion.bootstrap_resamples": "resamples behind the interval; more is steadier and slower",
    "promotion.min_holdout_rows": "fewer held-out rows are insufficient evidence: no decision",
    "promotion.first_model_needs_evidence": ("false: a first version better than the naive baseline is promoted "
                                             "even when the evidence is short; true to ask for the whole interval"),
    "promotion.slices": "feature columns whose every value (or quartile) must not get worse; e.g. [region]",
    "promotion.non_inferiority_margin": "how much worse a slice may be before the candidate is rejected; lower is "
                                        "stricter",
    "promotion.min_slice_rows": "smaller slices are reported, not judged",
    "promotion.guardrails": ("other metrics that must not get worse, e.g. {log_loss: {max_regression: 0.01}}; also "
                             "max_model_bytes and max_p99_latency_ms (single-row predict) may be set"),
    "drift": "When new data counts as drifted from the champion's training data, and what that triggers.",
    "drift.psi_threshold": "a column has drifted when its PSI is above this; lower is more sensitive",
    "drift.max_drifted_share": "the data has drifted when more than this share of its columns has; lower is stricter",
    "drift.retrain": "always: every new data version trains; on_drift: only drifted data; never: only recorded",
    "limits": ("What one file may cost a worker; a file over a limit is quarantined naming the limit. Defaults, far "
               "above most files: lower them to what your files hold to refuse runaway ones sooner."),
    "limits.max_file_bytes": "the file's size in bytes, after decompression",
    "limits.max_compression_ratio": "decompressed over compressed size (a zip bomb is far above it)",
    "limits.max_rows": "rows in one file",
    "limits.max_columns": "columns in one file",
    "limits.max_cell_bytes": "bytes in one cell (or one line of a text file)",
    "limits.max_header_field_bytes": "bytes in one column name",
    "limits.max_training_rows": "above it a run trains on a seeded sample of this many rows",
}


# pandas' to_parquet() writes an unnamed index that is not a plain 0..n-1 range as a column of this name.
PARQUET_INDEX = re.compile(r"^__index_level_[0-9]+__$")


def _pandas_index(frame: pl.DataFrame, target: str) -> list[str]:
    """The columns that are pandas' index written into the file: a first column, unnamed ("" or pandas' own
    "Unnamed: 0") and whole numbers (`to_csv()` without `index=False`), or the `__index_level_N__` columns of
    `to_parquet()`. Not always 0, 1, 2, ... in order: a split or a sample keeps the original rows' numbers, which in
    a file sorted by class tell the class, and a model that needs them cannot score a frame (pandas and polars leave
    the index out of its columns)."""
    parquet = [c for c in frame.columns if PARQUET_INDEX.match(c) and c != target]
    if parquet:
        return parquet
    if frame.width < 3 or frame.height == 0:
        return []
    name = frame.columns[0]
    s = frame[name]
    if name not in ("", "Unnamed: 0") or name == target or not s.dtype.is_integer() or s.null_count():
        return []
    return [name]


# A column named like an identifier: id, ID, customer_id, order-no, Ticket Number, uuid; or camelCase customerId.
IDENTIFIER_NAME = re.compile(r"(?:^|[_\s.-])(?:id|uuid|guid|key|ref|no|nr|num|number)$", re.IGNORECASE)
IDENTIFIER_CAMEL = re.compile(r"[a-z](?:Id|ID|Uuid|UUID|Key|Ref|No|Nr|Num|Number)$")
MIN_IDENTIFIER_ROWS = 20


def _identifier(s: pl.Series, name: str) -> bool:
    """A column that identifies rows rather than describing them: every value different (nulls aside), on enough
    rows to tell, and either named like an identifier (integers or text) or text no two rows share. The leakage
    check catches an identifier that numbers rows in the label's order; this one keeps ids out of the features, where
    each is seen once, and out of ranges that the next file's new ids would break."""
    values = s.drop_nulls()
    if values.len() < MIN_IDENTIFIER_ROWS or values.n_unique() != values.len():
        return False
    if s.dtype.is_integer() or s.dtype == pl.Utf8:
        named = IDENTIFIER_NAME.search(name.strip()) or IDENTIFIER_CAMEL.search(name.strip())
        return bool(named) or (s.dtype == pl.Utf8 and _free_text_id(values))
    return False


def _free_text_id(values: pl.Series) -> bool:
    """Text that no two rows share and that is not a date: an email, a code, a name (dates are read as dates)."""
    return not _date_layouts(values)  # ISO and every layout `_date_layout` knows, alone or together


def _infer_column(s: pl.Series, *, is_target: bool) -> tuple[ColumnSpec, str]:
    """One column's spec and the comment that explains it."""
    dtype = _dtype_of(s.dtype)
    nulls = s.null_count()
    values = s.drop_nulls()
    # Any column may be missing in the next file even if the sample had none. The model handles a missing feature;
    # a row without a label passes and is left out of training (labels that are not known yet are common: pandas
    # then writes 0/1 as 0.0/1.0). Required, one such row in a next file of under 100 rows stopped it whole.
    nullable = True
    parts = [f"{nulls} missing of {s.len()}"]
    spec: dict[str, Any] = {"dtype": dtype, "nullable": nullable}
    if dtype in ("int", "float") and values.len():
        lo, hi = float(values.min()), float(values.max())  # type: ignore[arg-type]
        if lo == hi:
            # A constant says nothing about the range of the next file; only its sign is kept.
            wide_lo, wide_hi = (0.0 if lo >= 0 else None), (0.0 if hi < 0 else None)
        else:
            margin = max(WIDEN_BY_SPAN * (hi - lo), WIDEN_BY_MAGNITUDE * max(abs(lo), abs(hi)))
            wide_lo, wide_hi = lo - margin, hi + margin
            if lo >= 0:
                wide_lo = max(wide_lo, 0.0)  # a count or amount does not turn negative in the next file
            if hi <= 0:
                wide_hi = min(wide_hi, 0.0)
        if dtype == "int":
            wide_lo = None if wide_lo is None else float(math.floor(wide_lo))
            wide_hi = None if wide_hi is None else float(math.ceil(wide_hi))
        spec["min"] = None if wide_lo is None else _round(wide_lo)
        spec["max"] = None if wide_hi is None else _round(wide_hi)
        parts.append(f"observed {lo:g} to {hi:g}")
    if dtype == "str" and not is_target:
        seen = values.unique().sort().to_list()
        shown = ", ".join(str(v) for v in seen[:8]) + (", ..." if len(seen) > 8 else "")
        parts.append(f"{len(seen)} distinct: {shown}")
        if _numbers_for_people(values):
            parts.append("NUMBERS WRITTEN AS TEXT: every value is a number, some with thousands separators or a % "
                         "sign (1,234 or 12%), so the model takes each value for a category and scores an unseen one "
                         "as missing. Export the column as plain numbers (1234, 0.12) and infer again to train on it "
                         "as a number")
    return ColumnSpec(**spec), "; ".join(parts)


# A number as spreadsheets display it: thousands separators (1,234.5) or a percent sign (12%, 12.5 %).
NUMBER_AS_TEXT = r"^-?(?:[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?\s?%)$"


def _numbers_for_people(s: pl.Series) -> bool:
    """Every value a number, some with thousands separators or a percent sign (the rest plain: 512, 0)."""
    if s.dtype != pl.Utf8:
        return False  # a categorical column (pandas' `category` in a Parquet file) is categories by choice
    written = s.drop_nulls().str.strip_chars()
    people = written.str.contains(NUMBER_AS_TEXT)
    return bool(people.any()) and bool((people | written.str.contains(r"^-?[0-9]+(?:\.[0-9]+)?$")).all())


def _round(v: float) -> float:
    """A limit that reads well in YAML: 6 significant digits, rounded outwards by the caller's widening."""
    return float(f"{v:.6g}")


def _comment(text: str | None, indent: int) -> list[str]:
    """YAML comment lines of at most ~110 characters."""
    if not text:
        return []
    import textwrap

    return [" " * indent + "# " + line for line in textwrap.wrap(text, 110 - indent)]


# Layouts `contract infer` recognises in a text column that polars did not read as dates: the first that reads every
# value wins (day first before month first: a sample with a day above 12 tells them apart).
DATE_LAYOUTS = (("date", "%d/%m/%Y"), ("date", "%m/%d/%Y"), ("date", "%d-%m-%Y"), ("date", "%m-%d-%Y"),
                ("date", "%d.%m.%Y"), ("date", "%Y/%m/%d"),
                ("datetime", "%d/%m/%Y %H:%M:%S"), ("datetime", "%m/%d/%Y %H:%M:%S"), ("datetime", "%d/%m/%Y %H:%M"),
                ("datetime", "%m/%d/%Y %H:%M"), ("datetime", "%Y/%m/%d %H:%M:%S"))


def _date_cells(s: pl.Series) -> pl.Series | None:
    """A text column's non-blank values, when each looks like a date (digits and separators); None otherwise."""
    if s.dtype != pl.Utf8:
        return None
    values = s.drop_nulls().str.strip_chars()
    values = values.filter(values.str.len_bytes() > 0)
    if not values.len() or not bool(values.str.contains(r"^[0-9][0-9./: T-]+$").all()):
        return None
    return values


def _unread(values: pl.Series, layouts: list[tuple[str, str]]) -> pl.Series:
    """The values none of `layouts` reads as a date (or datetime)."""
    for dtype, layout in layouts:
        read = (values.str.to_date(layout, strict=False) if dtype == "date"
                else values.str.to_datetime(layout, strict=False, time_unit="us"))
        values = values.filter(read.is_null())
    return values


def _date_layout(s: pl.Series) -> tuple[str, str] | None:
    """(dtype, format) when every value of a text column reads as one date layout."""
    values = _date_cells(s)
    if values is None:
        return None
    return next((layout for layout in DATE_LAYOUTS if not _unread(values, [layout]).len()), None)


def _date_layouts(s: pl.Series) -> list[str]:
    """The layouts that together read every value of a text column as a date, ISO's among them, fewest first found
    (a file stitched from two exports: 2024-03-01 and 03/01/2024); [] when some value is not a date in any."""
    values = _date_cells(s)
    if values is None:
        return []
    candidates = (("date", "%Y-%m-%d"), ("datetime", "%Y-%m-%d %H:%M:%S"), *DATE_LAYOUTS)
    used = [c for c in candidates if _unread(values, [c]).len() < values.len()]
    if _unread(values, used).len():
        return []
    for candidate in list(used):  # the fewest: 01/02/2024 reads day first too, but 13/01 or 01/13 decide
        if len(used) > 1 and not _unread(values, [u for u in used if u != candidate]).len():
            used.remove(candidate)
    return [layout for _, layout in used]


def _dtype_of(dtype: pl.DataType) -> DType:
    if dtype == pl.Boolean:
        return "bool"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    return "str"


def load_contract(store: Any, dataset: str, extensions: Any = None) -> Contract:
    """The dataset's contract from the bucket; ContractMissing tells the user how to create one. With the running
    app's `extensions`, a contract naming a check, feature function or learner the app does not register is
    refused (UnknownExtension: quarantined, saying what is registered and how to register it)."""
    from sluice.core.errors import ContractMissing

    key = contract_key(dataset)
    info = store.head(key)
    if info is None:
        raise ContractMissing(
            f"dataset {dataset!r} has no contract (looked for s3://{store.bucket}/{key}).",
            hint=(f"Create one from a sample and upload it: `sluice contract infer FILE --dataset {dataset} "
                  f"--target COLUMN > {dataset}.yaml`, review it, then `sluice contract put {dataset}.yaml`; "
                  "then drop the file again."),
        )
    try:
        contract = parse_contract(store.get(key), source=f"s3://{store.bucket}/{key}")
    except ContractError as exc:
        from sluice.core.errors import ContractBroken

        raise ContractBroken(f"the contract of dataset {dataset!r} is broken: {exc}",
                             hint=f"Fix it (`sluice contract put {dataset}.yaml` checks it first), then drop the file "
                                  "again or `sluice quarantine replay` it.") from exc
    if contract.dataset != dataset:
        raise ContractMissing(f"{key} describes dataset {contract.dataset!r}, not {dataset!r}.",
                              hint="Fix the `dataset:` field and `sluice contract put` it again.")
    if extensions is not None and (missing := extensions.missing(contract)):
        from sluice.core.errors import UnknownExtension

        raise UnknownExtension(f"the contract of dataset {dataset!r} names what the running app does not register: "
                               + " ".join(missing),
                               hint="Then replay the quarantined file (`sluice quarantine replay`) or drop it again.")
    return contract


def training_time_limit_s(store: ObjectStore, key: str) -> int | None:
    """The training time limit of the contract of `key`'s dataset (`<prefix>/<dataset>/...`), or None when the
    contract is missing or broken (the stage itself reports that)."""
    dataset = keys.dataset_of(key)
    if dataset == "_unknown":
        return None
    try:
        return load_contract(store, dataset).training.time_limit_s
    except SluiceError:
        return None
