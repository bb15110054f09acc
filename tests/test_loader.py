"""The one loader: a stored model scores new rows exactly as the model did in memory, through every load path."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.core.errors import ModelInputError
from sluice.core.runtime import Runtime
from sluice.ml import bundle, modeling, runs
from sluice.ml.contract import ColumnSpec, Contract
from sluice.ml.features import row_key_columns, training_rows
from tests import mixed
from tests.chain import run_chain


def _reference(runtime: Runtime, run: dict[str, Any], contract: Contract, new: pl.DataFrame) -> np.ndarray:
    """In-process predictions: the encoding as the train stage fitted it in memory (never serialised), the
    booster's own text, the declared features computed here, and pandas categoricals as FLAML trained on."""
    rows = training_rows(runtime.store, contract, run["feature_set_version"], [])
    mask = modeling.holdout_mask(rows.select(row_key_columns(contract, rows)), 0.2, 42)
    encoding = modeling.Encoding.fit(rows.filter(pl.Series(~mask)), contract)
    assert [c for c in encoding.columns if c in encoding.categorical] == ["zone", "color", "brand"]
    shares = rows.group_by("brand").agg(pl.col("brand_share").last())
    featured = new.with_columns(signup_month=pl.col("signup").dt.month().cast(pl.Int32),
                                log_amount=pl.col("amount").log1p())
    featured = featured.join(shares, on="brand", how="left", nulls_equal=True)  # training counted missing brands
    featured = featured.with_columns(pl.col("brand_share").fill_null(0.0))
    # The model a version ships: the refit on train + holdout (same encoding, fitted on the training rows): a blend
    # of LightGBM members or a bag of LightGBM fits, whose predictions are averaged with the weights its document
    # gives.
    # (On a loaded machine the bag may not fit in what is left of the budget: then one booster on every row ships.)
    ships = shipped(run)
    X = encoding.features(featured)
    if ships["model"]["format"] == "lightgbm-text":
        return lgb.Booster(model_str=runtime.store.get(ships["model"]["key"]).decode()).predict(X)
    assert ships["model"]["format"] == "sluice-blend-json"
    prefix = ships["bundle"]["key"].rsplit("/", 1)[0]
    files = runtime.store.get_json(ships["bundle"]["key"])["files"]
    members = runtime.store.get_json(ships["model"]["key"])["members"]
    assert len(members) >= 2 and all(m["format"] == "lightgbm-text" for m in members)
    return np.sum([m["weight"] * lgb.Booster(model_str=runtime.store.get(
        f"{prefix}/{files[m['role']]['path']}").decode()).predict(X) for m in members], axis=0)


@pytest.mark.slow
def test_a_stored_model_scores_mixed_data_exactly_as_in_memory_through_every_load_path(
        runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from sluice.cli import main

    contract = mixed.contract()
    published: list[dict[str, Any]] = []
    runtime.on_event = lambda kind, doc: published.append(doc) if kind == "published" else None
    runtime.store.put(f"contracts/{mixed.DATASET}.yaml", contract.to_yaml().encode())
    run = run_chain(runtime, f"incoming/{mixed.DATASET}/a.csv", mixed.csv_bytes(mixed.frame(800, 0)))
    assert run["best_estimator"] == "lgbm"
    # The run reproduces on this data too: the search's rows (its validation band) and rounds, the split, the
    # encoding of three categorical columns out of alphabetical order, dates and nulls.
    assert run.get("search"), "FLAML validated on the search's band here: what reproducing must recompute"
    assert runs.reproduce(runtime.store, run)["match"]

    new = mixed.frame(300, 1, unseen=True)  # brands b98/b99 were never seen in training
    expected = _reference(runtime, run, contract, new)
    csv = tmp_path / "new.csv"
    csv.write_bytes(mixed.csv_bytes(new, ints_as_floats=True))

    champion = bundle.load_model(f"{mixed.DATASET}@champion", settings=runtime.settings, store=runtime.store)
    assert champion.version == 1 and champion.encoding.columns == champion.predictor.feature_names
    [event] = [e for e in published if e["type"] == "sluice.model.promoted"]
    paths = {
        "csv path": champion.predict(csv),
        "polars": champion.predict(new),
        "pandas": champion.predict(new.to_pandas()),
        "dicts": champion.predict(new.to_dicts()),
        "by version": bundle.load_model(f"{mixed.DATASET}:1", settings=runtime.settings,
                                        store=runtime.store).predict(csv),
        "event": bundle.load_model(event, settings=runtime.settings, store=runtime.store).predict(csv),
    }
    monkeypatch.setenv("SLUICE_BUCKET", runtime.settings.bucket)
    cli = CliRunner()
    got = cli.invoke(main, ["models", "download", f"{mixed.DATASET}@champion", str(tmp_path / "bundle")])
    assert got.exit_code == 0, got.output
    paths["downloaded bundle"] = bundle.load_model(str(tmp_path / "bundle")).predict(csv)
    for name, result in paths.items():
        assert result.unscored == [], name
        assert np.array_equal(result.scores, expected), f"{name}: differs from the in-memory model"
        assert result.version == 1 and result.model_sha256 == shipped(run)["model"]["sha256"], name

    out = tmp_path / "scored.parquet"
    got = cli.invoke(main, ["models", "predict", f"{mixed.DATASET}@champion", str(csv), "-o", str(out)])
    assert got.exit_code == 0, got.output
    scored = pl.read_parquet(out)
    assert scored.columns[:7] == new.columns and np.array_equal(scored["prediction"].to_numpy(), expected)
    assert "scored 300 of 300 rows" in got.output
    # An earlier output scored again: this model's predictions replace the file's own, never hide behind them.
    stale, again = tmp_path / "stale.csv", tmp_path / "again.parquet"
    scored.with_columns(pl.lit(-1.0).alias("prediction")).write_csv(stale)
    got = cli.invoke(main, ["models", "predict", f"{mixed.DATASET}@champion", str(stale), "-o", str(again)])
    assert got.exit_code == 0 and "replaced the file's own prediction, unscored_reason" in got.output, got.output
    rescored = pl.read_parquet(again)
    assert rescored.columns == scored.columns and np.allclose(rescored["prediction"].to_numpy(), expected)

    # The gate judged exactly these scores: the benchmark's candidate score is the run's own holdout metric.
    candidate = runtime.store.get_json(f"registry/{mixed.DATASET}/candidates/{run['run_id']}.candidate.json")
    assert candidate["scores"]["candidate"] == pytest.approx(run["holdout"]["metrics"]["rmse"], abs=1e-6)
    # And a replay of the search's result on the same rows gives the same model quality.
    assert runs.reproduce(runtime.store, run)["match"]


@pytest.mark.slow
def test_rows_a_model_cannot_score_are_reported_not_scored(runtime: Runtime) -> None:
    runtime.store.put(f"contracts/{mixed.DATASET}.yaml", mixed.contract(1).to_yaml().encode())
    run_chain(runtime, f"incoming/{mixed.DATASET}/a.csv", mixed.csv_bytes(mixed.frame(400, 0)))
    model = bundle.load_model(mixed.DATASET, settings=runtime.settings, store=runtime.store)
    rows = mixed.frame(4, 2).with_columns(pl.col("zone").cast(pl.Utf8), pl.col("visits").cast(pl.Utf8)).to_dicts()
    rows[1]["zone"] = "mars"
    rows[2]["visits"] = "many"
    rows[3]["visits"] = -3
    result = model.predict(rows)
    assert result.scored.tolist() == [0]
    reasons = {u["row"]: u["reason"] for u in result.unscored}
    assert "'mars' is not one of the contract's categories" in reasons[2]
    assert "expected int, got 'many'" in reasons[3]
    assert "below the contract's min 0" in reasons[4]
    table = result.to_polars()
    assert table["prediction"].null_count() == 3 and table["unscored_reason"][0] is None

    missing = model.predict(pl.DataFrame({"zone": ["west"], "color": ["red"]}))
    assert len(missing.scored) == 0
    assert {u["column"] for u in missing.unscored} >= {"brand", "amount", "signup", "visits"}
    assert "column 'amount' is missing" in {u["reason"] for u in missing.unscored}


@pytest.mark.slow
def test_a_tampered_bundle_is_refused_and_never_loaded(runtime: Runtime) -> None:
    from sluice.core.errors import IntegrityError
    from sluice.ml.registry import ModelRegistry

    runtime.store.put(f"contracts/{mixed.DATASET}.yaml", mixed.contract(1).to_yaml().encode())
    run_chain(runtime, f"incoming/{mixed.DATASET}/a.csv", mixed.csv_bytes(mixed.frame(400, 0)))
    version = ModelRegistry(runtime.store, runtime.state).version(mixed.DATASET, 1)
    assert version is not None and version["bundle"]["sha256"] == run_bundle_sha(runtime, version)
    key = version["bundle"]["key"]
    manifest = json.loads(runtime.store.get(key))
    # A LightGBM file of the bundle changed: one fit of the shipped bag (a member of its blend document).
    role = next(r for r in sorted(manifest["files"]) if r.startswith("member-lgbm"))
    model_key = key.rsplit("/", 1)[0] + "/" + manifest["files"][role]["path"]
    original = runtime.store.get(model_key)
    assert b"num_leaves" in original
    runtime.store.put(model_key, original.replace(b"num_leaves", b"num_leafs"))
    with pytest.raises(IntegrityError, match="does not match the bundle manifest"):
        bundle.load_model(f"{mixed.DATASET}:1", settings=runtime.settings, store=runtime.store)
    # Rewriting the manifest to match does not help: the registry recorded the manifest's sha256.
    manifest["files"][role]["sha256"] = bundle.sha256(runtime.store.get(model_key))
    runtime.store.put(key, json.dumps(manifest).encode())
    with pytest.raises(IntegrityError, match="the registry recorded"):
        bundle.load_model(f"{mixed.DATASET}:1", settings=runtime.settings, store=runtime.store)


def run_bundle_sha(runtime: Runtime, version: dict[str, Any]) -> str:
    """The sha256 of the bundle the run recorded for shipping."""
    return str(shipped(runtime.store.get_json(version["run_key"]))["bundle"]["sha256"])


def shipped(run: dict[str, Any]) -> dict[str, Any]:
    """The run's record of the model a version ships: its refit, or (refit off) the evaluated model."""
    return run.get("refit") or {"model": run["artifacts"]["model"], "bundle": run["bundle"]}


def test_models_stored_with_sorted_keys_are_scored_in_their_own_column_order() -> None:
    """The encoding documents written before this fix had alphabetical categoricals; the model's own feature
    names put them back in order, so old versions score correctly too."""
    frame, contract = _random_table(np.random.default_rng(5), ["zone", "color", "brand"], ["x"], [], 400)
    encoding = modeling.Encoding.fit(frame, contract)
    booster = _booster(frame, encoding, contract)
    legacy = {**encoding.to_dict(), "categorical": dict(sorted(encoding.categorical.items()))}
    legacy.pop("order")
    old = modeling.Encoding.from_dict(json.loads(json.dumps(legacy, sort_keys=True)))
    assert old.columns != encoding.columns  # what every loader used to hand the model
    assert not np.allclose(booster.predict(old.features(frame)), booster.predict(encoding.features(frame)))
    predictor = modeling.Predictor(modeling.LGBM_TEXT, booster.model_to_string().encode(), "binary", old)
    assert np.array_equal(predictor.score(frame), booster.predict(encoding.features(frame)))


# -- property: random column orders and types, stored then loaded, identical predictions -------------------------

NAMES = st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), min_size=2, max_size=7, unique=True)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=NAMES, kinds=st.lists(st.sampled_from(["str", "float", "int", "date", "bool"]), min_size=7,
                                   max_size=7), seed=st.integers(0, 2**16), task=st.sampled_from(
           ["binary", "multiclass", "regression"]))
def test_any_column_order_and_types_round_trip_to_identical_predictions(
        names: list[str], kinds: list[str], seed: int, task: str) -> None:
    rng = np.random.default_rng(seed)
    cats = [n for n, k in zip(names, kinds, strict=False) if k == "str"]
    nums = [n for n, k in zip(names, kinds, strict=False) if k in ("float", "int")]
    others = [(n, k) for n, k in zip(names, kinds, strict=False) if k in ("date", "bool")]
    frame, contract = _random_table(rng, cats, nums, others, 300, task=task)
    encoding = modeling.Encoding.fit(frame, contract)
    if not encoding.columns:
        return
    booster = _booster(frame, encoding, contract)
    manifest, files = bundle.bundle_files(contract=contract, encoding=encoding,
                                          model_bytes=booster.model_to_string().encode(),
                                          model_format=modeling.LGBM_TEXT, frequencies={}, run_id="r")
    # Through JSON with sorted keys, as a careless writer would store it.
    files = {k: (json.dumps(json.loads(v), sort_keys=True).encode() if k.endswith(".json") else v)
             for k, v in files.items()}
    manifest_doc = json.loads(manifest)
    for meta in manifest_doc["files"].values():
        meta["sha256"] = bundle.sha256(files[meta["path"]])
    loaded = bundle.model_from_files(json.dumps(manifest_doc).encode(), files)
    new = _random_table(np.random.default_rng(seed + 1), cats, nums, others, 50, task=task)[0]
    result = loaded.predict(new.drop(contract.target).select(list(reversed(new.columns[:-1]))))
    expected = booster.predict(encoding.features(new))
    assert result.unscored == [] and np.array_equal(result.scores, expected)


def _random_table(rng: np.random.Generator, cats: list[str], nums: list[str], others: list[tuple[str, str]],
                  n: int, task: str = "binary") -> tuple[pl.DataFrame, Contract]:
    columns: dict[str, Any] = {}
    specs: dict[str, ColumnSpec] = {}
    signal = np.zeros(n)
    for i, c in enumerate(cats):
        levels = [f"{c}_{j}" for j in rng.permutation(6)]
        values = rng.choice(levels, n).astype(object)
        values[rng.random(n) < 0.05] = None
        columns[c] = values.tolist()
        specs[c] = ColumnSpec(dtype="str", nullable=True)
        signal += np.array([0 if v is None else levels.index(v) * (i + 1) for v in values])
    for c in nums:
        values = rng.normal(0, 1, n)
        signal += values
        columns[c] = [None if m else float(v) for v, m in zip(values, rng.random(n) < 0.05, strict=True)]
        specs[c] = ColumnSpec(dtype="float", nullable=True)
    for c, kind in others:
        if kind == "date":
            days = rng.integers(0, 900, n)
            columns[c] = [date.fromordinal(738000 + int(d)) for d in days]
            signal += days / 300
        else:
            columns[c] = rng.random(n) < 0.5
        specs[c] = ColumnSpec(dtype=kind, nullable=True)  # type: ignore[arg-type]
    signal += rng.normal(0, 0.5, n)
    if task == "regression":
        target: list[Any] = signal.tolist()
        specs["target"] = ColumnSpec(dtype="float")
    else:
        k = 2 if task == "binary" else 3
        edges = np.quantile(signal, np.linspace(0, 1, k + 1)[1:-1])
        target = [f"k{int(np.searchsorted(edges, s))}" for s in signal]
        specs["target"] = ColumnSpec(dtype="str")
    columns["target"] = target
    metric = {"binary": "roc_auc", "multiclass": "log_loss", "regression": "rmse"}[task]
    contract = Contract(dataset="prop", target="target", task=task, metric=metric, columns=specs)  # type: ignore[arg-type]
    return pl.DataFrame(columns, strict=False), contract


def _booster(frame: pl.DataFrame, encoding: modeling.Encoding, contract: Contract) -> lgb.Booster:
    y = encoding.labels(frame)
    params: dict[str, Any] = {"verbose": -1, "num_threads": 1, "min_data_in_leaf": 5, "min_data_per_group": 5,
                              "cat_smooth": 1.0}
    if contract.task == "regression":
        params["objective"] = "regression"
    elif contract.task == "binary":
        params["objective"] = "binary"
    else:
        params |= {"objective": "multiclass", "num_class": len(encoding.classes or [])}
    return lgb.train(params, lgb.Dataset(encoding.features(frame), y), num_boost_round=8)


def test_every_kind_of_input_becomes_the_same_frame(tmp_path: Path) -> None:
    df = pl.DataFrame({"a": [1, None], "b": ["x", "y"]})
    (tmp_path / "t.csv").write_bytes(df.write_csv().encode())
    df.write_parquet(tmp_path / "t.parquet")
    assert bundle.as_frame(tmp_path / "t.parquet").equals(df)
    assert bundle.as_frame(str(tmp_path / "t.csv"))["b"].to_list() == ["x", "y"]
    assert bundle.as_frame({"a": 1, "b": "x"}).height == 1
    assert bundle.as_frame([{"a": 1.0}, {"a": "2"}])["a"].to_list() == ["1.0", "2"]  # mixed: typed by the contract
    with pytest.raises(Exception, match="cannot score a int"):
        bundle.as_frame(3)


def test_a_row_dict_without_a_column_is_refused_alone_or_beside_others(shop_model: bundle.Model) -> None:
    """A key left out of a row dict is refused (a request that lacks a field is more often a mistake than a null;
    send null for a missing value), alone or beside other rows, and said once (not also as a null the contract
    does not allow)."""
    full, lacking = json.loads(json.dumps(mixed.frame(2, 8).to_dicts(), default=str))
    del lacking["zone"]
    alone = shop_model.predict([lacking])
    assert alone.unscored == [{"row": 1, "column": "zone", "reason": "column 'zone' is missing"}]
    together = shop_model.predict([full, lacking])  # the frame holds a null there; the row still lacks the column
    assert together.scored.tolist() == [0] and together.unscored == [{**alone.unscored[0], "row": 2}]
    assert np.array_equal(together.scores, shop_model.predict([full]).scores)
    strict = _shop_model(mixed.contract().model_copy(update={"columns": {
        **mixed.contract().columns, "zone": mixed.contract().columns["zone"].model_copy(update={"nullable": False})}}))
    assert strict.predict([full, lacking]).unscored == [{**alone.unscored[0], "row": 2}]


def test_a_number_in_a_date_column_is_refused_not_read_as_some_day(shop_model: bundle.Model) -> None:
    """pandas' to_json writes a date as milliseconds since 1970 (283996800000 for 1979-01-01); polars casts a number
    to a date as days: the row was scored as another day, silently."""
    row = json.loads(json.dumps(mixed.frame(1, 8).to_dicts(), default=str))[0]
    assert row["signup"] is not None
    millis = (date.fromisoformat(row["signup"][:10]).toordinal() - date(1970, 1, 1).toordinal()) * 86_400_000
    for value in (millis, millis // 86_400_000, float(millis)):
        result = shop_model.predict([{**row, "signup": value}])
        assert result.scored.tolist() == [], value
        [why] = result.unscored
        assert why["column"] == "signup" and "a number is not a date" in why["reason"], why
    assert shop_model.predict([row]).scored.tolist() == [0]


def test_nan_is_a_missing_value_from_a_file_a_frame_and_a_dict(shop_model: bundle.Model, tmp_path: Path) -> None:
    """A CSV cell "NaN" (numpy's and R's writers), a float NaN in a polars frame, pandas' NaN and a JSON null all
    score as the missing value; an infinity is refused."""
    import pandas as pd

    frame = mixed.frame(3, 8)
    number = "amount"
    assert shop_model.contract.columns[number].dtype == "float" and number in shop_model.required
    nulled = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(number))
    expected = shop_model.predict(nulled)
    assert expected.unscored == []
    text = frame.with_columns(pl.col(pl.Date).cast(pl.Utf8)).with_columns(pl.lit("NaN").alias(number))
    text.write_csv(tmp_path / "nan.csv")
    for rows in (tmp_path / "nan.csv", pd.read_csv(tmp_path / "nan.csv"),
                 frame.with_columns(pl.lit(float("nan")).alias(number)),
                 [{**r, number: float("nan")} for r in frame.to_dicts()]):
        got = shop_model.predict(rows)
        assert got.unscored == [] and np.allclose(got.scores, expected.scores), type(rows)
    infinite = shop_model.predict(frame.with_columns(pl.lit(float("inf")).alias(number)))
    assert infinite.scored.tolist() == [] and "amount" in infinite.unscored[0]["reason"]


def test_a_json_true_in_a_number_column_is_refused_with_its_row(shop_model: bundle.Model) -> None:
    """`{"area": true}` scored as the number 1 (polars casts a bool column to floats)."""
    full = json.loads(json.dumps(mixed.frame(2, 8).to_dicts(), default=str))[0]
    number = next(n for n, spec in shop_model.contract.columns.items()
                  if spec.dtype == "float" and n in shop_model.required)
    flagged = shop_model.predict([{**full, number: True}])
    assert flagged.scored.tolist() == [] and flagged.unscored[0]["column"] == number, flagged.unscored
    assert shop_model.predict([full]).scored.tolist() == [0]


def test_predictions_index_like_the_rows_they_score(shop_model: bundle.Model) -> None:
    """`model.predict(frame)[:5]` raised "'Predictions' object is not subscriptable": they are one per input row,
    in its order, the label or value, None where a row was not scored."""
    full, lacking = json.loads(json.dumps(mixed.frame(2, 8).to_dicts(), default=str))
    del lacking["zone"]
    predictions = shop_model.predict([full, lacking, full])
    assert len(predictions) == 3 and predictions[1] is None
    assert predictions[0] == predictions[2] == predictions.labels[0] and list(predictions) == predictions[:]
    assert predictions.per_row() == predictions.to_polars()["prediction"].to_list()


@pytest.mark.parametrize(("text", "message"), [
    (b"a,b,c\n1,2,3\n4,5\n", "line 3 has 2 fields, the header has 3: '4,5'"),  # read as 4,5,null before
    (b"a,b,c\n1,2,3,4\n", "line 2 has 4 fields, the header has 3"),
    (b"a,b\nn\xf6rth,1\n", "cannot be read as CSV: .*save it as UTF-8"),
    (b"", "is empty"),
])
def test_a_csv_to_score_that_is_ragged_or_unreadable_is_refused_with_its_line(
        tmp_path: Path, text: bytes, message: str) -> None:
    (tmp_path / "t.csv").write_bytes(text)
    with pytest.raises(ModelInputError, match=message):
        bundle.as_frame(tmp_path / "t.csv")
    assert bundle.as_frame(_written(tmp_path / "ok.csv", b'a,b,c\n1,,3\n"4,5",6,\n')).height == 2


def test_blank_lines_in_a_csv_to_score_are_left_out_as_pandas_leaves_them(shop_model: bundle.Model,
                                                                          tmp_path: Path) -> None:
    # polars 2 reads a blank line as a row of nulls: a CRLF export ending in a blank line got one prediction too many.
    csv = tmp_path / "rows.csv"
    mixed.frame(5, 3).write_csv(csv)
    lines = csv.read_bytes().splitlines()
    blanked = _written(tmp_path / "blank.csv", b"\r\n".join([*lines[:3], b"", *lines[3:]]) + b"\r\n\r\n")
    assert pl.read_csv(blanked, infer_schema=False).height == 7  # what the reader gives
    assert bundle.as_frame(blanked).height == 5
    assert np.array_equal(shop_model.predict(blanked).scores, shop_model.predict(csv).scores)
    assert bundle.as_frame(_written(tmp_path / "empty_cells.csv", b"a,b\n1,2\n,\n")).height == 2  # no blank line


def _written(path: Path, text: bytes) -> Path:
    path.write_bytes(text)
    return path


def test_a_pandas_frame_as_row_dicts_scores_as_the_frame_does(shop_model: bundle.Model) -> None:
    # `df.to_dict("records")` hands predict pandas' own values: NaN for the nulls of an int column (floats in
    # pandas), pd.NA in a string column, and Timestamps for dates (pandas has no date type). They mean what they
    # mean in the frame: missing values and dates, not values to refuse.
    rows = mixed.frame(40, 6).with_columns(
        pl.when(pl.int_range(pl.len()) % 4 == 0).then(None).otherwise(pl.col(c)).alias(c) for c in ("visits", "brand"))
    frame = rows.to_pandas()
    frame["visits"] = frame["visits"].astype("float64")
    frame["brand"] = frame["brand"].astype("string")  # pd.NA for its nulls
    assert frame["visits"].isna().any() and frame["brand"].isna().any()
    as_frame = shop_model.predict(frame)
    as_dicts = shop_model.predict(frame.to_dict("records"))
    assert len(as_frame.scored) == 40 and as_dicts.unscored == []
    assert np.array_equal(as_frame.scores, as_dicts.scores)


# -- the single-row fast path gives what the general path gives ----------------------------------------------------

@pytest.fixture(scope="module")
def shop_model() -> bundle.Model:
    return _shop_model(mixed.contract())


def _shop_model(contract: Contract) -> bundle.Model:
    from sluice.ml.transforms import apply_transforms, frequency_tables

    train = apply_transforms(mixed.frame(600, 0), contract)
    encoding = modeling.Encoding.fit(train, contract)
    booster = _booster(train, encoding, contract)
    manifest, files = bundle.bundle_files(contract=contract, encoding=encoding,
                                          model_bytes=booster.model_to_string().encode(),
                                          model_format=modeling.LGBM_TEXT,
                                          frequencies=frequency_tables(train, contract), run_id="r")
    return bundle.model_from_files(manifest, files)


CELL = {
    "zone": st.sampled_from([*mixed.ZONES, None, "mars", " west", ""]),
    "color": st.sampled_from([*mixed.COLORS, None, 7]),
    "brand": st.sampled_from(["b01", "b07", "b99", None, 3, 4.0, "b0 1"]),
    "signup": st.sampled_from(["2024-03-05", "2025-02-28", None, "", "2024/03/05", "05.03.2024", "soon",
                               "2024-03-05T00:00:00", "2025-02-28T00:00:00Z", "2024-03-05 00:00:00+00:00",
                               "2024-03-05T00:00:00.000", "2024-03-05T13:00:00", "2024-03-05T00:00+02:00",
                               "2025-02-30T00:00:00", datetime(2024, 7, 1), datetime(2024, 7, 1, 13),
                               date(2024, 7, 1)]),
    "visits": st.one_of(st.integers(-2, 50), st.sampled_from(["3", "3.0", " 4 ", "3.5", "-1", "x", None, 2.0, 2.5,
                                                              "NA", "?", "-"])),
    "amount": st.one_of(st.floats(-5, 1e4, allow_nan=False), st.sampled_from(["12.5", "1e3", "nan", "inf", None,
                                                                              "", "-0.5", 7, "N/A", "null"])),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.fixed_dictionaries(CELL), min_size=1, max_size=4))
def test_the_fast_path_scores_exactly_as_the_general_path(shop_model: bundle.Model, rows: list[dict[str, Any]]
                                                          ) -> None:
    general = shop_model._predict_frame(bundle.as_frame(rows))
    fast = shop_model._predict_fast(rows)
    if fast is None:
        return  # the general path answers (and explains) what the fast path does not handle
    assert general.unscored == [], "the fast path scored a row the general path refuses"
    assert np.array_equal(fast.scores, general.scores)


def test_the_fast_path_takes_well_formed_rows(shop_model: bundle.Model) -> None:
    rows = json.loads(json.dumps(mixed.frame(20, 4).to_dicts(), default=str))
    assert shop_model._predict_fast(rows) is not None
    assert np.array_equal(shop_model.predict(rows).scores, shop_model._predict_frame(bundle.as_frame(rows)).scores)


@pytest.mark.slow
def test_rescore_corrects_versions_scored_by_the_old_loader_in_the_history(runtime: Runtime) -> None:
    from sluice.ml.registry import ModelRegistry
    from sluice.ml.rescore import rescore

    runtime.store.put(f"contracts/{mixed.DATASET}.yaml", mixed.contract(1).to_yaml().encode())
    run = run_chain(runtime, f"incoming/{mixed.DATASET}/a.csv", mixed.csv_bytes(mixed.frame(400, 0)))
    registry = ModelRegistry(runtime.store, runtime.state)
    v1 = registry.version(mixed.DATASET, 1)
    assert v1 is not None
    # A version as the old train stage left it: no bundle, an encoding stored with sorted keys, and gate scores
    # computed on alphabetically ordered columns (here: a wrong number, as that loader reported).
    encoding = json.loads(runtime.store.get(run["artifacts"]["encoding"]["key"]))
    legacy_encoding = json.dumps({**encoding, "categorical": dict(encoding["categorical"])}, sort_keys=True).encode()
    key = f"runs/{mixed.DATASET}/run-legacy/encoding.json"
    runtime.store.put(key, legacy_encoding)
    legacy_run = {**run, "run_id": "run-legacy", "artifacts": {**run["artifacts"], "encoding": {
        "key": key, "sha256": bundle.sha256(legacy_encoding)}}}
    legacy_run.pop("bundle")
    runtime.store.put_json(f"runs/{mixed.DATASET}/run-legacy/run.json", legacy_run)
    legacy = {k: v for k, v in v1.items() if k != "bundle"}
    legacy |= {"version": 2, "run_id": "run-legacy", "run_key": f"runs/{mixed.DATASET}/run-legacy/run.json",
               "scores": {**v1["scores"], "candidate": 999.0}, "compared_with": 1}
    runtime.store.put_json(f"registry/{mixed.DATASET}/versions/000002.json", legacy)

    lines = list(rescore(registry, mixed.DATASET, by="test", at="2030-01-01T00:00:00Z"))
    assert lines[0].startswith("v1: unchanged")
    assert lines[1].startswith("v2: candidate 999.0000 -> ") and "champion" in lines[1]
    [record] = [r for r in registry.history(mixed.DATASET) if r["action"] == "rescored"]
    assert record["version"] == 2 and record["scores_before"]["candidate"] == 999.0
    assert record["scores_after"]["candidate"] == pytest.approx(v1["scores"]["candidate"], abs=1e-6)
    assert registry.version(mixed.DATASET, 2) == legacy  # the version document is never rewritten
    again = list(rescore(registry, mixed.DATASET, by="test", at="2030-01-01T00:00:01Z"))
    assert again[1].endswith("(already recorded)")
    assert len([r for r in registry.history(mixed.DATASET) if r["action"] == "rescored"]) == 1


def test_the_package_never_unpickles() -> None:
    """No module Sluice ships imports a deserializer that runs code (pickle and its relatives)."""
    import ast

    root = Path(__file__).resolve().parents[1]
    banned = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    offenders = []
    for folder in ("core", "events", "handlers", "infra", "sluice"):
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                offenders += [f"{path.relative_to(root)}: imports {n}" for n in names if n.split(".")[0] in banned]
                if isinstance(node, ast.Attribute) and node.attr in ("loads", "load") and isinstance(
                        node.value, ast.Name) and node.value.id in banned:
                    offenders.append(f"{path.relative_to(root)}: calls {node.value.id}.{node.attr}")
    assert offenders == []


# -- users' data: the same rows from CSV, Parquet written by pandas, and JSON rows score the same -----------------

def test_csv_parquet_from_pandas_and_json_rows_with_iso_dates_score_the_same(shop_model: bundle.Model,
                                                                             tmp_path: Path) -> None:
    import pandas as pd

    rows = mixed.frame(60, 9, unseen=True)
    csv = _written(tmp_path / "new.csv", mixed.csv_bytes(rows, ints_as_floats=True))
    frame = rows.to_pandas()
    frame["signup"] = pd.to_datetime(frame["signup"])  # midnights; visits is float64 (it has nulls)
    assert frame["visits"].dtype == "float64" and frame["visits"].isna().any()
    frame.to_parquet(tmp_path / "new.parquet")
    # what `df.to_json(orient="records", date_format="iso")` and many APIs send: dates as ISO datetimes
    records = json.loads(frame.to_json(orient="records", date_format="iso"))
    assert any(str(r["signup"]).endswith("T00:00:00.000") for r in records)
    utc = [{**r, "signup": r["signup"] and r["signup"][:10] + "T00:00:00Z"} for r in records]

    expected = shop_model.predict(csv)
    assert expected.unscored == [] and len(expected.scored) == 60
    for got in (shop_model.predict(tmp_path / "new.parquet"), shop_model.predict(frame),
                shop_model.predict(records), shop_model.predict(utc), shop_model._predict_frame(bundle.as_frame(utc))):
        assert got.unscored == []
        assert np.array_equal(got.scores, expected.scores)
    one = shop_model._predict_fast(utc[:1])  # what `sluice serve` gets: one row, the fast path
    assert one is not None and np.array_equal(one.scores, expected.scores[:1])


def test_missing_markers_in_numbers_score_as_missing_on_every_path(shop_model: bundle.Model, tmp_path: Path) -> None:
    # R writes NA, Excel #N/A or -, SQL exports NULL, UCI's files ?: in a number column such a cell is a missing
    # value, as validation reads it. It was a type error: the row was refused (file, frame) or bailed (one row).
    rows = mixed.frame(30, 5).with_columns(pl.when(pl.int_range(pl.len()) % 3 == 0).then(None)
                                           .otherwise(pl.col(c)).alias(c) for c in ("visits", "amount"))
    blank = shop_model.predict(_written(tmp_path / "blank.csv", mixed.csv_bytes(rows)))
    assert blank.unscored == [] and len(blank.scored) == 30
    for marker in ("NA", "N/A", "null", "-", "?", "#N/A"):
        text = mixed.csv_bytes(rows.with_columns(pl.col("visits", "amount").cast(pl.Utf8).fill_null(marker)))
        got = shop_model.predict(_written(tmp_path / "marked.csv", text))
        assert got.unscored == [], (marker, got.unscored[:2])
        assert np.array_equal(got.scores, blank.scores), marker
        one = {**rows.to_dicts()[0], "visits": marker, "amount": marker}
        fast = shop_model._predict_fast([one])
        assert fast is not None and np.array_equal(fast.scores, blank.scores[:1]), marker
    # a text column keeps the marker as written: "NA" may be a value (North America)
    assert shop_model.predict({**rows.to_dicts()[1], "brand": "NA"}).unscored == []


def test_a_date_column_with_a_layout_scores_in_that_layout_on_every_path(shop_model: bundle.Model,
                                                                          tmp_path: Path) -> None:
    # A contract inferred from US dates says `format: "%m/%d/%Y"`: the model must read new rows so (02/03/2024 is
    # 3 February, not polars' guess of 2 March), from a file, a frame, row dicts and one row as `sluice serve` does.
    contract = mixed.contract()
    us = contract.model_copy(update={"columns": {**contract.columns, "signup": contract.columns["signup"].model_copy(
        update={"format": "%m/%d/%Y"})}})
    model = _shop_model(us)
    assert model.contract.columns["signup"].format == "%m/%d/%Y"  # it travels in the bundle
    rows = mixed.frame(40, 8).filter(pl.col("signup").dt.day() <= 12)
    expected = shop_model.predict(rows)
    assert expected.unscored == [] and rows.height > 5
    written = rows.with_columns(pl.col("signup").dt.strftime("%m/%d/%Y"))
    for got in (model.predict(_written(tmp_path / "us.csv", mixed.csv_bytes(written))), model.predict(written),
                model.predict(written.to_dicts()), model.predict(written.to_dicts()[0])):
        assert got.unscored == [], got.unscored[:2]
        assert np.array_equal(got.scores, expected.scores[: len(got.scores)])
    assert model.predict({**rows.to_dicts()[0], "signup": "2024-02-03"}).unscored == []  # ISO is taken too


def test_a_date_with_a_time_of_day_is_refused_with_the_reason(shop_model: bundle.Model, tmp_path: Path) -> None:
    import pandas as pd

    row = mixed.frame(1, 2).to_dicts()[0]
    for value in ("2024-05-01T09:30:00", "2024-05-01T00:00:00+02:00", datetime(2024, 5, 1, 9, 30),
                  pd.Timestamp("2024-05-01 09:30")):
        got = shop_model.predict({**row, "signup": value})
        assert got.scored.size == 0, value
        [why] = got.unscored
        assert why["column"] == "signup" and ("09:30" in why["reason"] or "+02:00" in why["reason"]), why
        assert "midnight" in why["reason"], why
    frame = pd.DataFrame([{**row, "visits": 2.5}])
    [why] = shop_model.predict(frame).unscored
    assert why["column"] == "visits" and "2.5" in why["reason"], why


def test_a_tampered_or_broken_downloaded_bundle_is_refused_with_what_is_wrong(tmp_path: Any) -> None:
    """A bundle folder edited by hand: a changed file, a manifest that is not one, a file it names that is gone.
    Each is an IntegrityError naming the file (a manifest of the wrong shape was an AttributeError or KeyError,
    a missing file a FileNotFoundError)."""
    import json as _json

    from sluice import load_model
    from sluice.core.errors import IntegrityError
    from tests import mixed

    manifest, files = mixed.trained_bundle(300, 0.5)
    (tmp_path / "manifest-x.json").write_bytes(manifest)
    for path, data in files.items():
        (tmp_path / path).write_bytes(data)
    assert load_model(str(tmp_path)).task == "regression"
    model_file = _json.loads(manifest)["files"]["model"]["path"]
    (tmp_path / model_file).write_bytes(files[model_file] + b"\n")
    with pytest.raises(IntegrityError, match=f"{model_file}: sha256 does not match"):
        load_model(str(tmp_path))
    (tmp_path / model_file).unlink()
    with pytest.raises(IntegrityError, match=f"{model_file}: named by the bundle manifest, and cannot be read"):
        load_model(str(tmp_path))
    for broken in ('{"files": 3}', '{"files": {"model": {"path": "x"}}}', "[1, 2]", '{"files": {}}'):
        (tmp_path / "manifest-x.json").write_text(broken)
        with pytest.raises(IntegrityError, match=r"manifest-x\.json: not a bundle manifest"):
            load_model(str(tmp_path))


def test_a_pandas_object_column_mixing_numbers_and_text_scores_as_its_row_dicts_do(shop_model: bundle.Model) -> None:
    # A frame whose number column holds [52000.5, "41000.25"] (read from JSON, or filled from two sources) ended in
    # Arrow's "Could not convert '41000.25' with type str" traceback; as row dicts, CSV or through serve the same
    # rows were scored and the unreadable one explained.
    import pandas as pd

    rows = mixed.frame(4, 3).to_dicts()
    number = next(n for n, spec in shop_model.contract.columns.items()
                  if spec.dtype == "float" and n in shop_model.required)
    frame = pd.DataFrame(rows)
    frame[number] = pd.Series([52000.5, "41000.25", "lots", None], dtype=object)
    frame["unused"] = [1 + 2j, 3j, 0j, 1j]  # a column Arrow has no type for, not one the model reads
    got = shop_model.predict(frame)
    as_dicts = shop_model.predict(frame.drop(columns="unused").to_dict("records"))
    assert got.scored.tolist() == as_dicts.scored.tolist() == [0, 1, 3]
    assert got.unscored == as_dicts.unscored and got.unscored[0]["row"] == 3 and "lots" in got.unscored[0]["reason"]
    assert np.array_equal(got.scores, as_dicts.scores)
    plain = frame.drop(columns="unused").iloc[[0, 3]].astype({number: "float64"})  # the same values, typed
    assert np.array_equal(got.scores[[0, 2]], shop_model.predict(plain).scores)
    twice = pd.DataFrame([[1, 2]], columns=["zone", "zone"])
    with pytest.raises(ModelInputError, match="columns named alike"):
        shop_model.predict(twice)


@pytest.mark.slow
def test_a_model_trained_with_an_inferred_contract_scores_a_year_columns_next_seasons(runtime: Runtime) -> None:
    # `contract infer` on seasons 1931..1932 wrote `max: 1933` (the span, 1, on each side): the model left next
    # season's rows unscored ("year: 1935 is above the contract's max 1933.0").
    from sluice.ml.contract import infer_contract

    def seasons(years: list[int], n: int) -> pl.DataFrame:
        return pl.DataFrame({"year": [years[i % len(years)] for i in range(n)],
                             "rain": [float((i * 37) % 50) for i in range(n)],
                             "wins": [float((i * 37) % 50) * 0.4 + (i % len(years)) for i in range(n)]})

    sample = seasons([1931, 1932], 200)
    contract = infer_contract(sample, "league", "wins", time_budget_s=1.0, debounce_s=0)
    runtime.store.put("contracts/league.yaml", contract.to_yaml().encode())
    run_chain(runtime, "incoming/league/a.csv", sample.write_csv().encode())
    model = bundle.load_model("league:1", settings=runtime.settings, store=runtime.store)
    result = model.predict(seasons([1933, 1934, 1935, 1936], 8).drop("wins"))
    assert result.unscored == [] and len(result.scored) == 8


def test_models_predict_fails_with_the_reasons_when_no_row_can_be_scored(
        shop_model: bundle.Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from sluice.cli import main
    from sluice.commands import models as models_command

    monkeypatch.setattr(models_command, "_load", lambda *_: shop_model)
    wrong = _written(tmp_path / "wrong.csv", b"foo,bar\n" + b"1,2\n" * 60)
    got = CliRunner().invoke(main, ["models", "predict", "shop@champion", str(wrong)])
    assert got.exit_code == 1, got.output
    assert got.output.strip().splitlines() == [
        f"Error: {shop_model.name} v{shop_model.version} could score none of the 60 rows of {wrong}: column 'amount' "
        "is missing (60 rows); column 'brand' is missing (60 rows); column 'color' is missing (60 rows); and 3 more "
        "reasons"]
    # Some rows scored: the rows are written, the others say why, and the command succeeds.
    partial = tmp_path / "partial.csv"
    mixed.frame(2, 2).with_columns(pl.Series("visits", ["3", "many"])).write_csv(partial)
    got = CliRunner().invoke(main, ["models", "predict", "shop@champion", str(partial)])
    assert got.exit_code == 0 and "scored 1 of 2 rows" in got.output, got.output
@pytest.mark.parametrize(("dtype", "values", "expected"), [
    ("bool", [True, False], [True, False]), ("int", [3, 7], [3, 7]), ("str", ["no", "yes"], ["no", "yes"])])
def test_a_class_comes_back_as_the_target_held_it(dtype: str, values: list[Any], expected: list[Any]) -> None:
    """A bool target predicted the text "True" (and an int target "3") through Python, the CLI's files and serve."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=300)
    frame = pl.DataFrame({"x": x, "y": [values[int(v > 0)] for v in x]})
    contract = Contract(dataset="typed", target="y", task="binary", metric="roc_auc",
                        columns={"x": ColumnSpec(dtype="float"), "y": ColumnSpec(dtype=dtype)})  # type: ignore[arg-type]
    encoding = modeling.Encoding.fit(frame, contract)
    manifest, files = bundle.bundle_files(contract=contract, encoding=encoding,
                                          model_bytes=_booster(frame, encoding, contract).model_to_string().encode(),
                                          model_format=modeling.LGBM_TEXT, frequencies={}, run_id="r")
    model = bundle.model_from_files(manifest, files)
    got = model.predict(pl.DataFrame({"x": [-2.0, 2.0]}))
    assert got.labels == expected and [type(v) for v in got] == [type(v) for v in expected]
    assert got.to_polars()["prediction"].to_list() == expected
    assert [d["prediction"] for d in got.to_dicts()] == expected
    assert model.predict([{"x": 2.0}])[0] == expected[1]  # the fast path
