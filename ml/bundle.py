"""Model bundles and the one loader: a stored model that scores new rows exactly as it was scored at the gate.

A bundle is everything needed to score, and nothing executable:

    runs/<dataset>/<run>/bundle/manifest-<sha12>.json     names every file below with its sha256
                               /model-<sha12>.txt|json     LightGBM text, XGBoost JSON, linear JSON, or a blend
                               /member-<name>-<sha12>.*    a blend's members, each named by the blend document
                               /encoding-<sha12>.json      categories, medians, and the column order
                               /contract-<sha12>.yaml      the contract version the model was trained under
                               /signature-<sha12>.json     the input columns and the outputs
                               /transforms-<sha12>.json    training-time tables of declared features

Files are named by their sha256, so concurrent deliveries of the same run never overwrite each other's bytes;
the run document (written once) says which manifest is the run's. A registry version records the manifest's
sha256, so a loader checks what it loads against the registry's own record, not against anything stored beside
the model.

`Model.predict(rows)` types rows through the contract (the typing validation uses), checks the contract's rules,
adds the declared features, encodes, and hands the model its columns by name in the order of its own feature
names. Rows it cannot score are reported with the reason, never scored as garbage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sluice.core import keys
from sluice.core.app import Extensions
from sluice.core.errors import AppError, IntegrityError, ModelInputError
from sluice.core.ports import ObjectStore
from sluice.events.run import read as read_run
from sluice.ml.blend import MEMBER
from sluice.ml.contract import Contract, parse_contract
from sluice.ml.modeling import EXTENSION, Encoding, Predictor, extension_of
from sluice.ml.transforms import NULL_KEY, transforms_for_scoring
from sluice.ml.validation import (
    ISO_MIDNIGHT,
    MISSING_MARKERS,
    POLARS_TYPES,
    check_parts,
    no_value,
    shown,
    typed_exprs,
)

BUNDLE_FORMAT = "sluice-model-bundle"
BUNDLE_SCHEMA_VERSION = 1
ROW = "row"  # 1-based position of an input row in predictions
PREDICTION = "prediction"
UNSCORED = "unscored_reason"
_POS = "_sluice_position"
VERSION_RECORD = "version.json"  # beside a downloaded bundle: the registry's record of it


def sha256(data: bytes) -> str:
    """Hex sha256."""
    return hashlib.sha256(data).hexdigest()


def bundle_files(*, contract: Contract, encoding: Encoding, model_bytes: bytes, model_format: str,
                 frequencies: dict[str, dict[str, float]], run_id: str,
                 members: Mapping[str, tuple[str, bytes]] | None = None, contract_yaml: bytes | None = None,
                 ) -> tuple[bytes, dict[str, bytes]]:
    """A bundle's manifest and files, named by their sha256: (manifest bytes, {file name: bytes}).

    A blend's `members` ({role: (format, bytes)}) are files of their own, listed with their sha256 like the rest.
    `contract_yaml`: the contract's `to_yaml()`, encoded, when the caller made it already (the train stage makes
    two bundles of one contract, and makes it beside the search)."""
    contents = {
        "model": (extension_of(model_format), model_bytes),
        **{r: (extension_of(fmt), data) for r, (fmt, data) in (members or {}).items()},
        "encoding": ("json", json.dumps(encoding.to_dict()).encode()),
        "contract": ("yaml", contract_yaml if contract_yaml is not None else contract.to_yaml().encode()),
        "signature": ("json", json.dumps(signature(contract, encoding)).encode()),
        "transforms": ("json", json.dumps({"frequency": frequencies}).encode()),
    }
    files: dict[str, bytes] = {}
    listing: dict[str, dict[str, Any]] = {}
    for role, (ext, data) in contents.items():
        digest = sha256(data)
        name = f"{role}-{digest[:12]}.{ext}"
        files[name] = data
        listing[role] = {"path": name, "sha256": digest, "bytes": len(data)}
    listing["model"]["format"] = model_format
    for r, (fmt, _) in (members or {}).items():
        listing[r]["format"] = fmt
    manifest = {
        "format": BUNDLE_FORMAT, "schema_version": BUNDLE_SCHEMA_VERSION, "run_id": run_id,
        "dataset": contract.dataset, "model": contract.model, "task": contract.task, "target": encoding.target,
        "classes": encoding.classes, "model_format": model_format, "contract_version": contract.fingerprint(),
        "feature_order": encoding.columns, "files": listing,
    }
    return json.dumps(manifest, indent=1).encode(), files


def signature(contract: Contract, encoding: Encoding) -> dict[str, Any]:
    """What the model takes and gives: the input columns it needs, with their contract types, and its outputs."""
    needed = required_columns(contract, encoding)
    inputs = [{"name": name, "dtype": spec.dtype, "nullable": spec.nullable, "required": name in needed,
               **({"categories": spec.categories} if spec.categories else {}),
               **({"min": spec.min} if spec.min is not None else {}),
               **({"max": spec.max} if spec.max is not None else {})}
              for name, spec in contract.columns.items() if name != contract.target]
    if contract.task == "regression":
        outputs: dict[str, Any] = {PREDICTION: "float"}
    else:
        outputs = {PREDICTION: "class label", "probabilities": {c: "float" for c in encoding.classes or []}}
    return {"inputs": inputs, "derived_features": [t.name for t in contract.features],
            "feature_order": encoding.columns, "outputs": outputs}


def needed_features(contract: Contract, encoding: Encoding) -> Contract:
    """`contract` with only the declared features the model's input is computed from (directly, or through other
    features), in their order: scoring computes no other, so a column that only feeds features the model was
    trained without (a leak `training.leakage: exclude` left out, with what is derived from it) is not needed."""
    derived = {t.name: t for t in contract.features}
    keep: set[str] = set()
    todo = [c for c in encoding.columns if c in derived]
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(c for c in derived[name].columns if c in derived)
    if len(keep) == len(contract.features):
        return contract
    return contract.model_copy(update={"features": [t for t in contract.features if t.name in keep]})


def required_columns(contract: Contract, encoding: Encoding) -> set[str]:
    """Contract columns the model's input is computed from (directly, or through declared features)."""
    derived = {t.name: t for t in contract.features}
    out: set[str] = set()
    todo = list(encoding.columns)
    while todo:
        name = todo.pop()
        if name in derived:
            if not derived[name].per_entity:
                todo.extend(derived[name].columns)
            continue
        if name in contract.columns:
            out.add(name)
    return out


def typed_label(cls: str, dtype: str) -> Any:
    """A class as the target column held it: the bool True for "True" (or "true", "1"), the int 3 for "3" (or
    "3.0"); text stays text, and so does a class its type cannot read."""
    if dtype == "bool" and cls.strip().lower() in ("true", "false", "1", "0"):
        return cls.strip().lower() in ("true", "1")
    if dtype == "int":
        with contextlib.suppress(ValueError):
            number = float(cls)
            if number.is_integer() and abs(number) < 2.0**53:
                return int(number)
    return cls


@dataclass
class Predictions:
    """Scores with their meaning, for every input row: scored rows have a prediction, the others a reason."""

    model: str
    version: int | None
    model_sha256: str
    bundle_sha256: str
    task: str
    classes: list[str] | None
    rows: int
    scored: np.ndarray  # 0-based positions of scored rows
    scores: np.ndarray  # regression values, P(class 1) for binary, class probabilities for multiclass
    unscored: list[dict[str, Any]] = field(default_factory=list)  # {row (1-based), column, reason}
    # The target's contract type: a class is given back as the target held it (True, 3), not as its text ("True")
    label_type: str = "str"
    _rows: list[Any] | None = field(default=None, init=False, repr=False, compare=False)  # per_row, made once

    @property
    def probabilities(self) -> np.ndarray | None:
        """Per-class probabilities of scored rows (columns in `classes` order); None for regression."""
        if self.classes is None:
            return None
        if self.scores.ndim == 1:
            return np.column_stack([1 - self.scores, self.scores])
        return self.scores

    @property
    def labels(self) -> list[Any]:
        """The prediction of each scored row: a class label, or the value."""
        proba = self.probabilities
        if proba is None or self.classes is None:
            return [float(v) for v in self.scores]
        if len(proba) == 0:
            return []
        typed = [typed_label(c, self.label_type) for c in self.classes]
        return [typed[i] for i in proba.argmax(axis=1)]

    def per_row(self) -> list[Any]:
        """The prediction of every input row, in its order: a class label or the value, None where it was not scored
        (`unscored` says why). Also what `len()`, iteration and indexing give (`model.predict(frame)[:5]`)."""
        if self._rows is None:  # indexing row by row must not rebuild the list each time
            self._rows = [None] * self.rows
            for i, label in zip(self.scored.tolist(), self.labels, strict=True):
                self._rows[i] = label
        return list(self._rows)

    def __len__(self) -> int:
        return self.rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.per_row())

    def __getitem__(self, index: int | slice) -> Any:
        self.per_row()
        assert self._rows is not None
        return self._rows[index]

    def to_polars(self) -> pl.DataFrame:
        """One row per input row: `row`, `prediction`, `probability_<class>`, `unscored_reason`."""
        n = self.rows
        columns: dict[str, Any] = {ROW: list(range(1, n + 1)), PREDICTION: self.per_row()}
        proba = self.probabilities
        if proba is not None and self.classes is not None:
            for j, cls in enumerate(self.classes):
                col: list[float | None] = [None] * n
                for i, p in zip(self.scored.tolist(), proba[:, j].tolist(), strict=True):
                    col[i] = p
                columns[f"probability_{cls}"] = col
        reasons: list[str | None] = [None] * n
        for u in self.unscored:
            i = u["row"] - 1
            reasons[i] = u["reason"] if reasons[i] is None else f"{reasons[i]}; {u['reason']}"
        columns[UNSCORED] = reasons
        return pl.DataFrame(columns, strict=False)

    def to_dicts(self) -> list[dict[str, Any]]:
        """JSON-safe records, one per input row."""
        out = []
        for rec in self.to_polars().iter_rows(named=True):
            doc: dict[str, Any] = {ROW: rec[ROW]}
            if rec[UNSCORED] is None:
                doc[PREDICTION] = rec[PREDICTION]
                if self.classes is not None:
                    doc["probabilities"] = {c: rec[f"probability_{c}"] for c in self.classes}
            else:
                doc["unscored"] = rec[UNSCORED]
            out.append(doc)
        return out

    def describe(self) -> dict[str, Any]:
        """Who scored: model, version and the sha256 of the artifact and bundle."""
        return {"model": self.model, "version": self.version, "model_sha256": self.model_sha256,
                "bundle_sha256": self.bundle_sha256}


class Model:
    """A loaded, verified bundle. Use `sluice.load_model(...)` to get one."""

    def __init__(self, manifest: dict[str, Any], files: Mapping[str, bytes], *, bundle_sha256: str,
                 version: int | None = None, extensions: Extensions | None = None):
        if manifest.get("format") != BUNDLE_FORMAT:
            raise IntegrityError(f"not a Sluice model bundle (format {manifest.get('format')!r})")
        self.manifest = manifest
        self.bundle_sha256 = bundle_sha256
        self.version = version
        self.name: str = manifest["model"]
        self.dataset: str = manifest["dataset"]
        self.task: str = manifest["task"]
        self.contract = parse_contract(files["contract"], source=f"bundle {bundle_sha256[:12]} contract")
        # The app's feature functions and learner, which the model needs to score: the user's code, never the bundle's.
        self.extensions = extensions or Extensions()
        for t in self.contract.features:
            if t.op == "custom" and t.function not in self.extensions.features:
                have = ", ".join(sorted(self.extensions.features)) or "none"
                raise AppError(f"model {self.name!r} computes feature {t.name!r} with the feature function "
                               f"{t.function!r} of its app, which this process does not register (registered: "
                               f"{have}); load it with the app that registers it: sluice.load_model(ref, app=app)")
        self.signature: dict[str, Any] = json.loads(files["signature"])
        self.frequencies: dict[str, dict[str, float]] = json.loads(files["transforms"]).get("frequency", {})
        encoding = Encoding.from_dict(json.loads(files["encoding"]))
        self.model_sha256: str = manifest["files"]["model"]["sha256"]
        members = {r: data for r, data in files.items() if r.startswith(MEMBER)}
        self.predictor = Predictor(manifest["model_format"], files["model"], self.task, encoding, self.extensions,
                                   members=members)
        self.encoding = self.predictor.encoding  # in the model's own column order
        self.classes = self.encoding.classes
        self.label_type = self.contract.target_spec.dtype
        self.required = required_columns(self.contract, self.encoding)
        self._scoring = needed_features(self.contract, self.encoding)  # the contract with only the model's features
        self._fast = _FastRows(self._scoring, self.encoding, self.frequencies, self.required)

    def __repr__(self) -> str:
        v = f" v{self.version}" if self.version is not None else ""
        return f"<sluice Model {self.name}{v} {self.task} sha256={self.model_sha256[:12]}>"

    # -- scoring rows that come from outside -------------------------------------------------------------------
    def _app_checks(self, name: str, spec: Any) -> list[tuple[pl.Expr, str, str]]:
        """The contract's checks on column `name` that the loaded app registers (`@app.check`), as validation runs
        them: a row whose value fails one is not scored. A check the loaded app lacks (`load_model` without `app=`,
        `serve` without `--app`) cannot run here; one written as a `pandera.Check` runs in validation only."""
        rules = []
        for item in spec.checks:
            check, params = check_parts(item)
            fn = self.extensions.checks.get(check)
            if fn is None or not callable(fn) or type(fn).__module__.startswith("pandera"):
                continue
            expr = fn(pl.col(name), **params)  # as validation calls it (ml/validation.custom_check)
            if isinstance(expr, pl.Expr):
                rules.append((pl.col(name).is_not_null() & ~expr, name, f"fails the app's check {check!r}"))
        return rules

    def predict(self, rows: Any) -> Predictions:
        """Score new rows: a polars or pandas frame, a list of dicts, one dict, or a path to CSV/Parquet."""
        if isinstance(rows, Mapping):
            rows = [rows]
        if isinstance(rows, list) and len(rows) <= FAST_ROWS and all(isinstance(r, Mapping) for r in rows):
            fast = self._predict_fast(rows)
            if fast is not None:
                return fast
        absent = _absent_keys(rows) if isinstance(rows, list) else {}
        return self._predict_frame(as_frame(rows), absent)

    def _predict_fast(self, rows: list[Mapping[str, Any]]) -> Predictions | None:
        """A few well-formed rows (what a service receives), typed and featured in plain Python: a polars plan
        costs about a millisecond per call, this a few microseconds per value. It handles only the happy path and
        returns None for anything else (a bad value, an unusual format), which the general path then scores and
        explains; a property test holds the two paths to identical scores."""
        try:
            matrix = [self._fast.row(r) for r in rows]
        except _Bail:
            return None
        scores = self.predictor.score_matrix(np.asarray(matrix, dtype=np.float64))
        return Predictions(self.name, self.version, self.model_sha256, self.bundle_sha256, self.task, self.classes,
                           len(rows), np.arange(len(rows)), scores, [], self.label_type)

    def _predict_frame(self, frame: pl.DataFrame, absent: Mapping[str, list[int]] | None = None) -> Predictions:
        """The general path: any number of rows, any input types; explains every row it cannot score. `absent`:
        the rows (0-based) of row dicts that lack a key other rows have, by key."""
        n = frame.height
        schema = frame.schema
        problems: dict[int, list[tuple[str | None, str]]] = {}
        # One lazy plan types every needed column and evaluates every contract rule on it: a handful of polars
        # calls per request instead of several per column (a single row then costs well under a millisecond).
        prepare, typed, flags, rules = [], [], [], []
        lacking: set[tuple[int, str]] = set()
        for name in sorted(self.required):
            spec = self.contract.columns[name]
            if name not in schema:
                for i in range(n):
                    problems.setdefault(i, []).append((name, f"column {name!r} is missing"))
                typed.append(pl.lit(None, dtype=POLARS_TYPES[spec.dtype]).alias(name))
                continue
            for i in (absent or {}).get(name, ()):  # as if the row came alone: its column is missing
                problems.setdefault(i, []).append((name, f"column {name!r} is missing"))
                lacking.add((i, name))
            dtype = schema[name]
            if dtype in (pl.Categorical, pl.Enum, pl.Null) or (spec.dtype == "str" and dtype != pl.Utf8):
                prepare.append(_as_text(pl.col(name), dtype).alias(name))
                dtype = pl.Utf8()
            typed_e, failed_e, non_finite_e = typed_exprs(name, spec, is_text=dtype == pl.Utf8, source=dtype)
            if dtype == pl.Boolean and spec.dtype != "bool":  # JSON true is not the number 1 (nor a date)
                failed_e = failed_e | pl.col(name).is_not_null()
            typed.append(typed_e)
            flags.append((failed_e | non_finite_e).alias(f"_bad_type {name}"))
            col = pl.col(name)
            if not spec.nullable:
                rules.append((col.is_null() & ~pl.col(f"_bad_type {name}"), name, "is missing, and the contract "
                              "does not allow nulls"))
            if spec.min is not None:
                rules.append((col.cast(pl.Float64) < spec.min, name, f"is below the contract's min {spec.min}"))
            if spec.max is not None:
                rules.append((col.cast(pl.Float64) > spec.max, name, f"is above the contract's max {spec.max}"))
            if spec.categories is not None:
                rules.append((col.is_not_null() & ~col.cast(pl.Utf8).is_in(spec.categories), name,
                              "is not one of the contract's categories"))
            rules += self._app_checks(name, spec)
        # Per-entity features come with the rows (they need the entity's history).
        extra = [c for c in frame.columns if c not in self.required and c not in self.contract.columns]
        plan = frame.lazy()
        if prepare:
            plan = plan.with_columns(prepare)
        plan = plan.select([*typed, *flags, *(pl.col(c) for c in extra), pl.int_range(pl.len()).alias(_POS)])
        plan = plan.with_columns([e.fill_null(False).alias(f"_rule {i}") for i, (e, _, _) in enumerate(rules)])
        checked = plan.collect()
        flag_names = [c for c in checked.columns if c.startswith(("_bad_type ", "_rule "))]
        if flag_names:
            bad = checked.filter(pl.any_horizontal(flag_names))
            for rec in bad.iter_rows(named=True):
                i = rec[_POS]
                for name in sorted(self.required):
                    if rec.get(f"_bad_type {name}"):
                        expected = self.contract.columns[name].dtype
                        problems.setdefault(i, []).append(
                            (name, f"{name}: expected {expected}, got {_short(shown(frame[name][i]))}"
                                   + _type_hint(expected, schema[name])))
                for j, (_, name, what) in enumerate(rules):
                    if rec[f"_rule {j}"] and (i, name) not in lacking:  # a lacking key: said once
                        value = rec[name]
                        problems.setdefault(i, []).append(
                            (name, f"{name}: {_short(value)} {what}" if value is not None else f"{name} {what}"))
        featured, missing = transforms_for_scoring(checked.drop(flag_names), self._scoring, self.frequencies,
                                                  self.extensions)
        for feature, why in missing.items():
            if feature in self.encoding.columns:
                for i in range(n):
                    problems.setdefault(i, []).append((feature, why))
        featured = _supplied_numbers(self.contract, self.encoding, featured, problems)
        scored = np.array([i for i in range(n) if i not in problems], dtype=np.int64)
        ok = featured if len(scored) == n else featured[scored.tolist()]
        scores = self.predictor.score(ok) if len(scored) else _empty_scores(self.task, self.classes)
        unscored = [{ROW: i + 1, "column": col, "reason": reason}
                    for i in sorted(problems) for col, reason in problems[i]]
        return Predictions(self.name, self.version, self.model_sha256, self.bundle_sha256, self.task, self.classes,
                           n, scored, scores, unscored, self.label_type)

    # -- scoring rows Sluice already typed (holdouts, feature sets) ------------------------------------------------
    def score_features(self, frame: pl.DataFrame) -> np.ndarray:
        """Scores for rows that are already typed and carry the declared features (a run's holdout, a feature set):
        the same encoding and model as `predict`, without typing and rule checks."""
        return self.predictor.score(frame)


FAST_ROWS = 64


class _Bail(Exception):
    """The fast path does not handle this input; the general path will."""


_INT = re.compile(r"-?\d{1,18}")
_FLOAT = re.compile(r"-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_BOOLS = {"true": True, "false": False, "1": True, "0": False}
_EPOCH = date(1970, 1, 1)
DATE_HAS_NO_TIME = " (a date column takes a date, or a datetime at exactly midnight such as 2025-04-05T00:00:00)"
NUMBER_IS_NO_DATE = (" (a number is not a {0}: send it as text such as 2025-04-05{1}; pandas' to_json writes "
                     "milliseconds unless given date_format='iso')")


def _type_hint(expected: str, source: pl.DataType) -> str:
    """What to send instead, for a value that is not of its column's type."""
    if expected in ("date", "datetime") and source.is_numeric():
        return NUMBER_IS_NO_DATE.format(expected, "" if expected == "date" else "T08:30:00")
    return DATE_HAS_NO_TIME if expected == "date" else ""


class _FastRows:
    """Typing, rule checks, declared features and encoding of one row in plain Python, mirroring
    `typed_exprs`, the contract rules, `transforms._expression` and `Encoding.matrix` for well-formed input."""

    def __init__(self, contract: Contract, encoding: Encoding, frequencies: dict[str, dict[str, float]],
                 required: set[str]):
        self.contract, self.encoding, self.frequencies = contract, encoding, frequencies
        self.columns = [(name, contract.columns[name]) for name in sorted(required)]
        self.transforms = [t for t in contract.features]
        self.codes = {name: {c: i for i, c in enumerate(cats)} for name, cats in encoding.categorical.items()}
        self.category_codes = {t.name: {c: i for i, c in enumerate(contract.columns[t.columns[0]].categories or [])}
                               for t in contract.features if t.op == "category_code"}
        if any(spec.dtype == "datetime" or spec.format is not None or spec.checks for _, spec in self.columns):
            # datetimes take the general path (time zones, epoch rounding), and so do dates in a contract's layout
            # and columns with the app's checks (polars expressions)
            self.columns = []
            self.enabled = False
        else:
            self.enabled = True

    def row(self, raw: Mapping[str, Any]) -> list[float]:
        if not self.enabled:
            raise _Bail
        values: dict[str, Any] = {}
        for name, spec in self.columns:
            if name not in raw:
                raise _Bail
            v = _fast_value(raw[name], spec.dtype)
            if v is None:
                if not spec.nullable:
                    raise _Bail
            elif ((spec.min is not None and float(v) < spec.min) or (spec.max is not None and float(v) > spec.max)
                  or (spec.categories is not None and str(v) not in spec.categories)):
                raise _Bail
            values[name] = v
        for t in self.transforms:
            if t.per_entity:
                v = raw.get(t.name)
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise _Bail
                values[t.name] = float(v)
            else:
                values[t.name] = self._feature(t, values)
        out: list[float] = []
        for name in self.encoding.columns:
            v = values.get(name)
            if name in self.codes:
                cats = self.codes[name]
                out.append(float(cats.get(str(v), len(cats) - 1) if v is not None else len(cats) - 1))
            elif v is None or (isinstance(v, float) and math.isnan(v)):
                out.append(self.encoding.medians.get(name, float("nan")))
            elif isinstance(v, date):
                out.append(float((v - _EPOCH).days))
            else:
                out.append(float(v))
        return out

    def _feature(self, t: Any, values: dict[str, Any]) -> Any:
        a, b = values.get(t.columns[0]), values.get(t.columns[-1])
        op = t.op
        if op == "custom":
            raise _Bail  # the app's polars expression: the general path computes it
        if op in ("year", "month", "day", "dayofweek"):
            if a is None:
                return None
            return {"year": a.year, "month": a.month, "day": a.day, "dayofweek": a.isoweekday()}[op]
        if op == "category_code":
            return None if a is None else self.category_codes[t.name].get(a)
        if op == "frequency":
            return self.frequencies.get(t.name, {}).get(NULL_KEY if a is None else str(a), 0.0)
        if op == "hour":
            raise _Bail
        if a is None or (op in ("add", "subtract", "multiply", "divide") and b is None):
            return None
        x, y = float(a), float(b if b is not None else a)  # b is only read by the binary operations
        if op == "log1p":
            if x <= -1:
                raise _Bail
            return math.log1p(x)
        if op == "abs":
            return abs(x)
        if op == "square":
            return x * x
        if op == "clip":
            lo = -math.inf if t.lower is None else t.lower
            hi = math.inf if t.upper is None else t.upper
            return min(max(x, lo), hi)
        if op == "add":
            return x + y
        if op == "subtract":
            return x - y
        if op == "multiply":
            return x * y
        if op == "divide":
            return None if y == 0 else x / y
        raise _Bail


def _fast_value(v: Any, dtype: str) -> Any:
    """One value typed as `typed_exprs` types it, for the unsurprising cases; _Bail otherwise."""
    if v is None:
        return None
    if isinstance(v, str):
        if dtype == "str":
            return v
        s = v.strip()
        if not s or s in MISSING_MARKERS:  # a blank, or NA, N/A, null, -, ?: missing, as validation reads it
            return None
        if dtype == "int":
            if _INT.fullmatch(s):
                return int(s)
            if _FLOAT.fullmatch(s):
                f = float(s)
                if f.is_integer() and abs(f) < 2.0**53:
                    return int(f)
            raise _Bail
        if dtype == "float":
            if _FLOAT.fullmatch(s):
                f = float(s)
                if math.isfinite(f):
                    return f
            raise _Bail
        if dtype == "bool":
            if s.lower() in _BOOLS:
                return _BOOLS[s.lower()]
            raise _Bail
        if dtype == "date":
            # a date, or an ISO datetime at exactly midnight (the frame path's `typed_exprs` reads the same)
            day = s if _ISO_DATE.fullmatch(s) else (m.group(1) if (m := ISO_MIDNIGHT.match(s)) else None)
            if day is None:
                raise _Bail
            try:
                return date.fromisoformat(day)
            except ValueError:
                raise _Bail from None
        raise _Bail
    if isinstance(v, bool):
        if dtype == "bool":
            return v
        raise _Bail
    if isinstance(v, int):
        if dtype == "int" and abs(v) < 2**63:
            return v
        if dtype == "float" and abs(v) < 2**53:
            return float(v)
        if dtype == "str":
            return str(v)
        raise _Bail
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _Bail
        if dtype == "float":
            return v
        if v.is_integer() and abs(v) < 2.0**53:
            if dtype == "int":
                return int(v)
            if dtype == "str":
                return str(int(v))
        raise _Bail
    if isinstance(v, date) and not isinstance(v, datetime) and dtype == "date":
        return v
    raise _Bail


def _empty_scores(task: str, classes: list[str] | None) -> np.ndarray:
    if task == "multiclass":
        return np.empty((0, len(classes or [])))
    return np.empty(0)


def _as_text(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A non-text column the contract calls `str` (or a categorical one): integers stay integers ("3", not "3.0")."""
    if dtype.is_float():
        return pl.when(col == col.floor()).then(col.cast(pl.Int64, strict=False).cast(pl.Utf8)).otherwise(
            col.cast(pl.Utf8))
    return col.cast(pl.Utf8)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def as_frame(rows: Any) -> pl.DataFrame:
    """Rows as a polars frame, from a polars or pandas frame, a list of dicts, a dict, or a CSV/Parquet path."""
    if isinstance(rows, pl.DataFrame):
        return rows
    if isinstance(rows, pl.LazyFrame):
        return rows.collect()
    if isinstance(rows, (str, Path)):
        path = Path(rows)
        if not path.exists():
            raise ModelInputError(f"{path}: no such file")
        name = path.name.lower()
        if name.endswith(".parquet"):
            return pl.read_parquet(path)
        if name.endswith((".csv", ".csv.gz")):
            return _read_csv(path)
        raise ModelInputError(f"{path}: Sluice scores .csv, .csv.gz and .parquet files")
    if isinstance(rows, Mapping):
        rows = [rows]
    if isinstance(rows, Sequence) and all(isinstance(r, Mapping) for r in rows):
        return _from_dicts(list(rows))
    module = type(rows).__module__
    if module.startswith("pandas") and hasattr(rows, "columns"):
        return _from_pandas(rows)
    raise ModelInputError(f"cannot score a {type(rows).__name__}: pass a polars or pandas frame, a list of dicts, "
                          "or the path of a CSV or Parquet file")


def _read_csv(path: Path) -> pl.DataFrame:
    """A CSV file as text, like validation: the contract decides the types, not the reader's guess. A line with
    fewer fields than the header is refused, naming it (the reader would fill the rest with nulls and the row would
    be scored as if its values were missing); so is a file the reader cannot read, with why."""
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except pl.exceptions.NoDataError:
        raise ModelInputError(f"{path} is empty: score a file with a header line and rows") from None
    except pl.exceptions.PolarsError as exc:
        # A line with too many fields: name it. Text the line reader cannot take either (not UTF-8) gets the
        # reader's own words below.
        with contextlib.suppress(pl.exceptions.PolarsError):
            _refuse_ragged(path, _header_width(path))
        what = str(exc).strip().splitlines()[0]
        hint = " (save it as UTF-8)" if "utf-8" in what.lower() else ""
        raise ModelInputError(f"{path} cannot be read as CSV: {what}{hint}") from None
    if _refuse_ragged(path, frame.width):
        # polars 2 reads a blank line as a row of nulls: in a file with blank lines, rows with no value at all are
        # left out, as pandas' reader and validation leave blank lines out.
        frame = frame.filter(~no_value())
    return frame


def _header_width(path: Path) -> int:
    header = pl.scan_lines(path).head(1).collect()
    return header["line"][0].count(",") + 1 if header.height else 0


def _refuse_ragged(path: Path, width: int) -> bool:
    """Refuse the first line whose field count is not the header's (lines with quotes are left to the reader).
    True when the file has a blank line: found in the same pass over the lines."""
    line = pl.col("line")
    odd = ((pl.col("i") > 0) & (line.str.len_bytes() > 0) & ~line.str.contains('"', literal=True)
           & (line.str.count_matches(",", literal=True) != width - 1))
    found = pl.scan_lines(path, row_index_name="i").select(
        pl.col("i").filter(odd).first().alias("at"), line.filter(odd).first().alias("text"),
        (line.str.strip_chars_end("\r").str.len_bytes() == 0).any().alias("blank")).collect()
    if found["at"][0] is not None:
        text = found["text"][0]
        raise ModelInputError(f"{path} line {int(found['at'][0]) + 1} has {text.count(',') + 1} fields, the header "
                              f"has {width}: {text[:80]!r}; quote fields that contain commas, or fix the line")
    return bool(found["blank"][0])


def _absent_keys(rows: list[Any]) -> dict[str, list[int]]:
    """For row dicts: each key some rows have and others lack, with the positions of the rows that lack it. The
    frame holds nulls there; a row that lacks a column is refused as it is when it comes alone."""
    if not all(isinstance(r, Mapping) for r in rows):
        return {}
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(map(str, r)))
    absent = {name: [i for i, r in enumerate(rows) if name not in r] for name in names}
    return {name: where for name, where in absent.items() if where}


def _is_missing(v: Any) -> bool:
    """pandas' missing values in a row dict (`df.to_dict("records")`): NaN, pd.NA, pd.NaT. A pandas frame's are
    nulls (`pl.from_pandas`), so the same rows as dicts are nulls too, not the value NaN (nor the text "<NA>")."""
    if isinstance(v, float):
        return math.isnan(v)
    return type(v).__name__ in ("NAType", "NaTType")


def _from_dicts(rows: list[Mapping[str, Any]]) -> pl.DataFrame:
    """Columns of the dicts' values; a column whose values mix types is kept as text and typed by the contract."""
    names: dict[str, None] = {}
    for r in rows:
        for k in r:
            names.setdefault(str(k), None)
    return pl.DataFrame([_values_column(name, [r.get(name) for r in rows]) for name in names])


def _values_column(name: str, cells: Sequence[Any]) -> pl.Series:
    """One column of Python values (row dicts', a pandas object column's): one type keeps it, a mix is text."""
    values = [None if _is_missing(v) else v for v in cells]
    kinds = {type(v) for v in values if v is not None}
    if int in kinds and any(type(v) is int and not -2**63 <= v < 2**63 for v in values):
        kinds.add(str)  # beyond 64 bits (JSON has no bound): as text, refused by the contract's type with it
    if kinds == {float} or kinds == {int, float}:
        return pl.Series(name, [None if v is None else float(v) for v in values], dtype=pl.Float64)
    if len(kinds) == 1 and kinds <= {int, bool, str}:
        return pl.Series(name, values)
    if not kinds:
        return pl.Series(name, values, dtype=pl.Utf8)
    if all(issubclass(k, datetime) for k in kinds):
        # datetimes (pandas' Timestamps too: pandas has no date type, so its dates arrive as midnights) keep
        # their type, as in a frame; as text ("2024-05-20 00:00:00") a date column would refuse them.
        with contextlib.suppress(Exception):  # a mix of zones, or of zoned and naive, is text as any other mix
            return pl.Series(name, values)
    return pl.Series(name, [None if v is None else str(v) for v in values], dtype=pl.Utf8)


def _from_pandas(frame: Any) -> pl.DataFrame:
    """A pandas frame's columns as polars: its typed columns as `pl.from_pandas` converts them, its object columns
    (Python values, any mix: `[52000.5, "41000.25"]`, which Arrow refused with a traceback) and any column Arrow
    cannot take as row dicts' values are (`_values_column`). A mix is text, typed by the contract, so a value it
    cannot read is that row's reason, as it is from dicts and CSV."""
    names = [str(c) for c in frame.columns]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ModelInputError(f"the frame has columns named alike ({', '.join(map(repr, twice))}): name each once")
    typed = [i for i, dtype in enumerate(frame.dtypes) if str(dtype) != "object"]
    converted: dict[int, pl.Series] = {}
    try:  # one conversion for the typed columns (per column only when one of them fails)
        converted = dict(zip(typed, pl.from_pandas(frame.iloc[:, typed]).get_columns(), strict=True))
    except Exception:
        for i in typed:
            with contextlib.suppress(Exception):  # Arrow has no type for it (complex numbers, periods, ...)
                converted[i] = pl.from_pandas(frame.iloc[:, [i]]).to_series()
    return pl.DataFrame([converted[i].rename(name) if i in converted
                         else _values_column(name, frame.iloc[:, i].tolist()) for i, name in enumerate(names)],
                        height=len(frame))


# -- reading bundles ---------------------------------------------------------------------------------------------

def read_bundle(read: Callable[[str], bytes], manifest_key: str, *, expected_sha256: str | None,
                version: int | None = None, extensions: Extensions | None = None) -> Model:
    """Load a bundle through `read(key)`, checking the manifest against `expected_sha256` (the registry's record)
    and every file against the manifest. A mismatch is an IntegrityError: nothing of it is loaded."""
    raw = read(manifest_key)
    digest = sha256(raw)
    if expected_sha256 is not None and digest != expected_sha256:
        raise IntegrityError(f"{manifest_key}: sha256 {digest[:12]}… is not the {expected_sha256[:12]}… the registry "
                             "recorded; the bundle was changed after it was registered. Restore it from the "
                             "bucket's version history, or retrain.")
    try:
        manifest = json.loads(raw)
        listed = {str(role): (str(meta["path"]), str(meta["sha256"])) for role, meta in manifest["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{manifest_key}: not a bundle manifest ({type(exc).__name__}: {exc})") from exc
    folder = manifest_key.rsplit("/", 1)[0] + "/" if "/" in manifest_key else ""
    files: dict[str, bytes] = {}
    for role, (path, expected) in listed.items():
        if "/" in path or path.startswith("."):
            raise IntegrityError(f"{manifest_key}: file {path!r} is outside the bundle")
        try:
            data = read(folder + path)
        except (OSError, LookupError) as exc:  # a local file, or the store's NoSuchKey
            raise IntegrityError(f"{folder}{path}: named by the bundle manifest, and cannot be read ({exc}); "
                                 "download the bundle again, or restore it from the bucket's version history") \
                from exc
        if sha256(data) != expected:
            raise IntegrityError(f"{folder}{path}: sha256 does not match the bundle manifest; refusing to load it. "
                                 "Restore the object from the bucket's version history, or retrain.")
        files[role] = data
    missing = {"model", "encoding", "contract", "signature", "transforms"} - set(files)
    if missing or "model_format" not in manifest:
        raise IntegrityError(f"{manifest_key}: not a bundle manifest (it lists no "
                             f"{', '.join(sorted(missing)) or 'model_format'})")
    return Model(manifest, files, bundle_sha256=digest, version=version, extensions=extensions)


def read_local_bundle(path: str | Path, expected_sha256: str | None = None,
                      extensions: Extensions | None = None) -> Model:
    """A bundle downloaded to a folder (`sluice models download`), or its manifest file. The registry's record
    saved beside it (`version.json`) says which version it is and which manifest sha256 to expect."""
    p = Path(path)
    manifest = p if p.is_file() else _single_manifest(p)
    version = None
    record = manifest.parent / VERSION_RECORD
    if record.exists():
        doc = json.loads(record.read_text())
        version = doc.get("version")
        expected_sha256 = expected_sha256 or doc.get("bundle", {}).get("sha256")
    return read_bundle(lambda key: (manifest.parent / Path(key).name).read_bytes(), manifest.name,
                       expected_sha256=expected_sha256, version=version, extensions=extensions)


def _single_manifest(folder: Path) -> Path:
    found = sorted(folder.glob("manifest*.json"))
    if len(found) != 1:
        raise ModelInputError(f"{folder}: expected one bundle manifest (manifest-*.json), found {len(found)}")
    return found[0]


# -- resolving what to load ---------------------------------------------------------------------------------------

def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    """"NAME", "NAME@champion", "NAME@challenger", "NAME:3" or "NAME:v3" -> (name, alias, version)."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        if alias not in ("champion", "challenger"):
            raise ModelInputError(f"{ref!r}: the aliases are @champion and @challenger")
        return name, alias, None
    if ":" in ref:
        name, number = ref.split(":", 1)
        try:
            return name, None, int(number.lstrip("v"))
        except ValueError:
            raise ModelInputError(f"{ref!r}: a version is a number, as in {name}:3") from None
    return ref, "champion", None


def load_version(store: Any, version: dict[str, Any], *, evaluated: bool = False,
                 extensions: Extensions | None = None) -> Model:
    """A registered version's model, checked against the registry's own record of it.

    `evaluated`: the model the gate judged on the holdout, not the refit on train + holdout that ships; a gate
    that scores the version on holdout rows must use it, since the refit has seen those rows."""
    bundle = (version.get("evaluated_bundle") if evaluated else None) or version.get("bundle")
    if bundle:
        return read_bundle(store.get, bundle["key"], expected_sha256=bundle["sha256"], version=version["version"],
                           extensions=extensions)
    return _legacy_version(store, version)


def load_run(store: Any, run: dict[str, Any], extensions: Extensions | None = None) -> Model:
    """A run's model (a candidate that has no version yet), checked against the run's record of its bundle."""
    bundle = run.get("bundle")
    if bundle:
        return read_bundle(store.get, bundle["key"], expected_sha256=bundle["sha256"], extensions=extensions)
    return _legacy_run(store, run, expected_model_sha=run["artifacts"]["model"]["sha256"], version=None)


def _legacy_version(store: Any, version: dict[str, Any]) -> Model:
    """Versions registered before bundles existed: their run's model and encoding, ordered by the model's own
    feature names (which is what repairs their column order), checked against the version's artifact sha256."""
    run = read_run(store.get_json(version["run_key"]))
    return _legacy_run(store, run, expected_model_sha=version["artifact"]["sha256"], version=version["version"])


def _legacy_run(store: Any, run: dict[str, Any], *, expected_model_sha: str, version: int | None) -> Model:
    from sluice.ml.runs import contract_of

    arts = run["artifacts"]
    fmt = arts["model"].get("format", "lightgbm-text")
    if fmt not in EXTENSION:
        raise IntegrityError(f"run {run['run_id']}: its model is stored as {fmt!r}, which Sluice never loads "
                             "(pickles run code); retrain it with lgbm or xgboost")
    model_bytes = store.get(arts["model"]["key"])
    if sha256(model_bytes) != expected_model_sha:
        raise IntegrityError(f"{arts['model']['key']}: sha256 does not match the registry's record; refusing to "
                             "load it")
    encoding_bytes = store.get(arts["encoding"]["key"])
    if sha256(encoding_bytes) != arts["encoding"]["sha256"]:
        raise IntegrityError(f"{arts['encoding']['key']}: sha256 does not match run {run['run_id']}")
    contract = contract_of(store, run)
    encoding = Encoding.from_dict(json.loads(encoding_bytes))
    manifest_bytes, files = bundle_files(contract=contract, encoding=encoding, model_bytes=model_bytes,
                                         model_format=fmt, frequencies={}, run_id=run["run_id"])
    return model_from_files(manifest_bytes, files, version=version)


def model_from_files(manifest_bytes: bytes, files: Mapping[str, bytes], *, version: int | None = None,
                     extensions: Extensions | None = None) -> Model:
    """A Model from a bundle held in memory, as `bundle_files` made it."""
    manifest = json.loads(manifest_bytes)
    by_role = {role: files[meta["path"]] for role, meta in manifest["files"].items()}
    return Model(manifest, by_role, bundle_sha256=sha256(manifest_bytes), version=version, extensions=extensions)


def load_model(ref: Any, *, settings: Any = None, store: ObjectStore | None = None,
               open_bucket: Callable[[str], ObjectStore] | None = None, app: Any = None) -> Model:
    """The one loader. `ref` is "NAME@champion", "NAME@challenger", "NAME:3", a promotion CloudEvent (dict or
    JSON), an s3:// URI of a bundle manifest, or a local folder with a downloaded bundle.

    Every file is checked against its sha256 before it is used; a registered version's bundle is checked against
    the registry's record. An event is acted on only through that record (`_load_event`): it never names a local
    folder, which loads only when the caller passes its path. Nothing executable is loaded. A model whose
    contract names the app's own feature functions or learner needs that app (`app=`): its code is the user's,
    never the bundle's.
    """
    extensions = app.extensions if app is not None else None
    from sluice.core.memory import MemoryState
    from sluice.core.settings import Settings
    from sluice.ml.registry import ModelRegistry

    if isinstance(ref, (bytes, str)) and str(ref[:1] if isinstance(ref, str) else ref[:1].decode()) == "{":
        ref = json.loads(ref)
    settings = settings or Settings.from_env()
    if isinstance(ref, Mapping):  # a CloudEvent from the topic: only the registry's own signed record is acted on
        return _load_event(ref, bucket=settings.bucket, store=store, open_bucket=open_bucket, extensions=extensions)
    if isinstance(ref, Path) or (isinstance(ref, str) and not ref.startswith("s3://") and Path(ref).exists()):
        # A folder the caller names: their own download (`sluice models download`), which they chose to trust.
        return read_local_bundle(ref, None, extensions)
    if isinstance(ref, str) and ref.startswith("s3://"):
        bucket, _, key = ref[5:].partition("/")
        if not key.startswith(keys.RUNS):
            # Only under runs/ does every read check a stage's signature; elsewhere (incoming/, a bucket of
            # anyone's) a bundle and the sha256 beside it could both be someone else's.
            raise IntegrityError(f"{ref}: a model bundle is loaded only from runs/, where Sluice stages write and "
                                 "sign bundles; this one is elsewhere. Load the model by name (NAME@champion, "
                                 "NAME:3), or find out who sent the event or URI")
        s3 = store if store is not None and store.bucket == bucket else _open(open_bucket, bucket)
        return read_bundle(s3.get, key, expected_sha256=None, extensions=extensions)
    store = store or _open(open_bucket, settings.bucket)
    name, alias, number = parse_ref(str(ref))
    registry = ModelRegistry(store, MemoryState())
    if alias is not None:
        doc = registry.alias(name, alias)
        if doc is None:
            known = registry.version_numbers(name)
            if not known:
                raise ModelInputError(f"{name} has no {alias}; is the model name right?")
            latest = registry.version(name, max(known))
            why = ""
            if latest is not None:
                reasons = "; ".join(str(r) for r in latest.get("reasons") or [])
                why = (f"; v{max(known)}'s gate decision: {latest.get('decision')}"
                       + (f" ({reasons})" if reasons else ""))
            raise ModelInputError(f"{name} has no {alias} (versions: {', '.join(f'v{n}' for n in known)}){why}. "
                                  f"Load a version by number ('{name}:{max(known)}'), or see `sluice models show "
                                  f"{name}`")
        number = int(doc["version"])
    assert number is not None
    found = registry.version(name, number)
    if found is None:
        raise ModelInputError(f"{name} has no version {number}")
    return load_version(store, found, extensions=extensions)


def _load_event(event: Mapping[str, Any], *, bucket: str, store: ObjectStore | None,
                open_bucket: Callable[[str], ObjectStore] | None, extensions: Extensions | None) -> Model:
    """The model a promotion CloudEvent names, as the registry of this deployment's bucket recorded it.

    Everything in an event comes from whoever sent it, the bundle's URI and sha256 included. So the URI must name
    a bundle under runs/ of the configured bucket (where only Sluice stages write, and every read checks their
    signature), and it must be the bundle the registry's signed record of that version names; the model is then
    loaded from that record. A local folder is never loaded from an event: only from `load_model(folder)`."""
    from sluice.core.memory import MemoryState
    from sluice.ml.registry import ModelRegistry

    data = event.get("data", event)
    if not isinstance(data, Mapping):
        raise ModelInputError("this is not a Sluice model event (its data is not an object); load the model by "
                              "name: load_model('NAME:VERSION')")
    name, number = data.get("model"), data.get("version")
    by_name = f"load_model({f'{name}:{number}'!r})"
    bundle = data.get("bundle") or {}
    uri = bundle.get("uri") if isinstance(bundle, Mapping) else None
    if not uri:
        raise ModelInputError(f"this event names no model bundle (events from before bundles existed); load it by "
                              f"name: {by_name}")
    own = f"s3://{bucket}/"
    if not isinstance(uri, str) or not uri.startswith(own + keys.RUNS):
        raise IntegrityError(f"{uri!r}: a bundle named by an event is loaded only from runs/ of this "
                             f"deployment's bucket ({own}{keys.RUNS}), where Sluice stages write and sign bundles; "
                             f"this one is elsewhere, so whoever sent the event chose it. Load the model by name "
                             f"({by_name}), or, for a bundle folder you downloaded and trust, pass its path "
                             "yourself: load_model('/path/to/folder'). Find out who sent the event")
    if not isinstance(name, str) or not name or isinstance(number, bool) or not isinstance(number, int):
        raise IntegrityError(f"{uri!r}: the event names no model version (model {name!r}, version "
                             f"{number!r}), so there is no registry record to check its bundle against; load "
                             "the model by name: load_model('NAME:VERSION')")
    s3 = store if store is not None and store.bucket == bucket else _open(open_bucket, bucket)
    found = ModelRegistry(s3, MemoryState()).version(name, number)
    recorded = (found or {}).get("bundle") or {}
    key, claimed = uri[len(own):], bundle.get("sha256")
    if found is None or found.get("model") != name or found.get("version") != number or recorded.get("key") != key \
            or (claimed is not None and claimed != recorded.get("sha256")):
        what = ("has no record of it" if found is None else
                f"recorded {recorded.get('key') or 'no bundle'} (sha256 {str(recorded.get('sha256'))[:12]}…)")
        raise IntegrityError(f"the event names {uri!r} (sha256 {str(claimed)[:12]}…) as {name!r} v{number}, "
                             f"and the registry of {own} {what}: the event is not what Sluice published. Load "
                             f"the model by name ({by_name}), and find out who sent the event")
    return load_version(s3, found, extensions=extensions)


def _supplied_numbers(contract: Contract, encoding: Encoding, frame: pl.DataFrame,
                      problems: dict[int, list[tuple[str | None, str]]]) -> pl.DataFrame:
    """Per-entity features come with the rows (the caller computes them from the entity's history): a value that
    is not a number leaves its row unscored with the reason (it raised polars' cast error, a 500 in `serve`)."""
    for t in contract.features:
        if not t.per_entity or t.name not in frame.columns or t.name not in encoding.columns:
            continue
        col = frame[t.name]
        if col.dtype.is_numeric():
            continue
        numbers = (col.cast(pl.Utf8, strict=False) if col.dtype != pl.Utf8 else col).str.strip_chars() \
            .cast(pl.Float64, strict=False)
        if col.dtype == pl.Boolean:
            numbers = pl.Series(t.name, [None] * len(col), dtype=pl.Float64)
        bad = (col.is_not_null() & numbers.is_null()).to_list()
        for i, wrong in enumerate(bad):
            if wrong:
                problems.setdefault(i, []).append((t.name, f"feature {t.name!r} ({t.op} over the entity's "
                                                            f"history) must be a number, got {shown(col[i])}"))
        frame = frame.with_columns(numbers.alias(t.name))
    return frame


def _open(open_bucket: Callable[[str], ObjectStore] | None, bucket: str) -> ObjectStore:
    if open_bucket is None:
        raise ModelInputError(f"no store for bucket {bucket!r}: load models with `sluice.load_model`, which opens it")
    return open_bucket(bucket)
