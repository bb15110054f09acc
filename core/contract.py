"""Dataset contracts: what a drop must look like and how its model is trained and promoted.

A contract lives in the bucket at `contracts/<dataset>.yaml`. It is parsed with pydantic at that boundary
(untrusted YAML), and inferred from a sample by `sluice contract infer`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sluice.core.errors import ContractError

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


class TrainingSpec(_Strict):
    """How FLAML searches: budget, estimators, seed and the holdout share."""

    time_budget_s: float = Field(default=10.0, gt=0, le=24 * 3600)
    estimators: list[Literal["lgbm"]] = Field(default_factory=lambda: ["lgbm"])  # type: ignore[arg-type]
    seed: int = 42
    n_jobs: int = 1
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)


class GuardrailSpec(_Strict):
    """A secondary metric that must not get worse than the reference by more than `max_regression`, or leave bounds."""

    max_regression: float | None = Field(default=None, ge=0.0)
    min: float | None = None
    max: float | None = None


class PromotionSpec(_Strict):
    """The promotion gate: how a candidate must compare with the champion (first model: the naive baseline).

    The candidate is promoted when the lower bound of the paired-bootstrap confidence interval of its improvement
    exceeds `min_improvement`, and rejected when the upper bound does not, or when a slice, guardrail, size or
    latency limit fails; otherwise (or below `min_holdout_rows`) the evidence is insufficient.
    """

    min_improvement: float = Field(default=0.0, ge=0.0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    bootstrap_resamples: int = Field(default=1000, ge=100, le=100_000)
    min_holdout_rows: int = Field(default=30, ge=1)
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


class Transform(_Strict):
    """A declared feature: a safe operation over contract columns, never code."""

    name: str
    op: Literal["log1p", "abs", "square", "clip", "add", "subtract", "multiply", "divide"]
    columns: list[str] = Field(min_length=1, max_length=2)
    lower: float | None = None
    upper: float | None = None

    @model_validator(mode="after")
    def _arity(self) -> Transform:
        binary = self.op in ("add", "subtract", "multiply", "divide")
        if binary != (len(self.columns) == 2):
            need = "two columns" if binary else "one column"
            raise ValueError(f"transform {self.name!r}: op {self.op!r} takes {need}")
        return self


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
    features: list[Transform] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Contract:
        if not NAME.match(self.dataset):
            raise ValueError(f"dataset {self.dataset!r}: use lowercase letters, digits, '-' and '_'")
        if self.target not in self.columns:
            raise ValueError(f"target {self.target!r} is not among the columns")
        if self.metric not in TASK_METRICS[self.task]:
            raise ValueError(f"metric {self.metric!r} does not fit task {self.task!r}: "
                             f"use one of {sorted(TASK_METRICS[self.task])}")
        for t in self.features:
            for c in t.columns:
                if c not in self.columns or c == self.target:
                    raise ValueError(f"transform {t.name!r} uses {c!r}, which is not a feature column")
            if t.name in self.columns:
                raise ValueError(f"transform {t.name!r} would overwrite a column")
        for c in self.promotion.slices:
            if c not in self.columns or c == self.target:
                raise ValueError(f"promotion slice {c!r} is not a feature column of the contract")
        for g in self.promotion.guardrails:
            if g not in TASK_METRICS[self.task]:
                raise ValueError(f"guardrail metric {g!r} does not fit task {self.task!r}: "
                                 f"use one of {sorted(TASK_METRICS[self.task])}")
        return self

    @property
    def model(self) -> str:
        """The registered model's name."""
        return self.model_name or self.dataset

    @property
    def higher_is_better(self) -> bool:
        """The direction of the metric."""
        return HIGHER_IS_BETTER[self.metric]

    def to_yaml(self) -> str:
        """The contract as YAML, in field order."""
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)

    def fingerprint(self) -> str:
        """sha256 of the canonical contract: the contract version recorded with every data version."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def contract_key(dataset: str) -> str:
    """Where a dataset's contract lives in the bucket."""
    return f"contracts/{dataset}.yaml"


def parse_contract(text: str | bytes, source: str = "contract") -> Contract:
    """Parse and check a contract document; errors name the field and the fix."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ContractError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ContractError(f"{source}: expected a mapping with dataset, target, task, metric and columns")
    try:
        return Contract.model_validate(doc)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise ContractError(f"{source}: invalid contract:\n" + "\n".join(lines)) from exc


def infer_contract(frame: pl.DataFrame, dataset: str, target: str, time_budget_s: float = 10.0) -> Contract:
    """A starting contract from a sample: types, nullability, observed ranges and categories, the task."""
    if target not in frame.columns:
        raise ContractError(f"target {target!r} is not a column of the sample; columns: {frame.columns}")
    columns: dict[str, ColumnSpec] = {}
    for name in frame.columns:
        s = frame[name]
        dtype = _dtype_of(s.dtype)
        spec: dict[str, Any] = {"dtype": dtype, "nullable": bool(s.null_count())}
        if dtype in ("int", "float") and s.drop_nulls().len():
            spec["min"], spec["max"] = float(s.min()), float(s.max())  # type: ignore[arg-type]
        if dtype == "str":
            values = s.drop_nulls().unique().sort().to_list()
            if len(values) <= MAX_CATEGORIES:
                spec["categories"] = [str(v) for v in values]
        columns[name] = ColumnSpec(**spec)
    y = frame[target].drop_nulls()
    distinct = y.n_unique()
    task: Task
    if distinct <= 2:
        task = "binary"
    elif _dtype_of(y.dtype) in ("str", "bool") or (_dtype_of(y.dtype) == "int" and distinct <= 20):
        task = "multiclass"
    else:
        task = "regression"
    if task != "regression" and columns[target].dtype in ("int", "float"):
        # Labels are classes, not a range: pin them so an unseen class is caught at validation.
        columns[target] = ColumnSpec(dtype="str", nullable=False,
                                     categories=[str(v) for v in y.cast(pl.Utf8).unique().sort().to_list()])
    return Contract(
        dataset=dataset, target=target, task=task, metric=DEFAULT_METRIC[task],  # type: ignore[arg-type]
        columns=columns, training=TrainingSpec(time_budget_s=time_budget_s),
    )


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


def load_contract(store: Any, dataset: str) -> Contract:
    """The dataset's contract from the bucket; ContractMissing tells the user how to create one."""
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
    contract = parse_contract(store.get(key), source=f"s3://{store.bucket}/{key}")
    if contract.dataset != dataset:
        raise ContractMissing(f"{key} describes dataset {contract.dataset!r}, not {dataset!r}.",
                              hint="Fix the `dataset:` field and `sluice contract put` it again.")
    return contract
