"""The blend learner (ml/blend.py): stored as JSON naming member files, loaded to identical predictions on mixed
data, every member covered by the bundle's checks, weights chosen out of fold."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import polars as pl
import pytest
from sklearn.base import clone

from sluice.core.errors import IntegrityError
from sluice.ml import blend, bundle, modeling
from sluice.ml.transforms import frequency_tables, transforms_for_scoring
from tests.test_linear import raw, rows, shop


def _blended(task: str) -> tuple[Any, ...]:
    """A search over lgbm and linear on mixed rows, then the blend of its members, forced to be kept."""
    contract = shop(task, ["lgbm", "linear"], n_jobs=1)
    train, holdout = rows(contract, 400, 0), rows(contract, 120, 3)
    encoding = modeling.Encoding.fit(train, contract)
    trained = modeling.train(train, encoding, contract)
    # The search's best lgbm and linear (each when the 1 s search reached it), then LightGBM's defaults and extra
    # trees, and the linear model's twin on rows scaled to one norm; the round trip below wants the linear members
    # too, so they are added when a loaded machine left them out.
    assert {"lgbm_default", "lgbm_extra"} <= set(trained.templates) <= {"lgbm", "linear", "lgbm_default",
                                                                         "lgbm_extra", blend.LINEAR_ROWS}
    assert next(iter(trained.templates)) == trained.best_estimator
    # The twin is a regression member (ml/blend.py); classification's round trip below adds one all the same.
    assert (blend.LINEAR_ROWS in trained.templates) == ("linear" in trained.templates and task == "regression")
    kind = "regression" if contract.task == "regression" else "classification"
    if "linear" not in trained.templates:
        from sluice.ml.linear import LinearModel

        trained.templates = {"linear": LinearModel(kind), **trained.templates}
    if blend.LINEAR_ROWS not in trained.templates:
        trained.templates[blend.LINEAR_ROWS] = blend.linear_rows(trained.templates["linear"])
    twin = trained.templates[blend.LINEAR_ROWS]
    assert twin.row_norm and twin.get_params() == {**trained.templates["linear"].get_params(), "row_norm": True}
    k = len(encoding.classes) if encoding.classes else None
    chosen = blend.build(trained.templates, encoding.features(train), encoding.labels(train),
                         encoding.features(holdout), encoding.labels(holdout), task=contract.task,
                         metric=contract.metric, n_classes=k, seed=1)
    assert chosen.folds == blend.FOLDS and np.isclose(sum(chosen.weights), 1.0)
    assert set(chosen.oof) - {"even"} == {*chosen.learners, "blend"} == set(chosen.holdout)
    if not chosen.kept:  # the decision is measured; the storage is what this test checks, so keep it anyway
        X, y = encoding.features(train), encoding.labels(train)
        chosen.fitted = {n: clone(trained.templates[n]).fit(X, y) for n in chosen.learners}
        chosen.weights = [0.5, 0.5] + [0.0] * (len(chosen.learners) - 2)
    if chosen.weights[chosen.learners.index(blend.LINEAR_ROWS)] == 0:  # its stored form is round-tripped too
        chosen.fitted[blend.LINEAR_ROWS] = clone(trained.templates[blend.LINEAR_ROWS]).fit(
            encoding.features(train), encoding.labels(train))
        chosen.weights = [w / 2 for w in chosen.weights]
        chosen.weights[chosen.learners.index(blend.LINEAR_ROWS)] += 0.5
    return contract, train, encoding, trained, chosen


@pytest.mark.slow
@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_a_blend_is_stored_without_pickle_and_loads_to_identical_predictions(task: str) -> None:
    contract, train, encoding, trained, chosen = _blended(task)
    doc, members = modeling.export_blend(chosen, contract.task)
    modeling.check_blend(doc, members, chosen, train, encoding, contract.task)
    parsed = json.loads(doc)  # plain JSON: members by role, format, sha256 and weight
    assert parsed["format"] == blend.BLEND_JSON
    used = [n for n, w in zip(chosen.learners, chosen.weights, strict=True) if w > 0]
    assert [m["role"] for m in parsed["members"]] == [blend.role(n) for n in used]
    assert {m["format"] for m in parsed["members"]} <= {modeling.LGBM_TEXT, "sluice-linear-json"}
    for m in parsed["members"]:
        assert not members[m["role"]][1].startswith(modeling.PICKLE_MAGIC)

    frequencies = frequency_tables(train, contract)
    manifest, files = bundle.bundle_files(contract=contract, encoding=encoding, model_bytes=doc,
                                          model_format=blend.BLEND_JSON, frequencies=frequencies, run_id="blend",
                                          members=members)
    listing = json.loads(manifest)["files"]
    assert {r for r in listing if r.startswith(blend.MEMBER)} == set(members)  # every member is in the manifest
    model = bundle.model_from_files(manifest, files)

    # New rows: unseen brands, nulls, dates; the general path and the per-row path.
    fresh = raw(contract, 150, 7, unseen=True)
    assert set(fresh["brand"].drop_nulls()) - set(train["brand"].drop_nulls())
    assert fresh.null_count().sum_horizontal()[0] > 0
    inputs = fresh.drop(contract.target)
    predicted = model.predict(inputs)
    assert predicted.unscored == []
    X = encoding.features(transforms_for_scoring(fresh, contract, frequencies)[0])
    expected = blend.combine([blend.predict(chosen.fitted[n], X, contract.task) for n in used],
                             [w for w in chosen.weights if w > 0])
    assert np.allclose(predicted.scores, expected, atol=1e-9)
    one = model.predict(inputs.head(3).to_dicts())
    assert np.allclose(one.scores, predicted.scores[:3], atol=1e-12)

    # Stored to a folder and read back through the loader that checks every file against the manifest.
    def read(key: str) -> bytes:
        return manifest if key == "manifest.json" else files[key]

    loaded = bundle.read_bundle(read, "manifest.json", expected_sha256=bundle.sha256(manifest))
    assert np.array_equal(loaded.predict(inputs).scores, predicted.scores)

    # The refit: the same members and weights on every row, stored and checked the same way.
    more = pl.concat([train, rows(contract, 100, 2)])
    done = modeling.refit_blend(chosen, trained.templates, more, encoding, contract)
    assert done.model_format == blend.BLEND_JSON and done.rows == more.height
    assert set(done.members or {}) == set(members)


@pytest.mark.slow
def test_a_changed_member_file_is_refused() -> None:
    contract, _, encoding, _, chosen = _blended("binary")
    doc, members = modeling.export_blend(chosen, contract.task)
    manifest, files = bundle.bundle_files(contract=contract, encoding=encoding, model_bytes=doc,
                                          model_format=blend.BLEND_JSON, frequencies={}, run_id="blend",
                                          members=members)
    member_file = next(name for name in files if name.startswith(blend.MEMBER))
    tampered = dict(files)
    tampered[member_file] = files[member_file].replace(b"0.", b"1.", 1)
    with pytest.raises(IntegrityError, match="sha256"):
        bundle.read_bundle(lambda k: manifest if k == "manifest.json" else tampered[k], "manifest.json",
                           expected_sha256=bundle.sha256(manifest))
    # A blend document whose member sha256 disagrees with the member it is given is refused too.
    role = next(iter(members))
    with pytest.raises(modeling.ModelMismatch, match="sha256"):
        modeling.Predictor(blend.BLEND_JSON, doc, contract.task, encoding,
                           members={**{r: d for r, (_, d) in members.items()}, role: b"{}"})


def test_weights_are_chosen_out_of_fold_and_the_fast_metrics_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = y * 0.3 + rng.random(400) * 0.7
    noise = rng.random(400)
    weights = blend.choose_weights([good, noise], y, "roc_auc", 2)
    assert weights[0] > 0.5  # the informative member carries the blend
    assert modeling.score("roc_auc", y, blend.combine([good, noise], list(weights)), 2) >= modeling.score(
        "roc_auc", y, good, 2)
    for metric, truth, scores, k in (("roc_auc", y, noise, 2), ("log_loss", y, noise, 2),
                                     ("log_loss", rng.integers(0, 3, 400), rng.dirichlet([1, 1, 1], 400), 3),
                                     ("rmse", rng.normal(size=400), rng.normal(size=400), None),
                                     ("r2", rng.normal(size=400), rng.normal(size=400), None),
                                     ("accuracy", y, noise, 2), ("f1", y, noise, 2),
                                     ("accuracy", rng.integers(0, 3, 400), rng.dirichlet([1, 1, 1], 400), 3)):
        fast = blend._fast_metric(metric, truth, k)
        assert fast is not None and np.isclose(fast(scores), modeling.score(metric, truth, scores, k))
    assert len(blend.simplex(2)) == 21 and all(np.isclose(sum(w), 1) for w in blend.simplex(3))
    # Members are dropped, costliest first (never the search's winner), to fit what is left of the budget.
    assert blend.plan({"a": 1.0, "b": 0.1, "c": 5.0}, 6.0) == (["a", "b"], 5)
    assert blend.plan({"a": 1.0, "b": 0.1, "c": 5.0}, 4.1) == (["a", "b"], 3)
    assert blend.plan({"a": 1.0, "b": 0.1}, 1.0)[1] == 0


def test_a_member_alone_ships_when_it_beats_the_searchs_winner_out_of_fold() -> None:
    import pandas as pd
    from sklearn.dummy import DummyRegressor
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(3)
    X = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300)})
    y = 3 * X["a"].to_numpy() - X["b"].to_numpy() + rng.normal(scale=0.1, size=300)
    Xh = pd.DataFrame({"a": rng.normal(size=80), "b": rng.normal(size=80)})
    yh = 3 * Xh["a"].to_numpy() - Xh["b"].to_numpy()
    # The "search's winner" (first) is a constant: the linear member alone is better on the same folds.
    chosen = blend.build({"winner": DummyRegressor(), "linear": LinearRegression()}, X, y, Xh, yh,
                         task="regression", metric="rmse", n_classes=None, seed=0)
    assert chosen.kept and chosen.weights == [0.0, 1.0] and "linear alone" in chosen.reason
    assert chosen.holdout["blend"] == chosen.holdout["linear"] < chosen.holdout["winner"]
    # When the search's winner is not a member (e.g. xgboost), no member alone replaces it: they were not compared.
    unseen = blend.build({"winner": DummyRegressor(), "linear": LinearRegression()}, X, y, Xh, yh,
                         task="regression", metric="rmse", n_classes=None, seed=0, first_is_winner=False)
    assert not unseen.kept
    # The other way round the winner is the best single member and nothing ships instead of it.
    again = blend.build({"linear": LinearRegression(), "constant": DummyRegressor()}, X, y, Xh, yh,
                        task="regression", metric="rmse", n_classes=None, seed=0)
    assert not again.kept and again.fitted == {}


def test_the_card_says_what_ships_and_why() -> None:
    from sluice.ml.card import _blend

    kept = {"kept": True, "reason": "better than linear alone out of fold", "members": ["linear", "lgbm_extra"],
            "weights": {"linear": 0.7, "lgbm_extra": 0.3, "lgbm": 0.0}, "holdout": {"linear": 56.5, "blend": 56.2}}
    [line] = _blend(kept)
    assert "a blend of linear 0.7, lgbm_extra 0.3" in line and "lgbm 0" not in line and "56.2" in line
    assert "better than linear alone out of fold" in line
    [line] = _blend({"kept": False, "members": ["lgbm", "linear"], "reason": "no time left: 2.0s needed"})
    assert "not shipped: no time left" in line
    assert _blend(None) == []


class _OneColumn:
    """A linear fit on one named column: a member whose errors are that column's own noise."""

    def __init__(self, column: str = "a") -> None:
        self.column = column

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"column": self.column}

    def set_params(self, **params: Any) -> _OneColumn:
        self.column = params.get("column", self.column)
        return self

    def fit(self, X: Any, y: np.ndarray) -> _OneColumn:
        from sklearn.linear_model import LinearRegression

        self.model_ = LinearRegression().fit(X[[self.column]], y)
        return self

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(self.model_.predict(X[[self.column]]))


def _noisy_copies(n: int, noise: dict[str, float], seed: int, shared: float = 0.0) -> tuple[Any, np.ndarray]:
    """Columns that are the target plus noise of their own (and `shared` noise common to them all)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = rng.normal(size=n)
    common = rng.normal(scale=shared, size=n) if shared else 0.0
    return pd.DataFrame({c: y + common + rng.normal(scale=s, size=n) for c, s in noise.items()}), y


def test_members_the_rows_cannot_tell_apart_ship_as_an_even_blend() -> None:
    # 150 rows: members "a" and "b" are equally good (the same shared noise, and a little of their own), "c" far
    # worse. Out of fold one of a and b comes out ahead by chance, and the weights fitted out of fold follow that
    # chance; Occam's window ships a and b evenly and leaves c out.
    members = {"a": _OneColumn("a"), "b": _OneColumn("b"), "c": _OneColumn("c")}
    X, y = _noisy_copies(150, {"a": 0.2, "b": 0.2, "c": 3.0}, seed=4, shared=0.5)
    Xh, yh = _noisy_copies(60, {"a": 0.2, "b": 0.2, "c": 3.0}, seed=5, shared=0.5)
    chosen = blend.build(members, X, y, Xh, yh, task="regression", metric="rmse", n_classes=None, seed=0)
    assert chosen.kept and chosen.weights == [0.5, 0.5, 0.0], chosen
    assert "even blend of a, b" in chosen.reason and chosen.oof["c"] > chosen.oof["even"]
    # Without the window, the weights fitted out of fold decide: tilted by the folds' chance.
    try:
        blend.WINDOW = False
        tilted = blend.build(members, X, y, Xh, yh, task="regression", metric="rmse", n_classes=None, seed=0)
    finally:
        blend.WINDOW = True
    assert tilted.weights != chosen.weights, tilted
    assert chosen.holdout["blend"] < tilted.holdout["blend"]  # and on rows neither saw, the even blend is better


def test_a_member_the_rows_show_is_worse_is_left_out_of_the_window() -> None:
    # 3,000 rows tell a noise of 0.3 from one of 0.6: b is clearly worse than a alone, so no even blend; the
    # weighted blend (mostly a) is kept as before, since it beats a alone out of fold.
    members = {"a": _OneColumn("a"), "b": _OneColumn("b")}
    X, y = _noisy_copies(3000, {"a": 0.3, "b": 0.6}, seed=6)
    Xh, yh = _noisy_copies(200, {"a": 0.3, "b": 0.6}, seed=7)
    chosen = blend.build(members, X, y, Xh, yh, task="regression", metric="rmse", n_classes=None, seed=0)
    assert "even" not in chosen.oof and chosen.kept and chosen.weights[0] > 0.6
    assert "better than a alone" in chosen.reason
    # The noise estimate itself: a difference of many standard errors is clear, none at all is not.
    gains, se = blend.noise([X["a"].to_numpy(), X["b"].to_numpy()], y, "rmse", None, seed=0)
    assert blend.clearly_worse(gains, se, 1, 0) and not blend.clearly_worse(gains, se, 0, 1)
    assert not blend.clearly_worse(gains, se, 0, 0)


def test_the_linear_model_and_its_twin_share_one_share_of_an_even_blend() -> None:
    # Three members the rows cannot tell apart; two are the linear model and its twin on rows scaled to one norm
    # (the same model on another view of the rows), so they split one share rather than take two of three.
    twin = blend.LINEAR_ROWS
    members = {"a": _OneColumn("a"), "linear": _OneColumn("linear"), twin: _OneColumn(twin)}
    noise = {"a": 0.2, "linear": 0.2, twin: 0.2}
    X, y = _noisy_copies(150, noise, seed=12, shared=0.5)
    Xh, yh = _noisy_copies(60, noise, seed=13, shared=0.5)
    chosen = blend.build(members, X, y, Xh, yh, task="regression", metric="rmse", n_classes=None, seed=0)
    assert chosen.kept and chosen.weights == [0.5, 0.25, 0.25], chosen
    assert blend.even_weights(["a", "b", "linear"], ["a", "linear"]) == [0.5, 0.0, 0.5]
    assert blend.even_weights(["linear", twin], ["linear", twin]) == [0.5, 0.5]
    assert blend.learner_of(twin) == "linear" and blend.learner_of("lgbm_extra") == "lgbm"


def _independent_copies(n: int, seed: int) -> tuple[Any, np.ndarray]:
    """"a" and "b": the target plus noise they share (0.5) and a little of their own (0.2); "c": the target plus
    noise of its own only (0.8), worse alone but independent of a's and b's; "d": the shared noise and much of its
    own (2.0), worse alone and in any blend."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = rng.normal(size=n)
    shared = rng.normal(scale=0.5, size=n)
    columns = {"a": y + shared + rng.normal(scale=0.2, size=n), "b": y + shared + rng.normal(scale=0.2, size=n),
               "c": y + rng.normal(scale=0.8, size=n), "d": y + shared + rng.normal(scale=2.0, size=n)}
    return pd.DataFrame(columns), y


def test_a_member_clearly_worse_alone_joins_the_even_blend_when_its_share_does_not_hurt_it() -> None:
    # 100 rows. Alone, c is clearly worse than a (mean squared error 0.64 against 0.29), so the window leaves it
    # out; in the even blend its independent errors dilute the noise a and b share (0.19 against 0.27): it joins.
    # d is worse alone and in the blend (0.70): it stays out.
    members = {n: _OneColumn(n) for n in "abcd"}
    X, y = _independent_copies(100, seed=21)
    Xh, yh = _independent_copies(2000, seed=22)
    chosen = blend.build(members, X, y, Xh, yh, task="regression", metric="rmse", n_classes=None, seed=0)
    assert chosen.kept and np.allclose(chosen.weights, [1 / 3, 1 / 3, 1 / 3, 0.0]), chosen
    assert "even blend of a, b, c" in chosen.reason and "nor does c make" in chosen.reason
    assert chosen.oof["c"] > chosen.oof["a"]
    # The window alone (as before `widen`): a and b, evenly; on rows neither saw the wider blend is better.
    try:
        blend.WIDEN = False
        narrow = blend.build(members, X, y, Xh, yh, task="regression", metric="rmse", n_classes=None, seed=0)
    finally:
        blend.WIDEN = True
    assert narrow.weights == [0.5, 0.5, 0.0, 0.0], narrow
    assert chosen.holdout["blend"] < narrow.holdout["blend"] - 0.02
    # Where the window holds one member (the rows tell the best apart), nothing widens it.
    gains, _ = blend.noise([X[n].to_numpy() for n in "abcd"], y, "rmse", None, seed=0)
    oof = [X[n].to_numpy() for n in "abcd"]
    assert blend.widen(list("abcd"), oof, ["a", "b"], gains, y, "rmse", None, 0) == ["a", "b", "c"]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_the_refit_ships_a_bag_of_fold_fits_that_scores_as_their_average(task: str) -> None:
    """Each weighted tree member fitted once per seeded fold on all rows but that fold, sharing its weight, and the
    linear members once on every row: stored as a blend of the fits, it scores exactly as the average a plain
    scikit-learn loop computes."""
    from sklearn.model_selection import KFold, StratifiedKFold

    contract, train, encoding, trained, chosen = _blended(task)
    more = pl.concat([train, rows(contract, 100, 2)])
    done = modeling.refit_blend(chosen, trained.templates, more, encoding, contract, bag=modeling.BAG_FOLDS)
    used = [(n, w) for n, w in zip(chosen.learners, chosen.weights, strict=True) if w > 0]
    trees = [n for n, _ in used if blend.learner_of(n) == "lgbm"]
    assert trees, "the blend of these rows has a LightGBM member"
    assert done.bag == 5 and done.rows == more.height and done.model_format == blend.BLEND_JSON
    assert len(done.members or {}) == 5 * len(trees) + len(used) - len(trees)
    doc = json.loads(done.model_bytes)
    assert {m["learner"] for m in doc["members"]} == {blend.learner_of(n) for n, _ in used}
    prepared = modeling.refit_input(more, encoding)
    X, y = prepared.X, prepared.y
    splitter = (KFold(5, shuffle=True, random_state=contract.training.seed) if task == "regression"
                else StratifiedKFold(5, shuffle=True, random_state=contract.training.seed))
    expected = np.zeros_like(blend.predict(chosen.fitted[used[0][0]], X, task))
    for name, weight in used:
        if name not in trees:
            expected += weight * blend.predict(clone(trained.templates[name]).fit(X, y), X, task)
            continue
        for fit_rows, _ in splitter.split(np.zeros(len(y)), y):
            assert len(fit_rows) < len(y)  # every fit leaves its fold out
            expected += weight / 5 * blend.predict(clone(trained.templates[name]).fit(X.iloc[fit_rows], y[fit_rows]),
                                                   X, task)
    loaded = modeling.Predictor(blend.BLEND_JSON, done.model_bytes, contract.task, encoding,
                                members={r: data for r, (_, data) in (done.members or {}).items()})
    assert np.allclose(loaded.score(more), expected, atol=1e-9)

    # The search's single winner is bagged the same way when it is a tree: a blend of its fits alone; a linear
    # winner is fitted once on every row.
    single = modeling.refit(trained, more, encoding, contract, bag=modeling.BAG_FOLDS)
    if trained.best_estimator == "lgbm":
        assert single.bag == 5 and [m["learner"] for m in json.loads(single.model_bytes)["members"]] == ["lgbm"] * 5
    else:
        assert single.bag == 0 and single.model_format == modeling.FORMAT_OF_LEARNER[trained.best_estimator]

    if task == "multiclass":  # a class with a single row cannot be in every fit: one fit on every row, as before
        lone = modeling.RefitInput(X, np.where(np.arange(len(y)) == 0, 2, np.where(y == 2, 1, y)), prepared.sample)
        assert int(np.bincount(lone.y)[2]) == 1
        once = modeling.refit_blend(chosen, trained.templates, more, encoding, contract, prepared=lone,
                                    bag=modeling.BAG_FOLDS)
        assert once.bag == 0 and len(once.members or {}) == len(used)


def test_the_refit_is_a_bag_when_its_fits_fit_in_what_is_left_of_the_budget() -> None:
    from sluice.handlers.train import refit_plan

    assert refit_plan(one_fit_s=0.5, room_s=2.0) == modeling.BAG_FOLDS == 5  # 4 fits' worth of rows
    assert refit_plan(one_fit_s=0.6, room_s=2.0) == 0  # a single fit on every row
    assert refit_plan(one_fit_s=2.5, room_s=2.0) is None  # none: the judged model ships
