"""The feature store: transforms, point-in-time joins without leakage, labels that arrive later, online vectors."""

from __future__ import annotations

import io
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from sluice.core.runtime import Runtime
from sluice.events.s3 import ObjectCreated
from sluice.handlers.materialize import apply_transforms
from sluice.infra.online import MemoryOnline, RedisOnline
from sluice.infra.state import MemoryState
from sluice.ml.contract import ContractError, parse_contract
from sluice.ml.features import FEATURE_TIME, point_in_time_join
from sluice.ml.registry import ModelRegistry

CONTRACT = """
dataset: tx
target: fraud
task: binary
metric: roc_auc
entity: {key: customer, timestamp: ts}
labels: {timestamp: label_time, ttl_days: 10, target: {dtype: str, categories: ["0", "1"]}}
columns:
  customer: {dtype: str}
  ts: {dtype: datetime}
  amount: {dtype: float}
  country: {dtype: str, categories: [fr, it, es]}
training: {time_budget_s: 1, debounce_s: 0}
features:
  - {name: amount_sum_7d, op: window_sum, columns: [amount], days: 7}
  - {name: events_7d, op: window_count, columns: [amount], days: 7}
  - {name: amount_max_30d, op: window_max, columns: [amount], days: 30}
  - {name: amount_lag1, op: lag, columns: [amount], periods: 1}
  - {name: hour, op: hour, columns: [ts]}
  - {name: country_code, op: category_code, columns: [country]}
  - {name: log_amount, op: log1p, columns: [amount]}
"""
T0 = datetime(2026, 1, 1)


def events(n_customers: int = 40, days: int = 60, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_customers):
        risky = c % 3 == 0
        for d in sorted(rng.choice(days, size=12, replace=False)):
            rows.append({"customer": f"c{c:03d}", "ts": T0 + timedelta(days=int(d), hours=int(rng.integers(24))),
                         "amount": float(rng.gamma(2, 50 if risky else 10)),
                         "country": ["fr", "it", "es"][int(rng.integers(3))]})
    return pl.DataFrame(rows)


def labels_for(frame: pl.DataFrame, seed: int = 1, per_customer: int = 3) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for (customer,), group in frame.group_by("customer"):
        risky = int(str(customer)[1:]) % 3 == 0
        for _ in range(per_customer):
            t = group["ts"].sort()[int(rng.integers(1, group.height))] + timedelta(hours=1)
            rows.append({"customer": customer, "label_time": t,
                         "fraud": "1" if (risky and rng.random() < 0.8) or rng.random() < 0.05 else "0"})
    return pl.DataFrame(rows)


def test_windows_and_lags_see_only_the_entitys_past() -> None:
    contract = parse_contract(CONTRACT)
    f = pl.DataFrame({"customer": ["a", "a", "a", "b"], "country": ["fr"] * 4, "amount": [3.0, 1.0, 2.0, 4.0],
                      "ts": [T0 + timedelta(days=9), T0, T0 + timedelta(days=2), T0 + timedelta(days=1)]})
    out = apply_transforms(f, contract).filter(pl.col("customer") == "a")
    assert out["ts"].to_list() == [T0, T0 + timedelta(days=2), T0 + timedelta(days=9)]
    assert out["amount_sum_7d"].to_list() == [1.0, 3.0, 3.0]  # day 9's window (2, 9] excludes day 2
    assert out["events_7d"].to_list() == [1.0, 2.0, 1.0]
    assert out["amount_max_30d"].to_list() == [1.0, 2.0, 3.0]
    assert out["amount_lag1"].to_list() == [None, 1.0, 2.0]
    assert out["country_code"].to_list() == [0, 0, 0]


def test_frequency_counts_only_events_up_to_each_row() -> None:
    contract = parse_contract(CONTRACT.replace("  - {name: log_amount", "  - {name: country_freq, op: frequency, "
                                               "columns: [country]}\n  - {name: log_amount"))
    f = pl.DataFrame({"customer": ["a", "b", "a", "b"], "country": ["fr", "it", "it", "it"],
                      "amount": [1.0, 1.0, 1.0, 1.0], "ts": [T0 + timedelta(days=d) for d in (0, 1, 2, 3)]})
    out = apply_transforms(f, contract).sort("ts")
    # day 0: fr 1/1; day 1: it 1/2; day 2: it 2/3; day 3: it 3/4 (never the share over all four days)
    assert out["country_freq"].to_list() == pytest.approx([1.0, 0.5, 2 / 3, 0.75])


@pytest.mark.parametrize(("feature", "needle"), [
    ("{name: s, op: window_sum, columns: [amount]}", "needs `days`"),
    ("{name: s, op: hour, columns: [amount]}", "needs a date or datetime column"),
    ("{name: s, op: window_sum, columns: [country], days: 3}", "needs numeric columns"),
    ("{name: s, op: lag, columns: [nope], periods: 1}", "'nope', which is not a feature column"),
    ("{name: amount, op: log1p, columns: [amount]}", "would overwrite"),
    ("{name: s, op: eval, columns: [amount]}", "features.0.op"),
])
def test_feature_definitions_are_checked_at_upload(feature: str, needle: str) -> None:
    text = CONTRACT.split("features:")[0] + f"features:\n  - {feature}\n"
    with pytest.raises(ContractError) as info:
        parse_contract(text, source="tx.yaml")
    assert needle in str(info.value)
    no_entity = CONTRACT.replace("entity: {key: customer, timestamp: ts}\n", "").replace(
        "labels: {timestamp: label_time, ttl_days: 10, target: {dtype: str, categories: [\"0\", \"1\"]}}\n", "")
    with pytest.raises(ContractError, match="declare `entity`"):
        parse_contract(no_entity.replace("columns:\n", "columns:\n  fraud: {dtype: str}\n"), source="tx.yaml")


def test_point_in_time_join_never_uses_the_future_and_honours_the_ttl() -> None:
    contract = parse_contract(CONTRACT)
    feats = apply_transforms(events(), contract)
    labels = labels_for(feats)
    # Plant poison: a feature row for every label at exactly its label time and one just after it.
    poison = pl.concat([
        labels.select("customer", pl.col("label_time").alias("ts")),
        labels.select("customer", (pl.col("label_time") + timedelta(seconds=1)).alias("ts")),
    ]).with_columns(amount=pl.lit(1e9), country=pl.lit("fr"))
    poisoned = pl.concat([feats, apply_transforms(poison, contract).select(feats.columns)], how="vertical_relaxed")
    joined = point_in_time_join(labels, poisoned, contract)
    assert joined.height == labels.height
    assert (joined["amount"].fill_null(0) < 1e9).all()  # not one poisoned value leaked
    matched = joined.filter(pl.col(FEATURE_TIME).is_not_null())
    assert (matched[FEATURE_TIME] < matched["label_time"]).all()
    assert ((matched["label_time"] - matched[FEATURE_TIME]) <= timedelta(days=10)).all()
    # A label far after the entity's last event is older than the TTL: it gets no features, not stale ones.
    late = pl.DataFrame({"customer": ["c000"], "label_time": [T0 + timedelta(days=400)], "fraud": ["0"]})
    assert point_in_time_join(late, feats, contract)[FEATURE_TIME].to_list() == [None]


@pytest.fixture
def runtime(runtime: Runtime) -> Runtime:
    """The shared unit runtime, with the transactions contract."""
    runtime.store.put("contracts/tx.yaml", parse_contract(CONTRACT).to_yaml().encode())
    return runtime


def run_stage(rt: Runtime, stage: str, key: str) -> None:
    info = rt.store.head(key)
    assert info is not None, key
    rt.execute(stage, ObjectCreated(rt.settings.bucket, key, info.size, info.etag).to_dict())


def only(rt: Runtime, prefix: str, suffix: str) -> str:
    [key] = [k for k in rt.store.keys(prefix) if k.endswith(suffix)]
    return key


def csv(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_csv(buf)
    return buf.getvalue()


@pytest.mark.slow
def test_features_and_labels_dropped_separately_train_on_the_point_in_time_join(runtime: Runtime,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    raw = events(n_customers=120)
    runtime.store.put("incoming/tx/events.csv", csv(raw))
    run_stage(runtime, "validate", "incoming/tx/events.csv")
    run_stage(runtime, "features", only(runtime, "validated/tx/", "manifest.json"))
    fs_key = only(runtime, "features/tx/", "manifest.json")
    run_stage(runtime, "train", fs_key)
    assert not list(runtime.store.keys("runs/"))  # no labels yet: nothing to train on

    # Online: the latest vector of each entity.
    latest = raw.sort("ts").group_by("customer").last().filter(pl.col("customer") == "c003")
    vector = runtime.online.get("tx", "c003")
    assert vector is not None and vector["features"]["amount"] == pytest.approx(latest["amount"][0])

    labels = labels_for(apply_transforms(raw, parse_contract(CONTRACT)))
    runtime.store.put("labels/tx/batch1.csv", csv(labels))
    run_stage(runtime, "labels", "labels/tx/batch1.csv")
    run_stage(runtime, "train-labels", only(runtime, "validated-labels/tx/", "manifest.json"))
    run = runtime.store.get_json(only(runtime, "runs/tx/", "run.json"))
    assert run["label_versions"] and run["feature_set_version"] in fs_key
    from click.testing import CliRunner

    from sluice.cli import main

    monkeypatch.setenv("SLUICE_BUCKET", runtime.settings.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    shown = CliRunner().invoke(main, ["runs", "show", run["run_id"]]).output
    assert f"label versions {run['label_versions'][0][:12]}" in shown, shown  # the lineage named only the events'
    assert run["holdout"]["rows"] + run["holdout"]["train_rows"] == labels.height
    encoding = runtime.store.get_json(run["artifacts"]["encoding"]["key"])
    inputs = encoding["order"]
    assert "amount_sum_7d" in inputs and not {"customer", "ts", "label_time", FEATURE_TIME} & set(inputs)
    run_stage(runtime, "benchmark", only(runtime, "runs/tx/", "run.json"))
    run_stage(runtime, "register", only(runtime, "registry/tx/candidates/", ".candidate.json"))
    assert ModelRegistry(runtime.store, MemoryState()).alias("tx") is not None

    # Scoring: the window features come with the rows; one that is not a number leaves its row unscored, with the
    # reason (polars' cast error was a traceback, a 500 in `sluice serve`).
    from sluice.ml.bundle import load_model

    model = load_model("tx@champion", store=runtime.store, settings=runtime.settings)
    rows = apply_transforms(raw, parse_contract(CONTRACT)).head(3).to_dicts()
    rows[1]["amount_sum_7d"] = "lots"
    scored = model.predict(rows)
    assert scored.scored.tolist() == [0, 2] and [u["row"] for u in scored.unscored] == [2]
    assert "feature 'amount_sum_7d' (window_sum over the entity's history) must be a number, got lots" in \
        scored.unscored[0]["reason"]

    # Later labels: a backtest of the champion on them, recorded in the registry.
    more = labels_for(apply_transforms(raw, parse_contract(CONTRACT)), seed=7, per_customer=1)
    runtime.store.put("labels/tx/batch2.csv", csv(more))
    run_stage(runtime, "labels", "labels/tx/batch2.csv")
    [batch2] = [e for k in runtime.store.keys("ledger/tx/") if (e := runtime.store.get_json(k))["key"].endswith(
        "batch2.csv")]
    lv_key = f"validated-labels/tx/{batch2['data_version']}/data.parquet"
    run_stage(runtime, "backtest", lv_key)
    backtest = runtime.store.get_json(f"registry/tx/backtests/{lv_key.split('/')[2]}.json")
    [champion] = backtest["results"]
    assert champion["role"] == "champion" and champion["rows"] == more.height
    assert 0.0 <= champion["metrics"]["roc_auc"] <= 1.0


def test_online_store_never_goes_back_in_time(redis_url: str) -> None:
    for store in (MemoryOnline(), RedisOnline(redis_url, f"sluice-test-online-{datetime.now().timestamp()}")):
        assert store.put_many("d", "fs-2", {"e1": {"ts": "2026-01-02T00:00:00", "x": 2}}, "ts") == 1
        assert store.put_many("d", "fs-1", {"e1": {"ts": "2026-01-01T00:00:00", "x": 1}}, "ts") == 0
        got = store.get("d", "e1")
        assert got is not None and got["features"]["x"] == 2 and got["feature_set"] == "fs-2"
        assert store.get("d", "nobody") is None


def test_an_older_label_trigger_gives_way_to_the_newest(runtime: Runtime) -> None:
    raw = events(n_customers=60)
    runtime.store.put("incoming/tx/events.csv", csv(raw))
    run_stage(runtime, "validate", "incoming/tx/events.csv")
    run_stage(runtime, "features", only(runtime, "validated/tx/", "manifest.json"))
    for i, seed in enumerate((1, 2)):
        runtime.store.put(f"labels/tx/batch{i}.csv", csv(labels_for(apply_transforms(raw, parse_contract(CONTRACT)),
                                                                    seed=seed)))
        run_stage(runtime, "labels", f"labels/tx/batch{i}.csv")
    versions = {e["key"]: e["data_version"] for k in runtime.store.keys("ledger/tx/")
                if (e := runtime.store.get_json(k))["key"].startswith("labels/")}
    run_stage(runtime, "train-labels", f"validated-labels/tx/{versions['labels/tx/batch0.csv']}/manifest.json")
    assert not [k for k in runtime.store.keys("runs/") if k.endswith("run.json")]  # superseded: no run
    run_stage(runtime, "train-labels", f"validated-labels/tx/{versions['labels/tx/batch1.csv']}/manifest.json")
    [run_key] = [k for k in runtime.store.keys("runs/") if k.endswith("run.json")]
    assert sorted(runtime.store.get_json(run_key)["label_versions"]) == sorted(versions.values())
