"""Model quality: what Sluice promotes against plain FLAML, a default LightGBM and AutoGluon, at equal budget.

Six public datasets that need no download (benchmarks/quality_data.py: scikit-learn's breast cancer, wine,
digits and diabetes, and two generated ones with categorical columns, dates and missing values). Each is split
once: 20 % test rows that never reach the bucket, 80 % development rows. The development rows are dropped as a
CSV into the whole chain (embedded moto server and Dramatiq's in-memory broker, as `sluice demo` runs), with the
contract `sluice contract infer` writes for that CSV and the budget given here. The champion is then loaded with
`sluice.load_model` and scores the test rows. In the same run, on the same development rows and test rows:

- plain `flaml.AutoML` with the same budget, metric and seed, everything else its defaults (`flaml`: every core)
- the same with `n_jobs=1` (`flaml-1`): Sluice fits small data on one thread, which on a loaded machine runs far
  more trials than every core does, so the goal is judged against the better of the two
- `lightgbm.LGBMClassifier()` / `LGBMRegressor()` with default settings
- AutoGluon (`TabularPredictor`, medium quality, same time limit), when a Python with `autogluon.tabular` is given
  with --autogluon-python (it runs in its own virtualenv: its pins conflict with Sluice's)

Sluice's columns: `sluice` is the shipped model (the refit on train + holdout), `sluice-eval` the same
configuration fitted on the training rows alone (what the gate judged), to show what the refit adds.

    .venv/bin/python benchmarks/model_quality.py [--budget 30] [--datasets wine churn] [--repeats 3] \
        [--autogluon-python /path/to/venv/bin/python] [--estimators lgbm xgboost] [--n-jobs 1]

--variant NAME:KEY=VALUE[;KEY=VALUE] (repeatable) drops each split once more per variant, as its own dataset, with
the contract's estimators (`estimators=lgbm+linear+xgboost`) or the train stage's share of the budget kept from the
search for the blend and refit (`blend_share=0.3`) changed: a column `sluice[NAME]` per variant, side by side with
the defaults and the baselines on the same splits, in the same run.

--repeats N runs each dataset on N seeded test splits (each dropped as its own dataset, so no split trains on
another's test rows) and the table shows each system's mean: wine's 36 test rows swing from split to split.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.quality_data import Dataset, all_datasets, extra_datasets
from sluice.ml import modeling
from sluice.ml.contract import HIGHER_IS_BETTER, contract_key, infer_contract, parse_contract
from sluice.ml.validation import read_sample

TEST_FRACTION = 0.2
SPLIT_SEED = 2026
AUTOGLUON_SCRIPT = """
import json, sys, time
import pandas as pd
from autogluon.tabular import TabularPredictor
folder, label, problem, metric, budget = sys.argv[1:6]
train, test = pd.read_parquet(folder + "/dev.parquet"), pd.read_parquet(folder + "/test.parquet")
t = time.perf_counter()
p = TabularPredictor(label=label, problem_type=problem, eval_metric=metric, path=folder + "/ag", verbosity=0)
p.fit(train, time_limit=float(budget), presets="medium_quality")
fit_s = time.perf_counter() - t
X = test.drop(columns=[label])
if problem == "regression":
    out = {"values": p.predict(X).tolist()}
else:
    proba = p.predict_proba(X)
    out = {"classes": [str(c) for c in proba.columns], "proba": proba.to_numpy().tolist()}
out["fit_s"] = fit_s
json.dump(out, open(folder + "/pred.json", "w"))
"""
AG_METRIC = {"roc_auc": "roc_auc", "log_loss": "log_loss", "rmse": "root_mean_squared_error"}
AG_PROBLEM = {"binary": "binary", "multiclass": "multiclass", "regression": "regression"}


def split(frame: pl.DataFrame, seed: int = SPLIT_SEED) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Development and test rows: a seeded shuffle, the last 20 % held out for the test."""
    order = np.random.default_rng(seed).permutation(frame.height)
    n_test = round(frame.height * TEST_FRACTION)
    return frame[np.sort(order[n_test:])], frame[np.sort(order[:n_test])]


def csv_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_csv(buffer)
    return buffer.getvalue()


def plain_pandas(frame: pl.DataFrame, target: str) -> pd.DataFrame:
    """Features as a data scientist hands them to FLAML or LightGBM: text as categories, dates as datetimes."""
    pdf = frame.drop(target).to_pandas()
    for name in pdf.columns:
        if frame.schema[name] == pl.Utf8:
            pdf[name] = pdf[name].astype("category")
        elif str(pdf[name].dtype).startswith("datetime") or frame.schema[name] == pl.Date:
            pdf[name] = pd.to_datetime(pdf[name])
    return pdf


def numeric_dates(pdf: pd.DataFrame) -> pd.DataFrame:
    """LightGBM takes no datetimes: days since the epoch."""
    out = pdf.copy()
    for name in out.columns:
        if str(out[name].dtype).startswith("datetime"):
            out[name] = (out[name] - pd.Timestamp("1970-01-01")).dt.days
    return out


def labels(frame: pl.DataFrame, target: str, classes: list[str] | None) -> np.ndarray:
    if classes is None:
        return frame[target].cast(pl.Float64).to_numpy()
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[str(v)] for v in frame[target].to_list()])


def run_chain(data: Dataset, dev: pl.DataFrame, settings: Any, store: Any, budget: float,
              estimators: list[str] | None, timeout: float, n_jobs: int | None = None, suffix: str = ""
              ) -> dict[str, Any]:
    """Drop the development CSV into the running chain (as its own dataset: `suffix` tells repeats apart, so no
    repeat trains on another's test rows); wait for the registered version."""
    from sluice.infra.state import MemoryState
    from sluice.ml.registry import ModelRegistry

    name = data.name.split()[0].replace("_", "-") + suffix
    raw = csv_bytes(dev)
    contract = infer_contract(read_sample("dev.csv", raw), name, data.target, time_budget_s=budget)
    contract = parse_contract(contract.to_yaml())  # exactly what `contract infer` + `contract put` would upload
    overrides: dict[str, Any] = {"estimators": estimators} if estimators else {}
    if n_jobs is not None:
        overrides["n_jobs"] = n_jobs
    if overrides:
        contract = contract.model_copy(update={"training": contract.training.model_copy(update=overrides)})
    store.put(contract_key(name), contract.to_yaml().encode())
    t0 = time.perf_counter()
    store.put(f"incoming/{name}/dev.csv", raw)
    registry = ModelRegistry(store, MemoryState())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        versions = registry.versions(name)
        # The version document is written before the champion alias: wait for both.
        if versions and (versions[0]["decision"] != "promote" or registry.alias(name) is not None):
            break
        time.sleep(0.5)
    else:
        raise RuntimeError(f"{name}: no registered version within {timeout:.0f}s; see `sluice status`")
    drop_to_version = time.perf_counter() - t0
    [version] = versions
    run = store.get_json(version["run_key"])
    return {"name": name, "contract": contract, "version": version, "run": run, "drop_to_version_s": drop_to_version}


def sluice_scores(chain: dict[str, Any], test: pl.DataFrame, target: str, store: Any, settings: Any
                  ) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """The shipped model through the public loader, and the holdout-evaluated one, on the test rows."""
    import sluice
    from sluice.ml.bundle import load_version

    version = chain["version"]
    ref = f"{chain['name']}@champion" if version["decision"] == "promote" else f"{chain['name']}:{version['version']}"
    model = sluice.load_model(ref, settings=settings, store=store)
    result = model.predict(test.drop(target))
    assert result.unscored == [], result.unscored[:3]
    evaluated = load_version(store, version, evaluated=True).predict(test.drop(target))
    return result.scores, evaluated.scores, model.classes


def flaml_scores(dev: pl.DataFrame, test: pl.DataFrame, data: Dataset, metric: str, budget: float,
                 classes: list[str] | None, n_jobs: int = -1) -> tuple[np.ndarray, float]:
    """Plain FLAML: its defaults but for the budget, metric, seed and `n_jobs` (-1, FLAML's default: every core)."""
    from flaml.automl import AutoML

    automl = AutoML()
    X, y = plain_pandas(dev, data.target), labels(dev, data.target, classes)
    t = time.perf_counter()
    automl.fit(X_train=X, y_train=y, task="regression" if data.task == "regression" else "classification",
               metric=metric, time_budget=budget, seed=42, verbose=0, n_jobs=n_jobs)
    fit_s = time.perf_counter() - t
    print(f"  plain FLAML (n_jobs={n_jobs}) on {data.name}: best {automl.best_estimator} {automl.best_config}",
          flush=True)
    Xt = plain_pandas(test, data.target)
    scores = automl.predict(Xt) if data.task == "regression" else automl.predict_proba(Xt)
    return _binary(np.asarray(scores), data.task), fit_s


def lgbm_scores(dev: pl.DataFrame, test: pl.DataFrame, data: Dataset,
                classes: list[str] | None) -> tuple[np.ndarray, float]:
    import lightgbm as lgb

    X = numeric_dates(plain_pandas(dev, data.target))
    Xt = numeric_dates(plain_pandas(test, data.target))
    for name in X.columns:  # the test rows' categories in the training rows' order
        if isinstance(X[name].dtype, pd.CategoricalDtype):
            Xt[name] = pd.Categorical(Xt[name].astype(object), categories=X[name].cat.categories)
    y = labels(dev, data.target, classes)
    model = lgb.LGBMRegressor(verbose=-1) if data.task == "regression" else lgb.LGBMClassifier(verbose=-1)
    t = time.perf_counter()
    model.fit(X, y)
    fit_s = time.perf_counter() - t
    scores = model.predict(Xt) if data.task == "regression" else model.predict_proba(Xt)
    return _binary(np.asarray(scores), data.task), fit_s


def autogluon_scores(python: str, dev: pl.DataFrame, test: pl.DataFrame, data: Dataset, metric: str,
                     budget: float, classes: list[str] | None) -> tuple[np.ndarray, float]:
    with tempfile.TemporaryDirectory() as folder:
        dev.to_pandas().to_parquet(f"{folder}/dev.parquet")
        test.to_pandas().to_parquet(f"{folder}/test.parquet")
        subprocess.run([python, "-c", AUTOGLUON_SCRIPT, folder, data.target, AG_PROBLEM[data.task],
                        AG_METRIC[metric], str(budget)], check=True, timeout=budget * 4 + 300,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True)
        out = json.loads(Path(f"{folder}/pred.json").read_text())
    if classes is None:
        return np.asarray(out["values"]), out["fit_s"]
    proba = np.asarray(out["proba"])
    order = [out["classes"].index(c) for c in classes]
    return _binary(proba[:, order], data.task), out["fit_s"]


def _binary(scores: np.ndarray, task: str) -> np.ndarray:
    return scores[:, 1] if task == "binary" and scores.ndim == 2 else scores


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--budget", type=float, default=30.0, help="seconds, the same for every AutoML")
    parser.add_argument("--datasets", nargs="*",
                        help="names (first word) to run; default the six (diamonds only by name)")
    parser.add_argument("--autogluon-python", help="a Python with autogluon.tabular installed")
    parser.add_argument("--estimators", nargs="*", help="override the contract's estimators (to measure)")
    parser.add_argument("--n-jobs", type=int, help="override the contract's training.n_jobs (to measure)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="seeded test splits per dataset; the table shows each system's mean (small test sets "
                             "swing from split to split)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[;KEY=VALUE]",
                        help="also run the chain with estimators=a+b+c and/or blend_share=F (to measure defaults)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--extra", help="a folder of more datasets: DIR/NAME.parquet for each NAME that "
                        'DIR/datasets.json lists as {"NAME": {"target": ..., "task": ...}} (e.g. statsmodels\' and '
                        "vega_datasets' offline tables, exported in a virtualenv of their own); run by name")
    args = parser.parse_args()
    args.variants = dict(parse_variant(v) for v in args.variant)

    import logging

    from moto.server import ThreadedMotoServer

    from sluice.core.settings import ENV_ENDPOINT_URL, Settings
    from sluice.handlers import build_pipeline
    from sluice.infra.provision import provision
    from sluice.infra.store import S3Store
    from sluice.service import start

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ[ENV_ENDPOINT_URL] = f"http://{host}:{port}"
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    settings = replace(Settings.from_env(), broker_url="memory://", bucket="sluice-quality", min_backoff_ms=200)
    app = build_pipeline()
    provision(settings, app.routes)
    service = start(settings, app=app)
    store = S3Store(settings)
    load0 = os.getloadavg()
    rows: list[dict[str, Any]] = []
    try:
        for data in all_datasets() + (extra_datasets() + folder_datasets(args.extra) if args.datasets else []):
            if args.datasets and data.name.split()[0] not in args.datasets:
                continue
            for repeat in range(args.repeats):
                dev, test = split(data.frame, seed=SPLIT_SEED + repeat)
                row = measure(data, dev, test, repeat, args, settings, store)
                rows.append(row)
                print(json.dumps(row, default=str), flush=True)
    finally:
        service.stop()
        server.stop()
    report(rows, args, load0)


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """`xgb:estimators=lgbm+linear+xgboost;blend_share=0.3` -> ("xgb", {"estimators": [...], "blend_share": 0.3})."""
    name, _, spec = text.partition(":")
    out: dict[str, Any] = {}
    for item in filter(None, spec.split(";")):
        key, _, value = item.partition("=")
        if key == "estimators":
            out[key] = value.split("+")
        elif key == "blend_share":
            out[key] = float(value)
        else:
            raise SystemExit(f"--variant {text}: unknown key {key!r} (estimators, blend_share)")
    if not name or not out:
        raise SystemExit(f"--variant {text}: expected NAME:KEY=VALUE[;KEY=VALUE]")
    return name, out


def run_variant(data: Dataset, dev: pl.DataFrame, test: pl.DataFrame, repeat: int, name: str,
                variant: dict[str, Any], args: argparse.Namespace, settings: Any, store: Any
                ) -> tuple[float, float]:
    """The chain once more on the same split, with a variant's settings: (its shipped model's test score, stage s)."""
    from sluice.handlers import train as train_stage

    share = train_stage.BLEND_SHARE
    train_stage.BLEND_SHARE = variant.get("blend_share", share)  # the chain runs in this process
    try:
        chain = run_chain(data, dev, settings, store, args.budget, variant.get("estimators", args.estimators),
                          args.timeout, args.n_jobs, suffix=f"-{name}-r{repeat}")
    finally:
        train_stage.BLEND_SHARE = share
    shipped, _, classes = sluice_scores(chain, test, data.target, store, settings)
    return (modeling.score(chain["contract"].metric, labels(test, data.target, classes), shipped,
                           len(classes) if classes else None), chain["run"]["durations_s"]["total"])


def folder_datasets(folder: str | None) -> list[Dataset]:
    """The datasets of --extra."""
    if not folder:
        return []
    meta = json.loads((Path(folder) / "datasets.json").read_text())
    return [Dataset(name, m["target"], m["task"], pl.read_parquet(Path(folder) / f"{name}.parquet"))
            for name, m in meta.items()]


def measure(data: Dataset, dev: pl.DataFrame, test: pl.DataFrame, repeat: int, args: argparse.Namespace,
            settings: Any, store: Any) -> dict[str, Any]:
    """One dataset, one split: the chain's champion, plain FLAML, default LightGBM (and AutoGluon) on the test rows."""
    chain = run_chain(data, dev, settings, store, args.budget, args.estimators, args.timeout, args.n_jobs,
                      suffix=f"-r{repeat}" if repeat else "")
    contract, run = chain["contract"], chain["run"]
    metric = contract.metric
    shipped, evaluated, classes = sluice_scores(chain, test, data.target, store, settings)
    y = labels(test, data.target, classes)
    k = len(classes) if classes else None
    row: dict[str, Any] = {
        "dataset": data.name, "repeat": repeat, "task": data.task, "metric": metric,
        "rows": f"{dev.height}+{test.height}", "decision": chain["version"]["decision"],
        "estimator": run["best_estimator"], "config": run["best_config"], "trials": run["trials"]["count"],
        "n_jobs": contract.training.n_jobs, "estimators": contract.training.estimators,
        "train_stage_s": run["durations_s"]["total"], "drop_to_version_s": chain["drop_to_version_s"],
        "durations": run["durations_s"], "refit_s": (run.get("refit") or {}).get("fit_s"),
        "leaks": run.get("leakage", {}).get("columns", []), "blend": run.get("blend"),
        "sluice": modeling.score(metric, y, shipped, k), "sluice-eval": modeling.score(metric, y, evaluated, k),
    }
    for name, variant in args.variants.items():
        row[f"sluice[{name}]"], row[f"sluice[{name}]_s"] = run_variant(data, dev, test, repeat, name, variant,
                                                                       args, settings, store)
    f_scores, row["flaml_s"] = flaml_scores(dev, test, data, metric, args.budget, classes)
    row["flaml"] = modeling.score(metric, y, f_scores, k)
    f1_scores, row["flaml-1_s"] = flaml_scores(dev, test, data, metric, args.budget, classes, n_jobs=1)
    row["flaml-1"] = modeling.score(metric, y, f1_scores, k)
    l_scores, row["lgbm_s"] = lgbm_scores(dev, test, data, classes)
    row["lgbm"] = modeling.score(metric, y, l_scores, k)
    if args.autogluon_python:
        try:
            a_scores, row["autogluon_s"] = autogluon_scores(args.autogluon_python, dev, test, data, metric,
                                                            args.budget, classes)
            row["autogluon"] = modeling.score(metric, y, a_scores, k)
        except (subprocess.SubprocessError, OSError) as exc:
            print(f"  AutoGluon failed on {data.name}: {exc.__class__.__name__}", flush=True)
            row["autogluon"] = float("nan")
    return row


def report(rows: list[dict[str, Any]], args: argparse.Namespace, load0: tuple[float, float, float]) -> None:
    """One line per dataset: each system's test score (the mean over the repeats' splits), and whether Sluice is at
    least as good as the best of plain FLAML (either thread setting) and default LightGBM on that mean (and on how
    many single splits)."""
    columns = ["sluice", "sluice-eval", *(f"sluice[{v}]" for v in args.variants), "flaml", "flaml-1", "lgbm",
               *(["autogluon"] if args.autogluon_python else [])]
    print(f"\nbudget {args.budget:g}s; test scores on rows never dropped (↑ higher is better, ↓ lower)"
          + (f"; each the mean over {args.repeats} seeded test splits" if args.repeats > 1 else ""))
    head = f"{'dataset':20} {'metric':10} {'rows':>11} " + " ".join(f"{c[-11:]:>11}" for c in columns)
    print(head + f" {'best est.':>14} {'train s':>8} {'beats both':>10}")
    wins = 0
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    for name in names:
        group = [r for r in rows if r["dataset"] == name]
        first = group[0]
        hib = HIGHER_IS_BETTER[first["metric"]]
        mean = {c: float(np.mean([r[c] for r in group])) for c in columns}
        ok = _at_least(mean["sluice"], [mean["flaml"], mean["flaml-1"], mean["lgbm"]], hib)
        single = sum(_at_least(r["sluice"], [r["flaml"], r["flaml-1"], r["lgbm"]], hib) for r in group)
        wins += ok
        arrow = "↑" if hib else "↓"
        learners = ",".join(sorted({r["estimator"] for r in group}))
        verdict = ("yes" if ok else "NO") + (f" {single}/{len(group)}" if len(group) > 1 else "")
        print(f"{name[:20]:20} {first['metric'] + ' ' + arrow:10} {first['rows']:>11} "
              + " ".join(f"{mean[c]:11.4f}" for c in columns)
              + f" {learners[:14]:>14} {max(r['train_stage_s'] for r in group):8.1f} {verdict:>10}")
    print(f"\nSluice at least as good as the best of plain FLAML (every core or one thread) and default LightGBM "
          f"on {wins} of {len(names)}.")
    gains = [_error_gain(r["sluice"], r, HIGHER_IS_BETTER[r["metric"]]) for r in rows]
    print(f"Split by split: at least as good as the best of the three on {sum(g >= 0 for g in gains)} of "
          f"{len(rows)}; its error (1 - ROC AUC, log loss, RMSE) relative to that best's: median "
          f"{-100 * float(np.median(gains)):+.2f} %, mean {-100 * float(np.mean(gains)):+.2f} % (negative: Sluice's "
          "is lower; the best of three baselines is picked after the fact on each split).")
    # The same bar for every system: at least as good, on the mean, as the best of the others (FLAML's two thread
    # settings are one system: neither has to beat the other).
    systems = ["sluice", "flaml", "flaml-1", "lgbm"]
    cleared = []
    for system in systems:
        count = 0
        for name in names:
            group = [r for r in rows if r["dataset"] == name]
            mean = {c: float(np.mean([r[c] for r in group])) for c in systems}
            others = [mean[c] for c in systems if c.split("-")[0] != system.split("-")[0]]
            count += _at_least(mean[system], others, HIGHER_IS_BETTER[group[0]["metric"]])
        cleared.append(f"{system} {count}")
    print(f"The same bar for each system (at least as good as the best of the others on the mean): "
          f"{', '.join(cleared)} of {len(names)}.")
    for variant in args.variants:
        column = f"sluice[{variant}]"
        met = better = worse = 0
        for name in names:
            group = [r for r in rows if r["dataset"] == name]
            hib = HIGHER_IS_BETTER[group[0]["metric"]]
            mean = {c: float(np.mean([r[c] for r in group])) for c in (column, "sluice", "flaml", "flaml-1", "lgbm")}
            met += _at_least(mean[column], [mean["flaml"], mean["flaml-1"], mean["lgbm"]], hib)
            better += mean[column] != mean["sluice"] and _at_least(mean[column], [mean["sluice"]], hib)
            worse += mean[column] != mean["sluice"] and not _at_least(mean[column], [mean["sluice"]], hib)
        splits = sum(_at_least(r[column], [r["sluice"]], HIGHER_IS_BETTER[r["metric"]]) and r[column] != r["sluice"]
                     for r in rows)
        print(f"{column}: at least as good as the best baseline on {met} of {len(names)}; against the defaults "
              f"better on the mean on {better}, worse on {worse} (better on {splits} of {len(rows)} splits); "
              f"{args.variants[variant]}")
    print(f"load average at start {load0[0]:.1f}, at end {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))


def _error_gain(ours: float, row: dict[str, Any], higher_is_better: bool) -> float:
    """How much lower Sluice's error is than the best baseline's on one split, relative to it (> 0: better)."""
    baselines = [row["flaml"], row["flaml-1"], row["lgbm"]]
    best = max(baselines) if higher_is_better else min(baselines)
    ours_error, best_error = (1 - ours, 1 - best) if higher_is_better else (ours, best)
    return (best_error - ours_error) / best_error if best_error else 0.0


def _at_least(ours: float, baselines: list[float], higher_is_better: bool) -> bool:
    return ours >= max(baselines) if higher_is_better else ours <= min(baselines)

if __name__ == "__main__":
    main()
