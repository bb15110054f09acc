"""The linear learner: searched by FLAML, stored as JSON, loaded by the bundle loader, scoring identically."""

from __future__ import annotations

import json
import os

import numpy as np
import polars as pl
import pytest

from sluice.ml import bundle, linear, modeling
from sluice.ml.contract import Contract, parse_contract
from sluice.ml.transforms import apply_transforms, frequency_tables, transforms_for_scoring
from tests import mixed

BANDS = ["mid", "cheap", "dear"]  # not alphabetical


def shop(task: str, estimators: list[str], **training: object) -> Contract:
    """The mixed-data contract: regression on price, or classification of a price band."""
    contract = mixed.contract(1.0)
    if task != "regression":
        columns = {**contract.columns, "band": contract.columns["zone"].model_copy(
            update={"nullable": False, "categories": BANDS[:2] if task == "binary" else BANDS})}
        del columns["price"]
        metric = "roc_auc" if task == "binary" else "log_loss"
        contract = contract.model_copy(update={"target": "band", "task": task, "metric": metric, "columns": columns})
    return contract.model_copy(update={"training": contract.training.model_copy(
        update={"estimators": estimators, **training})})


def raw(contract: Contract, n: int, seed: int, *, unseen: bool = False) -> pl.DataFrame:
    """Mixed rows; for classification the price becomes a band (and is dropped)."""
    frame = mixed.frame(n, seed, unseen=unseen)
    if contract.target == "band":
        price = pl.col("price")
        band = (pl.when(price < 165).then(pl.lit("cheap")).when(price > 250).then(pl.lit("dear")).otherwise(
            pl.lit("mid")) if contract.task == "multiclass"
            else pl.when(price < 210).then(pl.lit("cheap")).otherwise(pl.lit("mid")))
        frame = frame.with_columns(band.alias("band")).drop("price")
    return frame


def rows(contract: Contract, n: int, seed: int) -> pl.DataFrame:
    """Training rows with their declared features."""
    return apply_transforms(raw(contract, n, seed), contract)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_the_linear_learner_is_stored_as_json_and_loads_to_identical_predictions(task: str) -> None:
    contract = shop(task, ["linear"])
    train = rows(contract, 400, 0)
    encoding = modeling.Encoding.fit(train, contract)
    assert encoding.categorical  # categoricals with nulls (the __NAN__ slot) reach the model
    trained = modeling.train(train, encoding, contract)  # checks the stored form against FLAML's own predictions
    assert trained.best_estimator == "linear" and trained.model_format == linear.LINEAR_JSON
    doc = json.loads(trained.model_bytes)  # plain JSON numbers, nothing executable
    assert doc["format"] == linear.LINEAR_JSON and set(doc["features"]) == set(encoding.columns)

    # Through the bundle loader, on new rows with unseen brands and nulls, in the general and the per-row path.
    frequencies = frequency_tables(train, contract)
    manifest, files = bundle.bundle_files(contract=contract, encoding=encoding, model_bytes=trained.model_bytes,
                                          model_format=trained.model_format, frequencies=frequencies,
                                          run_id="linear")
    model = bundle.model_from_files(manifest, files)
    fresh = raw(contract, 150, 1, unseen=True)
    assert set(fresh["brand"].drop_nulls()) - set(train["brand"].drop_nulls())  # unseen brands
    inputs = fresh.drop(contract.target)
    predicted = model.predict(inputs)
    assert predicted.unscored == []
    X = encoding.features(transforms_for_scoring(fresh, contract, frequencies)[0])
    fitted = trained.estimator
    expected = fitted.predict(X) if task == "regression" else fitted.predict_proba(X)
    expected = expected[:, 1] if task == "binary" else expected
    assert np.array_equal(predicted.scores, expected)
    one = model.predict(inputs.head(3).to_dicts())
    assert np.allclose(one.scores, predicted.scores[:3], atol=1e-12)

    # The numpy scoring is scikit-learn's: the same estimator on the same design matrix predicts the same.
    from sklearn.linear_model import LogisticRegression, Ridge

    train_X = encoding.features(train)
    design = fitted._design(linear.as_matrix(train_X))
    if task == "regression":
        reference = Ridge(alpha=fitted.alpha).fit(design, encoding.labels(train))
        assert np.allclose(reference.predict(fitted._design(linear.as_matrix(X))), expected, atol=1e-8)
    else:
        reference = LogisticRegression(C=fitted.C, max_iter=fitted.max_iter).fit(design, encoding.labels(train))
        proba = reference.predict_proba(fitted._design(linear.as_matrix(X)))
        assert np.allclose(proba[:, 1] if task == "binary" else proba, expected, atol=1e-8)

    # Refit on more rows: same learner, stored and checked the same way.
    more = pl.concat([train, rows(contract, 100, 2)])
    done = modeling.refit(trained, more, encoding, contract)
    assert done.model_format == linear.LINEAR_JSON and done.rows == more.height


def test_a_damaged_linear_model_is_refused() -> None:
    contract = shop("regression", ["linear"])
    train = rows(contract, 80, 3)
    X = modeling.Encoding.fit(train, contract).features(train)
    model = linear.LinearModel("regression").fit(X, np.arange(80.0))
    doc = json.loads(model.to_json())
    assert np.array_equal(linear.LinearModel.from_json(model.to_json()).scores(linear.as_matrix(X)),
                          model.scores(linear.as_matrix(X)))
    doc["coef"][0] = doc["coef"][0][:-1]
    with pytest.raises(ValueError, match="shapes"):
        linear.LinearModel.from_json(json.dumps(doc).encode())


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_a_linear_model_on_rows_scaled_to_one_norm_is_stored_with_its_flag_and_loads_identically(task: str) -> None:
    contract = shop(task, ["linear"])
    train = rows(contract, 200, 4)
    encoding = modeling.Encoding.fit(train, contract)
    X, y = encoding.features(train), encoding.labels(train)
    kind = "regression" if task == "regression" else "classification"
    scaled = linear.LinearModel(kind, row_norm=True).fit(X, y)
    plain = linear.LinearModel(kind).fit(X, y)
    doc = json.loads(scaled.to_json())
    assert doc["version"] == 2 and doc["params"]["row_norm"] is True
    assert json.loads(plain.to_json())["version"] == 1 and "row_norm" not in json.loads(plain.to_json())["params"]

    # The stored model, loaded as the bundle loader loads it, scores new rows (unseen categories, nulls) exactly
    # as the fitted one; and the flag matters: the same rows without it score differently.
    fresh = rows(contract, 120, 9)
    M = encoding.matrix(fresh)
    loaded = modeling.Predictor(linear.LINEAR_JSON, scaled.to_json(), contract.task, encoding)
    assert np.array_equal(loaded.score(fresh), scaled.scores(M))
    assert np.allclose(scaled.scores(M), modeling.Predictor(linear.LINEAR_JSON, scaled.to_json(), contract.task,
                                                            encoding).score(fresh))
    proba = scaled.predict(encoding.features(fresh)) if task == "regression" else scaled.predict_proba(
        encoding.features(fresh))
    expected = proba if task == "regression" else proba[:, 1] if task == "binary" else proba
    assert np.allclose(loaded.score(fresh), expected, atol=1e-12)
    assert not np.allclose(loaded.score(fresh), plain.scores(M))
    # Each numeric part of a design row has the norm of a standardised row (sqrt of the numeric columns).
    numbers = scaled._numbers(M)
    k = sum(name not in scaled.levels_ for name in scaled.features_)
    norms = np.linalg.norm(numbers, axis=1)
    assert np.allclose(norms[norms > 0], np.sqrt(k))

    doc["version"] = 1  # a v1 reader would silently drop the flag: such a document is refused
    with pytest.raises(ValueError, match="row_norm"):
        linear.LinearModel.from_json(json.dumps(doc).encode())


def test_the_contract_accepts_the_linear_learner_and_uses_every_core_by_default() -> None:
    contract = shop("regression", ["lgbm", "linear"])
    assert parse_contract(contract.to_yaml()).training.estimators == ["lgbm", "linear"]
    assert mixed.contract().training.n_jobs == -1
    assert modeling.worker_jobs(-1) == os.cpu_count()
    assert modeling.worker_jobs(1) == 1
    # A small frame fits on one thread (OpenMP threads spin on a shared machine); a large one on every core.
    assert modeling.worker_jobs(-1, cells=300 * 10) == 1
    assert modeling.worker_jobs(-1, cells=modeling.SMALL_FIT_CELLS) == os.cpu_count()
    assert modeling.worker_jobs(2, cells=10) == 2


@pytest.mark.slow
@pytest.mark.parametrize("n_jobs", [1, -1])
def test_the_search_runs_with_the_contracts_n_jobs(n_jobs: int) -> None:
    contract = shop("regression", ["lgbm"], n_jobs=n_jobs)
    train = rows(contract, 300, 0)
    encoding = modeling.Encoding.fit(train, contract)
    trained = modeling.train(train, encoding, contract)
    cells = train.height * len(encoding.columns)
    assert trained.estimator.get_params()["n_jobs"] == modeling.worker_jobs(n_jobs, cells)


def test_every_stored_model_format_is_one_the_events_allow() -> None:
    from sluice.events.model import schema

    for event_type in ("sluice.model.promoted", "sluice.model.rejected", "sluice.model.archived",
                       "sluice.model.rolled_back"):
        artifact = schema(event_type)["properties"]["data"]["properties"]["artifact"]["properties"]
        assert set(artifact["format"]["enum"]) == set(modeling.EXTENSION), event_type
