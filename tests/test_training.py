"""Continuous training: coalescing, deterministic holdout, warm start, tracking, reproduce, cancel, time limits."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from typing import Any

import numpy as np
import polars as pl
import pytest

from sluice.core.errors import ContractError, IntegrityError, SluiceError
from sluice.core.runtime import Runtime
from sluice.core.settings import Settings
from sluice.events.s3 import ObjectCreated
from sluice.handlers import build_pipeline
from sluice.ml import modeling, runs
from sluice.ml.bundle import load_run
from sluice.ml.contract import Contract, parse_contract
from sluice.ml.runs import artifact
from sluice.service import build_runtime, start
from tests.chain import DATASET, prepare, run_chain, sample_bytes, sample_contract, wait_for


def parts(n: int) -> list[bytes]:
    """The bundled sample split into n files of distinct rows, each with the header."""
    frame = pl.read_csv(io.BytesIO(sample_bytes()))
    out = []
    for i in range(n):
        buf = io.BytesIO()
        frame.filter(pl.int_range(pl.len()) % n == i).write_csv(buf)
        out.append(buf.getvalue())
    return out


def with_training(contract: Contract, **changes: Any) -> Contract:
    return contract.model_copy(update={"training": contract.training.model_copy(update=changes)})




@pytest.mark.slow
def test_a_run_is_tracked_reproducible_and_comparable(runtime: Runtime) -> None:
    a, b = parts(2)
    run1 = run_chain(runtime, f"incoming/{DATASET}/a.csv", a)
    assert set(run1["holdout"]["metrics"]) == {"roc_auc", "log_loss", "accuracy", "f1"}
    assert run1["trials"]["count"] >= 1 and run1["best_config"]
    # The search's winner ships, unless a blend (or a member alone) beat it out of fold: whether one does depends
    # on how much of the budget the search left, so both are accepted, each with what it must record.
    if (run1.get("blend") or {}).get("kept"):
        assert run1["artifacts"]["model"]["format"] == "sluice-blend-json" and run1["blend"]["weights"]
    else:
        assert run1["artifacts"]["model"]["format"] == modeling.FORMAT_OF_LEARNER[run1["best_estimator"]]
    assert abs(sum(run1["feature_importance"].values()) - 1.0) < 1e-6
    trials = modeling.parse_trials(artifact(runtime.store, run1, "trials").decode())
    assert len(trials) == run1["trials"]["count"] and all("config" in t and "loss" in t for t in trials)
    for plot in ("loss_curve", "importance"):
        assert artifact(runtime.store, run1, plot).startswith(b"\x89PNG")
    assert run1["environment"]["packages"]["flaml"] and run1["durations_s"]["flaml_fit"] > 0

    result = runs.reproduce(runtime.store, run1)
    assert result["match"], result
    # FLAML validated on some of train's rows and the judged model is its trial's, fitted on the others (no final
    # retrain of its own): the run says which, and reproducing fits those rows, not all of train's.
    search = run1["search"]
    assert search["validation"]["rows"] > 0
    assert search["train_rows"] + search["validation"]["rows"] == run1["holdout"]["train_rows"]
    if run1.get("model_format") != modeling.BLEND_JSON:  # a blend's members (and its recorded winner) saw every row
        assert not runs.reproduce(runtime.store, {k: v for k, v in run1.items() if k != "search"})["match"]
    # The run records its split, and reproducing recomputes that one: told it used version 1, it gets other rows.
    assert run1["holdout"]["split"] == {"method": "row-hash", "version": modeling.SPLIT_VERSION}
    as_v1 = {**run1, "holdout": {**run1["holdout"], "split": {"method": "row-hash", "version": 1}}}
    try:
        assert not runs.reproduce(runtime.store, as_v1)["match"]
    except SluiceError as exc:  # the other rows give another encoding
        assert "encoding differs" in str(exc)

    run2 = run_chain(runtime, f"incoming/{DATASET}/b.csv", b)
    assert run2["warm_start"] is not None and run2["warm_start"]["used"] is True  # FLAML honoured the champion
    diff = runs.compare(run1, run2)
    assert diff["data_versions"]["shared"] == 1 and len(diff["data_versions"]["only_b"]) == 1
    again = runs.reproduce(runtime.store, run2)
    assert again["match"], (again, run2.get("search"), run2["best_estimator"], run2.get("model_format"))
    # Holdout rows never reach training, and a row held out once stays held out in every later snapshot.
    h1 = pl.read_parquet(io.BytesIO(artifact(runtime.store, run1, "holdout")))
    h2 = pl.read_parquet(io.BytesIO(artifact(runtime.store, run2, "holdout")))
    assert h1.join(h2, on=h1.columns, how="anti").height == 0
    assert run2["holdout"]["rows"] + run2["holdout"]["train_rows"] == 569


def test_holdout_assignment_depends_only_on_the_row() -> None:
    frame = pl.read_csv(io.BytesIO(sample_bytes()))
    full = modeling.holdout_mask(frame, 0.2, 42)
    shuffled = frame.with_row_index("i").sample(fraction=1.0, shuffle=True, seed=3)
    again = modeling.holdout_mask(shuffled.drop("i"), 0.2, 42)
    assert (full[shuffled["i"].to_numpy()] == again).all()
    assert 0.12 < full.mean() < 0.28  # about the asked share
    assert not (modeling.holdout_mask(frame, 0.2, 7) == full).all()  # the seed matters


def per_row_holdout_mask(frame: pl.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """The split as it was first written, one row at a time in Python: the reference the faster one must equal."""
    cols = sorted(frame.columns)
    keys = frame.select(
        pl.concat_str([pl.col(c).cast(pl.Utf8).fill_null("\x00") for c in cols], separator="\x1f").alias("k")
    )["k"].to_list()
    salt = f"{seed}\x1e".encode()
    threshold = int(fraction * 2**64)
    return np.fromiter(
        (int.from_bytes(hashlib.sha256(salt + k.encode()).digest()[:8], "big") < threshold for k in keys),
        dtype=bool, count=len(keys),
    )


def test_the_holdout_split_is_the_one_every_earlier_run_used() -> None:
    """Stored runs are reproduced by recomputing their split, so a faster split must put every row where the
    first one did: text, nulls, non-ASCII, the separator inside a value, dates, NaN, booleans, every fraction."""
    rng = np.random.default_rng(0)
    n = 2000
    frame = pl.DataFrame({
        "x": rng.normal(size=n), "k": rng.integers(-5, 5, n), "s": rng.choice(["a", "ü", "a\x1fb", ""], n),
        "d": pl.date_range(pl.date(2020, 1, 1), pl.date(2020, 1, 1) + pl.duration(days=n - 1), eager=True),
        "nan": np.where(rng.random(n) < 0.1, np.nan, 1.5), "b": rng.random(n) < 0.5,
    }).with_columns(pl.when(pl.col("k") == 0).then(None).otherwise(pl.col("s")).alias("s"))
    for fraction, seed in ((0.2, 42), (0.5, 0), (0.01, 7), (1.0, 1), (0.0, 1)):
        ours = modeling.holdout_mask(frame, fraction, seed, version=1)
        reference = per_row_holdout_mask(frame, fraction, seed)
        assert ours.dtype == bool and np.array_equal(ours, reference), (fraction, seed)
    assert 0.15 < modeling.holdout_mask(frame, 0.2, 42, version=1).mean() < 0.25


def test_split_version_2_depends_only_on_the_row_and_the_seed() -> None:
    """The split new runs use: a row's side follows its values (any dtype, nulls, NaN, -0.0 as 0.0), not its
    position, the frame's other rows, or an integer column's width; the seed and the version change it."""
    rng = np.random.default_rng(1)
    n = 5000
    x = rng.normal(size=n)
    frame = pl.DataFrame({
        "x": np.where(rng.random(n) < 0.05, np.nan, x), "k": rng.integers(-5, 5, n),
        "s": rng.choice(["zeta", "alpha", "ü", "a\x1fb", ""], n),
        "d": pl.date_range(pl.date(2020, 1, 1), pl.date(2020, 1, 1) + pl.duration(days=n - 1), eager=True),
        "t": pl.datetime_range(pl.datetime(2021, 3, 1), pl.datetime(2021, 3, 1) + pl.duration(hours=n - 1),
                               "1h", eager=True),
        "b": rng.random(n) < 0.5,
    }).with_columns(pl.when(pl.col("k") == 0).then(None).otherwise(pl.col("s")).alias("s"),
                    pl.when(pl.col("k") == 1).then(None).otherwise(pl.col("x")).alias("x"),
                    pl.col("s").cast(pl.Categorical).alias("c"))
    full = modeling.holdout_mask(frame, 0.2, 42)
    assert full.dtype == bool and 0.17 < full.mean() < 0.23
    order = rng.permutation(n)
    assert np.array_equal(modeling.holdout_mask(frame[order], 0.2, 42), full[order])  # position does not matter
    assert np.array_equal(modeling.holdout_mask(frame[:100], 0.2, 42), full[:100])  # nor the other rows
    assert np.array_equal(modeling.holdout_mask(frame.select(sorted(frame.columns, reverse=True)), 0.2, 42), full)
    narrow = frame.with_columns(pl.col("k").cast(pl.Int32))
    assert np.array_equal(modeling.holdout_mask(narrow, 0.2, 42), full)
    zeros = pl.DataFrame({"x": [0.0, -0.0, None, float("nan")], "y": ["a", "a", "a", "a"]})
    sides = modeling._row_keys_v2(zeros, ["x", "y"], 42)
    assert sides[0] == sides[1] and len({int(sides[1]), int(sides[2]), int(sides[3])}) == 3
    assert not np.array_equal(modeling.holdout_mask(frame, 0.2, 7), full)  # the seed matters
    assert not np.array_equal(modeling.holdout_mask(frame, 0.2, 42, version=1), full)  # a different split
    assert modeling.holdout_mask(frame, 1.0, 42).all() and not modeling.holdout_mask(frame, 0.0, 42).any()
    smaller = modeling.holdout_mask(frame, 0.1, 42)
    assert not (smaller & ~full).any()  # a smaller fraction holds out a subset
    with pytest.raises(ValueError, match="version"):
        modeling.holdout_mask(frame, 0.2, 42, version=3)


def test_the_search_validates_on_rows_of_its_own_and_never_on_a_rare_class() -> None:
    rng = np.random.default_rng(0)
    frame = pl.DataFrame({"x": rng.normal(size=2000), "c": rng.choice(["a", "b"], 2000)})
    y = rng.integers(0, 2, 2000)
    holdout, keys = modeling.split(frame, 0.2, 42)
    assert np.array_equal(holdout, modeling.holdout_mask(frame, 0.2, 42))
    plain = modeling.search_validation(keys, y, 0.2, None)  # regression: no classes to keep whole
    assert not (plain & holdout).any() and 0.07 < plain[~holdout].mean() < 0.13  # a tenth of train's rows
    y[np.flatnonzero(plain)[:5]] = y[np.flatnonzero(~plain & ~holdout)[:10]] = 2  # 15 rows: too rare to validate on
    mask = modeling.search_validation(keys, y, 0.2, ["no", "yes", "rare"])
    assert not mask[y == 2].any()
    assert np.array_equal(mask, plain & (y != 2))
    order = rng.permutation(2000)  # a row's side depends on the row, not on its position
    assert np.array_equal(modeling.search_validation(modeling.split(frame[order], 0.2, 42)[1], y[order], 0.2, None),
                          plain[order])


def test_a_column_constant_without_the_validation_rows_keeps_flaml_on_every_row() -> None:
    """FLAML drops a column constant in the rows it trains on: when one varies only in the search's validation
    rows, FLAML gets every training row as before (and the stored model keeps the encoding's columns)."""
    from sluice.ml.contract import infer_contract

    rng = np.random.default_rng(1)
    frame = pl.DataFrame({"a": rng.normal(size=2000), "b": rng.normal(size=2000)})
    frame = frame.with_columns(y=pl.when(pl.col("a") + rng.normal(size=2000) > 0).then(pl.lit("p")).otherwise(
        pl.lit("n")))
    contract = infer_contract(frame, "t", "y", 1.0, debounce_s=0)  # too many cells to cross-validate in 1 s
    _, keys = modeling.split(frame.select("a", "b", "y"), 0.2, 42)
    encoding = modeling.Encoding.fit(frame, contract)
    validation = modeling.search_validation(keys, encoding.labels(frame), 0.2, encoding.classes)
    assert modeling.train(frame, encoding, contract, validation=validation).search is not None
    spike = np.zeros(2000)
    spike[np.flatnonzero(validation)[0]] = 1.0  # varies only on one validation row
    spiked = frame.with_columns(spike=pl.Series(spike))
    encoding = modeling.Encoding.fit(spiked, contract)
    assert "spike" in encoding.columns
    trained = modeling.train(spiked, encoding, contract, validation=validation)
    assert trained.search is None and trained.best_fit_rows == 2000


def test_labels_name_classes_as_before() -> None:
    """Labels are mapped per distinct value, named by Python's str(): True, 1.0, 1e-05 stay what they were."""
    cases = [(["no", "yes"], ["no", "yes", None, "maybe", "yes"], [0, 1, -1, -1, 1]),
             (["False", "True"], [True, None, False], [1, -1, 0]),
             (["0.0", "1e-05", "None"], [0.0, 1e-05, None, float("nan"), 2.0], [0, 1, 2, -1, -1]),
             (["1", "2", "3"], [1, 2, None, 3, 7], [0, 1, -1, 2, -1])]
    for classes, values, expected in cases:
        encoding = modeling.Encoding("y", "binary", classes)
        labels = encoding.labels(pl.DataFrame({"y": values}))
        assert labels.dtype == np.int64 and labels.tolist() == expected, (classes, values)


@pytest.mark.slow
def test_xgboost_is_stored_as_json_and_checked_before_loading(runtime: Runtime) -> None:
    contract = with_training(sample_contract(), estimators=["xgboost"])
    runtime.store.put(f"contracts/{DATASET}.yaml", contract.to_yaml().encode())
    run = run_chain(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    assert run["best_estimator"] == "xgboost" and run["artifacts"]["model"]["format"] == "xgboost-json"
    assert json.loads(runtime.store.get(run["artifacts"]["model"]["key"]))["learner"]  # XGBoost's own JSON
    assert run["holdout"]["metrics"]["roc_auc"] > 0.9
    runtime.store.put(run["artifacts"]["model"]["key"], b"tampered")
    with pytest.raises(IntegrityError, match="sha256"):
        load_run(runtime.store, run)


def test_learners_that_need_pickle_are_refused_by_the_contract() -> None:
    with pytest.raises(ContractError, match="cannot be stored without pickle"):
        parse_contract(sample_contract().to_yaml().replace("- lgbm", "- rf"))


@pytest.mark.slow
def test_a_running_training_can_be_cancelled(runtime: Runtime) -> None:
    runtime.store.put(f"contracts/{DATASET}.yaml",
                      with_training(sample_contract(), time_budget_s=60).to_yaml().encode())
    runtime.store.put(f"incoming/{DATASET}/a.csv", sample_bytes())
    for stage, prefix in (("validate", "incoming/"), ("features", "validated/")):
        [k] = [k for k in runtime.store.keys(prefix) if k.endswith((".csv", "manifest.json"))]
        info = runtime.store.head(k)
        assert info is not None
        runtime.execute(stage, ObjectCreated(runtime.settings.bucket, k, info.size, info.etag).to_dict())
    [fs] = [k for k in runtime.store.keys("features/") if k.endswith("manifest.json")]
    info = runtime.store.head(fs)
    assert info is not None
    started = time.monotonic()
    thread = threading.Thread(target=runtime.execute, args=(
        "train", ObjectCreated(runtime.settings.bucket, fs, info.size, info.etag).to_dict()))
    thread.start()
    progress = wait_for(lambda: [k for k in runtime.store.keys("runs/") if k.endswith("progress.json")], 30,
                        "training progress")
    assert runs.list_runs(runtime.store, DATASET)[0]["status"] == "running"
    runtime.store.put_json(progress[0].replace("progress.json", "cancel.json"), {"requested": True})
    thread.join(timeout=30)
    assert not thread.is_alive() and time.monotonic() - started < 40  # well before the 60 s budget
    assert [k for k in runtime.store.keys("runs/") if k.endswith("cancelled.json")]
    assert not [k for k in runtime.store.keys("runs/") if k.endswith("run.json")]


def test_the_training_time_limit_follows_the_contract_budget(runtime: Runtime) -> None:
    runtime.store.put(f"contracts/{DATASET}.yaml",
                      with_training(sample_contract(), time_budget_s=100).to_yaml().encode())
    runtime.dispatch(ObjectCreated(runtime.settings.bucket, f"features/{DATASET}/fs-x/manifest.json", etag="e"))
    runtime.dispatch(ObjectCreated(runtime.settings.bucket, f"runs/{DATASET}/r/run.json", etag="e"))
    from dramatiq import Message

    decoded = [Message.decode(raw) for raw in runtime.broker.queues[runtime.queue_name].queue]
    messages = {m.actor_name.rsplit(".", 1)[-1]: m for m in decoded}
    assert messages["train"].options["time_limit"] == (100 * 3 + 120) * 1000
    assert "time_limit" not in messages["benchmark"].options


def test_the_first_drop_trains_without_waiting_for_the_debounce(runtime: Runtime) -> None:
    contract = with_training(sample_contract(), debounce_s=3600.0)
    runtime.store.put(f"contracts/{DATASET}.yaml", contract.to_yaml().encode())
    a, b = parts(2)
    # Nothing else is pending, so there is nothing to coalesce: an hour's debounce does not hold it back.
    assert run_chain(runtime, f"incoming/{DATASET}/a.csv", a)["data_versions"]
    # A drop while another is still on its way (here: not validated yet) waits for the debounce.
    runtime.store.put(f"incoming/{DATASET}/c.csv", parts(3)[0])
    from dramatiq.errors import Retry

    with pytest.raises(Retry):
        run_chain(runtime, f"incoming/{DATASET}/b.csv", b)


@pytest.mark.slow
def test_a_burst_of_drops_makes_one_run(moto_settings: Settings) -> None:
    contract = with_training(sample_contract(), debounce_s=5.0)
    prepare(moto_settings, contract)
    service = start(moto_settings, runtime=build_runtime(moto_settings, build_pipeline()), bridge_wait_s=1)
    store = service.runtime.store
    try:
        for i, data in enumerate(parts(3)):
            store.put(f"incoming/{DATASET}/part-{i}.csv", data)  # a burst: each drop finds the others pending
        wait_for(lambda: [k for k in store.keys("registry/") if "/versions/" in k], 60, "a registered version")
        time.sleep(6)  # longer than the debounce: a second run would have started by now
    finally:
        service.stop()
    run_docs = [store.get_json(k) for k in store.keys(f"runs/{DATASET}/") if k.endswith("run.json")]
    assert len(run_docs) == 1
    assert len(run_docs[0]["data_versions"]) == 3
    assert len([k for k in store.keys(f"validated/{DATASET}/") if k.endswith("manifest.json")]) == 3


def test_work_beside_the_search_starts_once_its_first_trial_is_logged(tmp_path: Any) -> None:
    """train's `on_search_start` (handlers/train.py submits its side work there) is called once, by the watcher,
    as soon as FLAML's log has a trial (not at the progress reports' pace); and once, after the fit, when the log
    never had one."""
    log = tmp_path / "trials.jsonl"
    calls: list[str] = []
    called = threading.Event()

    def first() -> None:
        calls.append(threading.current_thread().name)
        called.set()

    watcher = modeling._Watcher(log, None, None, every_s=3600, on_first_trial=first)
    watcher.start()
    assert not called.wait(0.3)  # no trial yet
    log.write_text(json.dumps({"record_id": 0, "learner": "lgbm", "config": {}, "validation_loss": 0.5}) + "\n")
    assert called.wait(30)
    watcher.stop()
    watcher.first_trial()  # what train does after the fit: no second call
    assert calls == ["sluice-fit-watcher"]
    quiet: list[str] = []
    never = modeling._Watcher(tmp_path / "none.jsonl", None, None, on_first_trial=lambda: quiet.append("after"))
    never.start()
    never.stop()
    never.first_trial()
    never.first_trial()
    assert quiet == ["after"]


def test_encoding_keeps_the_columns_and_medians_that_counting_and_numpy_give() -> None:
    """`Encoding.fit` tells constant columns and medians from a few statistics per column; they must be what
    counting distinct values and np.median give, on NaN, signed zeros, infinities, nulls, large integers, booleans
    and times (medians compared as text, so -0.0 and 0.0 differ)."""
    from datetime import date, datetime, timedelta

    def reference(frame: pl.DataFrame) -> tuple[list[str], dict[str, str]]:
        numeric, medians = [], {}
        for name in frame.columns:
            s = frame[name]
            if name == "y" or s.drop_nulls().n_unique() < 2:
                continue
            numeric.append(name)
            medians[name] = str(float(np.median(modeling._as_float(s).drop_nulls().drop_nans().to_numpy())))
        return numeric, medians

    rng = np.random.default_rng(7)
    floats = [0.0, -0.0, 1.5, -2.25, float("nan"), float("inf"), float("-inf"), None]
    for n in [1, 2, 3, 4, 5, 8, 13] * 12:
        columns: dict[str, pl.Series] = {
            "f": pl.Series([floats[i] for i in rng.integers(0, len(floats), n)], dtype=pl.Float64),
            "zeros": pl.Series([[0.0, -0.0, None][i] for i in rng.integers(0, 3, n)], dtype=pl.Float64),
            "nan_or_one": pl.Series([[float("nan"), 1.0, None][i] for i in rng.integers(0, 3, n)], dtype=pl.Float64),
            "f32": pl.Series(rng.normal(size=n).round(1), dtype=pl.Float32),
            "big": pl.Series([2**60 + int(i) for i in rng.integers(0, 2, n)], dtype=pl.Int64),
            "small": pl.Series([[1, 2, None][i] for i in rng.integers(0, 3, n)], dtype=pl.Int8),
            "flag": pl.Series([[True, False, None][i] for i in rng.integers(0, 3, n)], dtype=pl.Boolean),
            "day": pl.Series([date(2026, 1, 1) + timedelta(days=int(i)) for i in rng.integers(0, 3, n)]),
            "at": pl.Series([datetime(2026, 1, 1) + timedelta(milliseconds=int(i)) for i in rng.integers(0, 3, n)]),
            "empty": pl.Series([None] * n, dtype=pl.Float64),
            "y": pl.Series(["a", "b"] * n)[:n],
        }
        frame = pl.DataFrame(columns)
        encoding = modeling.Encoding.fit(frame, sample_contract().model_copy(update={"target": "y"}))
        numeric, medians = reference(frame)
        assert (encoding.numeric, {k: str(v) for k, v in encoding.medians.items()}) == (numeric, medians), frame


@pytest.mark.slow
def test_missing_numbers_reach_the_stored_model_as_flaml_saw_them() -> None:
    """FLAML imputes missing numbers with the training median before fitting; the stored model must agree."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random(600)
    frame = pl.DataFrame({"x": np.where(np.arange(600) % 3 == 0, np.nan, x), "noise": rng.random(600),
                          "y": np.where(x > 0.3, "yes", "no")}).with_columns(pl.col("x").fill_nan(None))
    contract = with_training(sample_contract(), time_budget_s=1).model_copy(update={"target": "y", "columns": {
        "x": sample_contract().columns["mean_radius"].model_copy(update={"nullable": True, "min": None, "max": None}),
        "noise": sample_contract().columns["mean_radius"].model_copy(update={"min": None, "max": None}),
        "y": sample_contract().columns["diagnosis"].model_copy(update={"categories": ["no", "yes"]})}})
    encoding = modeling.Encoding.fit(frame, contract)
    assert encoding.medians["x"] == pytest.approx(float(np.median(x[np.arange(600) % 3 != 0])))
    trained = modeling.train(frame, encoding, contract)  # checks agreement itself
    predictor = modeling.Predictor(trained.model_format, trained.model_bytes, "binary", encoding)
    scores = predictor.score(frame)
    filled = frame.with_columns(pl.col("x").fill_null(encoding.medians["x"]))
    assert np.allclose(scores, predictor.score(filled))


@pytest.mark.slow
def test_the_version_ships_a_refit_on_every_labelled_row(runtime: Runtime) -> None:
    from sluice.infra.state import MemoryState
    from sluice.ml import bundle
    from sluice.ml.registry import ModelRegistry

    run = run_chain(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    assert run["refit"]["rows"] == run["holdout"]["rows"] + run["holdout"]["train_rows"] == 569
    # A single tree model ships as a bag of 5 fits, each without one fold; a blend as one fit of each member.
    from sluice.ml.blend import learner_of

    kept = (run.get("blend") or {}).get("kept")
    ships = [n for n, w in run["blend"]["weights"].items() if w > 0] if kept else [run["best_estimator"]]
    single_tree = len(ships) == 1 and learner_of(ships[0]) == "lgbm"
    assert run["refit"].get("bag") == ({"folds": 5, "seed": 42} if single_tree else None), (ships, run["refit"])
    [version] = ModelRegistry(runtime.store, MemoryState()).versions(DATASET)
    assert version["bundle"] == run["refit"]["bundle"] and version["evaluated_bundle"] == run["bundle"]
    assert version["artifact"]["sha256"] == run["refit"]["model"]["sha256"] != run["artifacts"]["model"]["sha256"]
    holdout = pl.read_parquet(io.BytesIO(artifact(runtime.store, run, "holdout")))
    y = bundle.load_run(runtime.store, run).encoding.labels(holdout)
    shipped = bundle.load_version(runtime.store, version).score_features(holdout)
    judged = bundle.load_version(runtime.store, version, evaluated=True).score_features(holdout)
    # The gate's score is the evaluated model's on rows it never saw; the shipped refit has seen them.
    assert version["scores"]["candidate"] == pytest.approx(modeling.score("roc_auc", y, judged, None), abs=1e-6)
    assert not np.allclose(shipped, judged)
    assert (modeling.score("log_loss", y, shipped, None) < modeling.score("log_loss", y, judged, None))


def test_a_single_tree_model_ships_as_a_bag_of_fold_fits(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """No blend kept and LightGBM's winner: the version ships 5 fits of it, each without one fold of the labelled
    rows, averaged; the champion scores as that average, and the card and `runs show` say so."""
    import lightgbm as lgb

    from sluice.handlers import train as train_stage
    from sluice.ml import bundle, registry

    monkeypatch.setattr(train_stage, "_blends", lambda contract: False)  # the single-model path
    contract = with_training(sample_contract(), estimators=["lgbm"])
    runtime.store.put(f"contracts/{DATASET}.yaml", contract.to_yaml().encode())
    run = run_chain(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    assert run["best_estimator"] == "lgbm" and run["refit"]["bag"] == {"folds": 5, "seed": 42}
    assert run["refit"]["members"] == [f"member-lgbm-bag{i}" for i in range(5)]
    champion = bundle.load_model(f"{DATASET}@champion", settings=runtime.settings, store=runtime.store)
    assert champion.model_sha256 == run["refit"]["model"]["sha256"]
    holdout = pl.read_parquet(io.BytesIO(artifact(runtime.store, run, "holdout")))  # typed, with its features
    manifest = runtime.store.get_json(run["refit"]["bundle"]["key"])
    prefix = run["refit"]["bundle"]["key"].rsplit("/", 1)[0]
    boosters = [lgb.Booster(model_str=runtime.store.get(f"{prefix}/{manifest['files'][f'member-lgbm-bag{i}']['path']}")
                            .decode()) for i in range(5)]
    assert len({b.model_to_string() for b in boosters}) == 5  # five different fits
    X = champion.encoding.features(holdout)
    np.testing.assert_allclose(champion.score_features(holdout), np.mean([b.predict(X) for b in boosters], axis=0),
                               atol=1e-12)
    card = runtime.store.get(registry.ModelRegistry(runtime.store, runtime.state).card_key(DATASET, 1)).decode()
    assert "as a bag: each member fitted 5 times" in card


def test_a_refit_that_would_overrun_the_budget_is_skipped_and_the_judged_model_ships(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget is the user's: when the winner's own fit, scaled to every labelled row, would take the stage past
    1.1 x the budget, the refit is skipped with a reason the run and the card give, and the model the gate judged
    (fitted on the training rows) is what the version ships, loadable as any other."""
    from sluice.handlers import train as train_stage
    from sluice.ml import bundle, registry

    real = modeling.train

    def slow_winner(*args: Any, **kwargs: Any) -> modeling.Trained:
        trained = real(*args, **kwargs)
        trained.best_fit_s = 3600.0  # as if one fit of the winner took an hour
        return trained

    monkeypatch.setattr(train_stage.modeling, "train", slow_winner)
    monkeypatch.setattr(train_stage, "_blends", lambda contract: False)  # the single-model path
    run = run_chain(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    assert run.get("refit") is None and "no time left for the refit" in run["refit_skipped"]
    assert "training.time_budget_s" in run["refit_skipped"]  # what to do about it
    champion = bundle.load_model(f"{DATASET}@champion", settings=runtime.settings, store=runtime.store)
    assert champion.model_sha256 == run["artifacts"]["model"]["sha256"]  # the judged model, not a refit
    rows = pl.read_csv(io.BytesIO(sample_bytes())).head(50)
    np.testing.assert_array_equal(champion.predict(rows).scores, load_run(runtime.store, run).predict(rows).scores)
    card = runtime.store.get(registry.ModelRegistry(runtime.store, runtime.state).card_key(DATASET, 1)).decode()
    assert "Not refitted: no time left for the refit" in card
    monkeypatch.setenv("SLUICE_BUCKET", runtime.settings.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    from click.testing import CliRunner

    from sluice.cli import main

    shown = CliRunner().invoke(main, ["runs", "show", run["run_id"]])
    assert shown.exit_code == 0 and "ships: the evaluated model, not refitted: no time left" in shown.output


@pytest.mark.parametrize("column", ["précip mm", "temp [C]", "price, usd", "a:b", ""])
def test_a_column_name_lightgbm_would_rewrite_or_refuse_trains_and_scores(column: str) -> None:
    # vega's seattle-weather with a column renamed `précip mm`: LightGBM stored `précip_mm`, the loader refused the
    # model ("the model's features ... are not the encoding's columns") and every train attempt was dead-lettered;
    # `[`, `,` and `:` LightGBM refuses outright.
    rng = np.random.default_rng(0)
    x = rng.random(300)
    frame = pl.DataFrame({column: x, "noise": rng.random(300), "y": np.where(x > 0.5, "yes", "no")})
    spec = sample_contract().columns["mean_radius"].model_copy(update={"min": None, "max": None})
    contract = with_training(sample_contract(), time_budget_s=1, estimators=["lgbm"], n_jobs=1).model_copy(update={
        "target": "y", "features": [], "columns": {column: spec, "noise": spec, "y": sample_contract().columns[
            "diagnosis"].model_copy(update={"categories": ["no", "yes"]})}})
    encoding = modeling.Encoding.fit(frame, contract)
    trained = modeling.train(frame, encoding, contract)  # checks the stored model against FLAML's own
    predictor = modeling.Predictor(trained.model_format, trained.model_bytes, "binary", encoding)
    assert set(predictor.encoding.columns) == {column, "noise"}
    scores = predictor.score(frame)
    assert modeling.score("roc_auc", encoding.labels(frame), scores, None) > 0.9
    assert column in trained.feature_importance


@pytest.mark.slow
def test_two_searches_at_once_in_one_worker_keep_to_their_own_runs() -> None:
    """A worker runs stages on several threads; FLAML keeps the running search in module globals (flaml/tune/tune.py:
    `_runner`, `_running_trial`, `_training_iteration`), so two datasets' searches at once used to break each other:
    a StopIteration inside FLAML in one, and the other recording a configuration of the first one's learner."""
    from tests.test_linear import rows, shop

    contracts = {"lgbm": shop("binary", ["lgbm"], n_jobs=1), "linear": shop("regression", ["linear"], n_jobs=1)}
    data = {name: rows(c, 400, i) for i, (name, c) in enumerate(contracts.items())}
    results: dict[str, Any] = {}

    def search(name: str) -> None:
        contract = contracts[name]
        try:
            encoding = modeling.Encoding.fit(data[name], contract)
            results[name] = modeling.train(data[name], encoding, contract, time_budget_s=2.0)
        except Exception as error:  # reported below, with the other search's outcome
            results[name] = error

    threads = [threading.Thread(target=search, args=(name,)) for name in contracts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, trained in results.items():
        assert isinstance(trained, modeling.Trained), f"{name}: {trained!r}"
        assert trained.best_estimator == name
        learners = {json.loads(line).get("learner") for line in trained.trial_log.splitlines() if line.strip()}
        assert learners <= {name, None}, f"{name}'s trial log holds another search's trials: {learners}"
    assert "num_leaves" in results["lgbm"].best_config and "num_leaves" not in results["linear"].best_config


def test_a_training_waits_for_the_workers_other_training_then_goes_back_to_the_queue(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The train stage takes its turn (modeling.ONE_SEARCH); one that finds another training running goes back to
    the queue (deferred, not failed), instead of running beside the other search or holding a worker thread."""
    from dramatiq.errors import Retry

    from sluice.handlers import train

    assert (train.turn_retry_s(1), train.turn_retry_s(60), train.turn_retry_s(3600)) == (5, 15, 60)
    monkeypatch.setattr(train, "TURN_WAIT_S", 0.2)
    held, done = threading.Event(), threading.Event()

    def other_training() -> None:
        with modeling.ONE_SEARCH:
            held.set()
            done.wait(60)

    other = threading.Thread(target=other_training)
    other.start()
    held.wait(10)
    try:
        with pytest.raises(Retry), caplog.at_level("INFO", logger="sluice"):
            run_chain(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
        assert not [k for k in runtime.store.keys("runs/") if k.endswith("run.json")]
        # The worker's log says why it did not train now, not only the "now train" line before it (a tester saw
        # "now train" three times and nothing between)
        assert any("another training is running in this worker; back to the queue, again in" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
    finally:
        done.set()
        other.join()
    # Its turn come, the same drop's training runs (the message is re-driven as the broker would).
    [manifest] = [k for k in runtime.store.keys("features/") if k.endswith("manifest.json")]
    info = runtime.store.head(manifest)
    assert info is not None
    runtime.execute("train", ObjectCreated(runtime.settings.bucket, manifest, info.size, info.etag).to_dict())
    assert [k for k in runtime.store.keys("runs/") if k.endswith("run.json")]
