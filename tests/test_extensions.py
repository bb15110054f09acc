"""The app's own checks, feature functions and learners, each through the whole chain (drop -> validate ->
features -> train -> benchmark -> register -> load_model), and each misregistration failing with its message."""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl
import pytest

import sluice
from sluice import App
from sluice.core.errors import AppError
from sluice.ml.contract import Contract, Transform, contract_key
from tests.chain import DATASET, ledger, run_chain, sample_bytes, sample_contract, versions

# -- a learner of the app's own: logistic regression, stored as JSON --------------------------------------------------

def linear_learner() -> type:
    """A FLAML custom estimator (what FLAML's docs call a custom learner) around scikit-learn's LogisticRegression."""
    from flaml import tune
    from flaml.automl.model import SKLearnEstimator
    from sklearn.linear_model import LogisticRegression

    class Linear(SKLearnEstimator):  # type: ignore[misc]
        def __init__(self, task: str = "binary", **config: Any) -> None:
            super().__init__(task, **config)
            self.estimator_class = LogisticRegression

        @classmethod
        def search_space(cls, data_size: Any, task: Any) -> dict[str, Any]:
            return {"C": {"domain": tune.loguniform(lower=0.01, upper=10.0), "init_value": 1.0}}

    return Linear


class LinearScorer:
    """What `load` returns: the stored coefficients, scoring without scikit-learn or pickle."""

    def __init__(self, doc: dict[str, Any]):
        self.coef = np.asarray(doc["coef"])
        self.intercept = np.asarray(doc["intercept"])

    def predict_proba(self, X: Any) -> np.ndarray:
        z = np.asarray(X, dtype=float) @ self.coef.T + self.intercept
        p = 1 / (1 + np.exp(-z[:, 0]))
        return np.column_stack([1 - p, p])


def save_linear(model: Any) -> bytes:
    return json.dumps({"coef": model.coef_.tolist(), "intercept": model.intercept_.tolist()}).encode()


def load_linear(data: bytes) -> LinearScorer:
    return LinearScorer(json.loads(data))


def make_app() -> App:
    app = App("extended")
    app.include(sluice.builtin)

    @app.check()
    def at_most(col: pl.Expr, limit: float) -> pl.Expr:
        return col <= limit

    @app.feature()
    def ratio(a: pl.Expr, b: pl.Expr) -> pl.Expr:
        return pl.when(b != 0).then(a / b).otherwise(None)

    app.learner("logreg", linear_learner(), save=save_linear, load=load_linear)
    return app


def extended_contract(base: Contract | None = None, *, check: str = "at_most", feature: str = "ratio",
                      learner: str = "logreg") -> Contract:
    base = base or sample_contract()
    columns = dict(base.columns)
    columns["mean_radius"] = columns["mean_radius"].model_copy(update={"checks": [{check: {"limit": 30}}]})
    return base.model_copy(update={
        "columns": columns,
        "features": [Transform(name="area_per_radius", op="custom", function=feature,
                               columns=["mean_area", "mean_radius"])],
        "training": base.training.model_copy(update={"estimators": [learner], "refit": False}),
    })


@pytest.fixture
def app_runtime() -> Iterator[Any]:
    """The runtime of an app with its own check, feature function and learner, on moto in-process."""
    from sluice.testing import local_runtime

    with local_runtime(make_app(), bucket="sluice-unit") as rt:
        yield rt


def _put_contract(rt: Any, contract: Contract) -> None:
    from sluice.ml.contract import parse_contract

    text = contract.to_yaml()
    assert parse_contract(text) == contract  # what the YAML says is what the stages read
    rt.store.put(contract_key(DATASET), text.encode())


@pytest.mark.slow
def test_a_check_a_feature_function_and_a_learner_of_the_app_work_through_the_whole_chain(app_runtime: Any) -> None:
    rt = app_runtime
    _put_contract(rt, extended_contract())
    run = run_chain(rt, f"incoming/{DATASET}/cancer.csv", sample_bytes())

    # features: the app's function computed the column, from the contract's declaration
    [fkey] = [k for k in rt.store.keys(f"features/{DATASET}/") if k.endswith("features.parquet")]
    features = pl.read_parquet(io.BytesIO(rt.store.get(fkey)))
    expected = features["mean_area"] / features["mean_radius"]
    assert np.allclose(features["area_per_radius"].to_numpy(), expected.to_numpy())
    # train: the app's learner won (it was the only one), stored as its own JSON, never pickle
    assert run["best_estimator"] == "logreg"
    assert "area_per_radius" in json.loads(rt.store.get(run["artifacts"]["encoding"]["key"]))["order"]
    [version] = versions(rt.store)
    from sluice.core.memory import MemoryState
    from sluice.ml.registry import ModelRegistry

    alias = ModelRegistry(rt.store, MemoryState()).alias(DATASET)  # promoted over the naive baseline
    assert alias is not None and alias["version"] == version["version"] == 1
    model_key = run["artifacts"]["model"]["key"]
    assert run["artifacts"]["model"]["format"] == "custom:logreg"
    assert json.loads(rt.store.get(model_key))["coef"]  # JSON coefficients

    # predict: load_model with the app scores, through the same feature function
    model = sluice.load_model(f"{DATASET}@champion", settings=rt.settings, store=rt.store, app=make_app())
    rows = pl.read_csv(io.BytesIO(sample_bytes())).drop("diagnosis").head(5)
    result = model.predict(rows).to_polars()
    assert result.height == 5 and result["unscored_reason"].is_null().all()
    # the app's check runs when scoring too: a row validation would quarantine is not scored (it was)
    over = rows.with_columns(pl.when(pl.int_range(pl.len()) == 1).then(31.5).otherwise(pl.col("mean_radius"))
                             .alias("mean_radius"))
    checked = model.predict(over)
    assert checked.scored.tolist() == [0, 2, 3, 4]
    assert checked.unscored == [{"row": 2, "column": "mean_radius",
                                 "reason": "mean_radius: 31.5 fails the app's check 'at_most'"}]
    # without the app, the model says what it needs
    with pytest.raises(AppError, match=r"feature function 'ratio' of its app.*sluice.load_model\(ref, app=app\)"):
        sluice.load_model(f"{DATASET}@champion", settings=rt.settings, store=rt.store)
    # serve and rescore load it the same way, with the app (`sluice serve --app`, `sluice models rescore --app`)
    from sluice.ml.rescore import rescore
    from sluice.serve import ModelServer

    server = ModelServer(DATASET, settings=rt.settings, store=rt.store, watch=False, app=make_app())
    assert server.refresh() and server.model is not None
    assert server.model.predict(rows).to_polars()["prediction"].to_list() == result["prediction"].to_list()
    with pytest.raises(AppError, match="feature function 'ratio'"):
        ModelServer(DATASET, settings=rt.settings, store=rt.store, watch=False).refresh()
    registry = ModelRegistry(rt.store, MemoryState())
    lines = list(rescore(registry, DATASET, by="test", at="2026-01-01T00:00:00Z", dry_run=True,
                         extensions=make_app().extensions))
    assert lines == [f"v1: unchanged ({version['metric']} {version['scores']['candidate']:.4f})"], lines

    # the check: a row over the app's limit (inside the contract's inferred range) is quarantined by name
    frame = pl.read_csv(io.BytesIO(sample_bytes())).head(60)
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(31.5).otherwise(pl.col("mean_radius"))
                               .alias("mean_radius"))
    bad = f"incoming/{DATASET}/over.csv"
    buffer = io.BytesIO()
    frame.write_csv(buffer)
    run_chain_validate_only(rt, bad, buffer.getvalue())
    entry = ledger(rt.store, bad)
    assert entry is not None and entry["outcome"] == "quarantined"
    report = rt.store.get_json(entry["report"])
    assert report["summary"][0]["column"] == "mean_radius"
    assert report["summary"][0]["check"] == "at_most(limit=30)"
    assert report["summary"][0]["example_row"] == 4


def run_chain_validate_only(rt: Any, key: str, data: bytes) -> dict[str, Any]:
    rt.store.put(key, data)
    result: dict[str, Any] = rt.run("validate", key)
    return result


@pytest.mark.parametrize(("names", "message"), [
    ({"check": "nonexistent"}, r"column 'mean_radius': check 'nonexistent' is not registered in this app "
                               r"\(registered: at_most\)\. Register it in your app with `@app.check\('nonexistent'\)`"),
    ({"feature": "nope"}, r"feature 'area_per_radius': feature function 'nope' is not registered in this app "
                          r"\(registered: ratio\)\. Register it in your app with `@app.feature\('nope'\)`"),
    ({"learner": "svm"}, r"training.estimators: learner 'svm' is not registered in this app \(registered: lgbm, "
                         r"xgboost, xgb_limitdepth, linear, logreg\)\. Register it in your app with "
                         r"`app.learner\('svm'\)`"),
])
def test_a_contract_naming_what_the_app_lacks_is_quarantined_saying_what_is_registered(
        app_runtime: Any, names: dict[str, str], message: str) -> None:
    rt = app_runtime
    _put_contract(rt, extended_contract(**names))
    key = f"incoming/{DATASET}/cancer.csv"
    result = run_chain_validate_only(rt, key, sample_bytes())
    assert result["outcome"] == "quarantined"
    entry = ledger(rt.store, key)
    assert entry is not None and entry["reason"] == "unknown-extension"
    import re

    assert re.search(message, entry["message"]), entry["message"]
    assert not list(rt.store.keys("validated/"))


def test_misregistrations_fail_at_registration_with_their_message() -> None:
    app = App()
    with pytest.raises(AppError, match=r"learner 'logreg': Sluice never stores or loads pickle.*save=.*load="):
        app.learner("logreg", linear_learner())
    with pytest.raises(AppError, match="learner 'lgbm' is registered twice"):
        app.learner("lgbm", linear_learner(), save=save_linear, load=load_linear)
    with pytest.raises(AppError, match="pass the estimator class"):
        app.learner("logreg", linear_learner()(), save=save_linear, load=load_linear)  # type: ignore[arg-type]
    app.check("even")(lambda col: col % 2 == 0)
    with pytest.raises(AppError, match="check 'even' is registered twice"):
        app.check("even")(lambda col: col % 2 == 1)
    with pytest.raises(AppError, match="use lowercase letters"):
        app.feature("Bad-Name")


def test_a_feature_function_must_return_an_expression_and_a_learner_must_not_pickle() -> None:
    from sluice.ml.modeling import export
    from sluice.ml.transforms import apply_transforms

    app = App()
    app.feature("broken")(lambda a: 42)
    app.learner("pickled", linear_learner(), save=lambda m: pickle.dumps(m), load=load_linear)
    contract = sample_contract().model_copy(update={"features": [
        Transform(name="b", op="custom", function="broken", columns=["mean_area"])]})
    with pytest.raises(AppError, match="feature function 'broken' returned a int, not a polars expression"):
        apply_transforms(pl.DataFrame({"mean_area": [1.0]}), contract, app.extensions)

    class Fitted:
        estimator = {"coef": [1.0]}

    with pytest.raises(AppError, match="learner 'pickled': `save` returned a pickle, which Sluice never stores"):
        export("pickled", Fitted(), app.extensions)


def test_contract_fields_for_extensions_are_checked_when_parsed() -> None:
    from sluice.core.errors import ContractError
    from sluice.ml.contract import parse_contract

    doc = sample_contract().model_dump(mode="json", exclude_none=True)
    for change, message in [
        ({"features": [{"name": "f", "op": "custom", "columns": ["mean_area"]}]}, "op custom needs one"),
        ({"features": [{"name": "f", "op": "log1p", "columns": ["mean_area"], "function": "x"}]},
         "goes with op custom"),
        ({"training": {"estimators": ["rf"]}}, "cannot be stored without pickle"),
    ]:
        with pytest.raises(ContractError, match=message):
            parse_contract(json.dumps({**doc, **change}))
