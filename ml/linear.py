"""A linear learner whose fitted model is plain JSON: standardised numbers, one-hot categories, coefficients.

FLAML's own linear learners (lrl1, lrl2, sgd, enet) are scikit-learn objects that only pickle can store, and Sluice
never loads a pickle. This learner fits scikit-learn's LogisticRegression (classification) or Ridge (regression) on
a design matrix it builds itself, then keeps only numbers: per numeric column its mean, scale and weights, per
categorical column one weight per category slot, and the intercepts. Scoring is a few numpy operations on those
numbers, the same code in the search, in the stored model and in the loader, so they predict identically.

`row_norm` scales each row's standardised numbers to one common L2 norm before the weights apply, as FLAML's `sgd`
does with scikit-learn's Normalizer: the model then sees only the direction of a row's numbers, not their size.
The flag is stored in the document and applied by the same scoring code at load. It is not searched: FLAML's
cross-validation rarely picks it, and picking by folds did worse than never (diabetes, 12 test splits); the blend
uses it as a second linear member instead (ml/blend.py, LINEAR_ROWS).

Input is what `Encoding.features` hands FLAML (categoricals as pandas categories, the `__NAN__` slot last, numbers
with missing values already filled) or, when loaded, what `Encoding.matrix` gives (category codes as floats).
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

LINEAR_JSON = "sluice-linear-json"
FORMAT_VERSION = 2  # v2 adds `row_norm`; a model without it is still written as v1, which older loaders read
READS = (1, 2)


class LinearModel(BaseEstimator):  # type: ignore[misc]
    """A standardised linear model: L2-regularised logistic regression (`C`) or ridge regression (`alpha`).

    `task` is "regression" or "classification"; two classes give one logit (sigmoid), more a softmax.
    `row_norm`: each row's standardised numbers scaled to the L2 norm sqrt(k), k numeric columns, which is the mean
    squared norm of a standardised row, so that `C` and `alpha` weigh about the same either way (categories' slots
    are left as they are)."""

    def __init__(self, task: str = "classification", C: float = 1.0, alpha: float = 1.0, max_iter: int = 500,
                 row_norm: bool = False):
        self.task = task
        self.C = C
        self.alpha = alpha
        self.max_iter = max_iter
        self.row_norm = row_norm

    # -- fitting ------------------------------------------------------------------------------------------------
    def fit(self, X: pd.DataFrame, y: Any) -> LinearModel:
        """Learn scaling and category slots from `X`, then the coefficients."""
        from sklearn.linear_model import LogisticRegression, Ridge

        self.features_ = [str(c) for c in X.columns]
        self.levels_ = {str(c): len(X[c].cat.categories) for c in X.columns
                        if isinstance(X[c].dtype, pd.CategoricalDtype)}
        M = as_matrix(X)
        numeric = [j for j, name in enumerate(self.features_) if name not in self.levels_]
        self.mean_ = np.zeros(len(self.features_))
        self.scale_ = np.ones(len(self.features_))
        if numeric and len(M):
            self.mean_[numeric] = M[:, numeric].mean(axis=0)
            std = M[:, numeric].std(axis=0)
            self.scale_[numeric] = np.where(std > 0, std, 1.0)
        design = self._design(M)
        y = np.asarray(y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter is a budget here, not an error
            if self.task == "regression":
                ridge = Ridge(alpha=self.alpha).fit(design, y)
                self.classes_ = None
                self.coef_ = np.atleast_2d(ridge.coef_).astype(np.float64)
                self.intercept_ = np.atleast_1d(ridge.intercept_).astype(np.float64)
            else:
                logistic = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(design, y)
                self.classes_ = logistic.classes_
                self.coef_ = np.asarray(logistic.coef_, dtype=np.float64)
                self.intercept_ = np.asarray(logistic.intercept_, dtype=np.float64)
        return self

    def _design(self, M: np.ndarray) -> Any:
        """Scaled numbers and one-hot category slots, column by column (sparse: categories can be many)."""
        from scipy import sparse

        blocks = []
        numbers = self._numbers(M)
        for j, name in enumerate(self.features_):
            if name in self.levels_:
                k = self.levels_[name]
                codes = np.clip(M[:, j].astype(np.int64), 0, k - 1)
                blocks.append(sparse.csr_matrix((np.ones(len(codes)), (np.arange(len(codes)), codes)),
                                                shape=(len(codes), k)))
            else:
                blocks.append(sparse.csr_matrix(numbers[:, j][:, None]))
        if not blocks:
            return sparse.csr_matrix((len(M), 0))
        return sparse.hstack(blocks, format="csr")

    def _numbers(self, M: np.ndarray) -> np.ndarray:
        """The standardised numeric columns (category columns' entries are zeros), each row scaled to unit L2 norm
        when `row_norm` to norm sqrt(k) (a row whose numbers are all at their means stays zero)."""
        numeric = np.array([name not in self.levels_ for name in self.features_], dtype=bool)
        Z = np.zeros((len(M), len(self.features_)))
        if numeric.any():
            Z[:, numeric] = (M[:, numeric] - self.mean_[numeric]) / self.scale_[numeric]
        if self.row_norm:
            norm = np.sqrt(np.sum(Z * Z, axis=1, keepdims=True))
            Z = Z * (np.sqrt(numeric.sum()) / np.where(norm > 0, norm, np.inf))
        return Z

    # -- scoring ------------------------------------------------------------------------------------------------
    def decision(self, M: np.ndarray) -> np.ndarray:
        """Linear scores (n rows x outputs) of a float matrix in `features_` order; category codes index their
        weights (a code outside the known slots counts as the last, `__NAN__`, slot)."""
        out = np.tile(self.intercept_, (len(M), 1))
        numbers = self._numbers(M)
        offset = 0
        for j, name in enumerate(self.features_):
            if name in self.levels_:
                k = self.levels_[name]
                codes = np.clip(np.nan_to_num(M[:, j], nan=k - 1).astype(np.int64), 0, k - 1)
                out += self.coef_[:, offset:offset + k].T[codes]
                offset += k
            else:
                out += np.outer(numbers[:, j], self.coef_[:, offset])
                offset += 1
        return out

    def scores(self, M: np.ndarray) -> np.ndarray:
        """What Sluice's loaders return: values, P(class 1) for binary, class probabilities for multiclass."""
        z = self.decision(M)
        if self.task == "regression":
            return z[:, 0]
        if z.shape[1] == 1:
            return np.asarray(1.0 / (1.0 + np.exp(-z[:, 0])))
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return np.asarray(e / e.sum(axis=1, keepdims=True))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, one column per class (scikit-learn's convention)."""
        s = self.scores(as_matrix(X))
        return np.column_stack([1 - s, s]) if s.ndim == 1 else s

    def predict(self, X: Any) -> np.ndarray:
        """Values, or the most probable class."""
        if self.task == "regression":
            return self.scores(as_matrix(X))
        assert self.classes_ is not None
        return np.asarray(np.asarray(self.classes_)[self.predict_proba(X).argmax(axis=1)])

    @property
    def feature_importances_(self) -> np.ndarray:
        """Per input column: the largest absolute weight (numbers are standardised, so comparable), or for a
        categorical column the spread of its slots' weights."""
        out, offset = [], 0
        for name in self.features_:
            k = self.levels_.get(name, 1)
            block = self.coef_[:, offset:offset + k]
            out.append(float(np.max(np.ptp(block, axis=1))) if name in self.levels_ else float(np.abs(block).max()))
            offset += k
        return np.asarray(out)

    # -- storing ------------------------------------------------------------------------------------------------
    def to_json(self) -> bytes:
        """Every number the model scores with, as JSON (floats round-trip exactly through `repr`)."""
        params: dict[str, Any] = {"C": self.C, "alpha": self.alpha, "max_iter": self.max_iter}
        if self.row_norm:
            params["row_norm"] = True
        doc = {"format": LINEAR_JSON, "version": FORMAT_VERSION if self.row_norm else 1, "task": self.task,
               "params": params,
               "features": self.features_, "levels": self.levels_, "mean": self.mean_.tolist(),
               "scale": self.scale_.tolist(), "coef": self.coef_.tolist(), "intercept": self.intercept_.tolist(),
               "classes": None if self.classes_ is None else [int(c) for c in self.classes_]}
        return json.dumps(doc).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LinearModel:
        """The model `to_json` wrote; checks the shapes agree so a damaged document fails here, not in scoring."""
        doc = json.loads(data)
        if doc.get("format") != LINEAR_JSON or doc.get("version") not in READS:
            raise ValueError(f"not a {LINEAR_JSON} document of a version this Sluice reads ({READS})")
        params = doc["params"]
        row_norm = params.get("row_norm", False)
        if not isinstance(row_norm, bool) or (row_norm and doc["version"] < 2):
            raise ValueError(f"{LINEAR_JSON}: `row_norm` must be true or false (and true only from version 2)")
        model = cls(doc["task"], **params)
        model.features_ = [str(f) for f in doc["features"]]
        model.levels_ = {str(k): int(v) for k, v in doc["levels"].items()}
        model.mean_ = np.asarray(doc["mean"], dtype=np.float64)
        model.scale_ = np.asarray(doc["scale"], dtype=np.float64)
        model.coef_ = np.atleast_2d(np.asarray(doc["coef"], dtype=np.float64))
        model.intercept_ = np.asarray(doc["intercept"], dtype=np.float64)
        model.classes_ = None if doc["classes"] is None else np.asarray(doc["classes"])
        width = sum(model.levels_.get(f, 1) for f in model.features_)
        n = len(model.features_)
        if (model.coef_.shape[1] != width or model.coef_.shape[0] != len(model.intercept_)
                or len(model.mean_) != n or len(model.scale_) != n):
            raise ValueError(f"{LINEAR_JSON}: coefficient shapes do not match the features")
        return model


def as_matrix(X: Any) -> np.ndarray:
    """A float matrix: pandas categories become their codes (what `Encoding.matrix` gives), numbers stay."""
    if isinstance(X, pd.DataFrame):
        cols = [X[c].cat.codes.to_numpy() if isinstance(X[c].dtype, pd.CategoricalDtype) else X[c].to_numpy()
                for c in X.columns]
        if not cols:
            return np.empty((len(X), 0))
        return np.column_stack(cols).astype(np.float64, copy=False)
    return np.asarray(X, dtype=np.float64)


def flaml_learner() -> type:
    """The learner as FLAML's custom estimator (`AutoML.add_learner("linear", ...)`); FLAML imported lazily."""
    from flaml.automl.model import SKLearnEstimator
    from flaml.tune.sample import loguniform

    class LinearEstimator(SKLearnEstimator):  # type: ignore[misc]
        """Logistic regression (C) or ridge (alpha) on standardised numbers and one-hot categories."""

        @classmethod
        def search_space(cls, data_size: Any = None, task: Any = None, **params: Any) -> dict[str, Any]:
            if task is not None and not _is_classification(task):
                return {"alpha": {"domain": loguniform(lower=1e-3, upper=1e4), "init_value": 1.0}}
            return {"C": {"domain": loguniform(lower=1e-3, upper=1e3), "init_value": 1.0}}

        @classmethod
        def cost_relative2lgbm(cls) -> float:
            return 2.0

        def config2params(self, config: dict[str, Any]) -> dict[str, Any]:
            params: dict[str, Any] = super().config2params(config)
            params.pop("n_jobs", None)
            params.pop("random_seed", None)
            return params

        def __init__(self, task: Any = "binary", **config: Any):
            super().__init__(task, **config)  # type: ignore[no-untyped-call]
            self.params["task"] = "classification" if _is_classification(self._task) else "regression"
            self.estimator_class = LinearModel

        def _preprocess(self, X: Any) -> Any:
            return X  # keep pandas categories: the model one-hot encodes them itself

    return LinearEstimator


def _is_classification(task: Any) -> bool:
    check = getattr(task, "is_classification", None)
    return bool(check()) if callable(check) else str(task) in ("binary", "multiclass", "classification")
