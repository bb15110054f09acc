"""How many folds should the blend choose on? Fold policies side by side on the same search, scored on test rows.

For each dataset of benchmarks/model_quality.py and each seeded test split, the train stage's steps without the
chain: the contract `contract infer` writes, the holdout split, one FLAML search (`--search` seconds) and its
members (ml/blend.py). Then, on those same members, each fold policy chooses what ships (a blend, a member alone
or the search's winner), the choice is refitted on every development row, as the stage's refit does, and scored on
the test rows. Only the choice differs between the columns; the search is shared, so its luck is too.

    .venv/bin/python benchmarks/blend_folds.py [--repeats 3] [--search 6] [--datasets wine diabetes]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.base import clone

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.model_quality import SPLIT_SEED, csv_bytes, folder_datasets, split
from benchmarks.quality_data import all_datasets
from sluice.ml import blend, modeling
from sluice.ml.contract import HIGHER_IS_BETTER, infer_contract, parse_contract
from sluice.ml.features import row_key_columns
from sluice.ml.transforms import apply_transforms
from sluice.ml.validation import read_sample

# name -> fold count for `n` training rows (None: the rule in ml/blend.py as checked out)
POLICIES: dict[str, Any] = {"5 folds": (lambda n: 5, False, False), "5 window": (lambda n: 5, True, False),
                            "5 widen": (lambda n: 5, True, True)}
if os.environ.get("BLEND_FOLDS_TEN"):  # ten folds too (twice the fits; digits takes minutes on a loaded machine)
    POLICIES.update({"10 folds": (lambda n: 10, False, False), "10 window": (lambda n: 10, True, False)})


def shipped(chosen: blend.Blend, templates: dict[str, Any], X: Any, y: np.ndarray, Xt: Any, task: str
            ) -> np.ndarray:
    """What the stage would ship, refitted on every development row, scored on the test rows."""
    if chosen.kept:
        used = [(n, w) for n, w in zip(chosen.learners, chosen.weights, strict=True) if w > 0]
    else:
        used = [(next(iter(templates)), 1.0)]
    return blend.combine([blend.predict(clone(templates[n]).fit(X, y), Xt, task) for n, _ in used],
                         [w for _, w in used])


def bagged(chosen: blend.Blend, templates: dict[str, Any], X: Any, y: np.ndarray, Xt: Any, task: str, seed: int
           ) -> np.ndarray:
    """The same choice with its tree members bagged (ml/modeling.BAG_FOLDS): each fitted once per seeded fold of the
    development rows, on all rows but that fold, averaged; linear members once on every row. The stage bags a single
    tree model only: this column is the measurement that decided against bagging blends."""
    if chosen.kept:
        used = [(n, w) for n, w in zip(chosen.learners, chosen.weights, strict=True) if w > 0]
    else:
        used = [(next(iter(templates)), 1.0)]
    splits = blend.folds(y, task != "regression", seed, modeling.BAG_FOLDS)
    if len(splits) < 2:
        return shipped(chosen, templates, X, y, Xt, task)
    everything = os.environ.get("BAG_EVERY_MEMBER")  # linear members bagged too, as first measured
    fits = [(n, w / len(splits), rows) for n, w in used for rows, _ in splits
            if everything or blend.learner_of(n) in modeling.BAGGED_LEARNERS]
    fits += [(n, w, np.arange(len(y))) for n, w in used
             if not everything and blend.learner_of(n) not in modeling.BAGGED_LEARNERS]
    return blend.combine([blend.predict(clone(templates[n]).fit(X.iloc[rows], y[rows]), Xt, task)
                          for n, _, rows in fits], [w for _, w, _ in fits])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--search", type=float, default=6.0, help="seconds of FLAML search per split")
    parser.add_argument("--datasets", nargs="*")
    parser.add_argument("--extra", help="more datasets, as benchmarks/model_quality.py --extra takes them")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    load0 = os.getloadavg()
    table: dict[str, dict[str, list[float]]] = {}
    for data in all_datasets() + folder_datasets(args.extra):
        short = data.name.split()[0]
        if args.datasets and short not in args.datasets:
            continue
        for repeat in range(args.repeats):
            dev, test = split(data.frame, SPLIT_SEED + repeat)
            contract = parse_contract(infer_contract(read_sample("dev.csv", csv_bytes(dev)), short, data.target,
                                                     time_budget_s=10).to_yaml())
            frame = apply_transforms(read_sample("dev.csv", csv_bytes(dev)), contract)
            test_frame = apply_transforms(read_sample("test.csv", csv_bytes(test)), contract)
            mask = modeling.holdout_mask(frame.select(row_key_columns(contract, frame)),
                                         contract.training.holdout_fraction, contract.training.seed)
            train, holdout = frame.filter(pl.Series(~mask)), frame.filter(pl.Series(mask))
            encoding = modeling.Encoding.fit(train, contract)
            trained = modeling.train(train, encoding, contract, time_budget_s=args.search)
            X, y = encoding.features(train), encoding.labels(train)
            y_h = encoding.labels(holdout)
            known = y_h >= 0
            Xh = encoding.features(holdout.filter(pl.Series(known)))
            Xa, ya = encoding.features(frame), encoding.labels(frame)
            Xt, yt = encoding.features(test_frame), encoding.labels(test_frame)
            ka, kt = ya >= 0, yt >= 0
            k = len(encoding.classes) if encoding.classes else None
            row = table.setdefault(short, {})
            alone = {}
            for n, tpl in trained.templates.items():
                alone[n] = blend.predict(clone(tpl).fit(Xa[ka], ya[ka]), Xt[kt], contract.task)
            even = blend.combine(list(alone.values()), [1 / len(alone)] * len(alone))
            print(f"{short:14} r{repeat} each member alone on test: "
                  + str({n: round(modeling.score(contract.metric, yt[kt], v, k), 4) for n, v in alone.items()})
                  + f" even blend of all {modeling.score(contract.metric, yt[kt], even, k):.4f}", flush=True)
            for name, policy in POLICIES.items():
                saved = blend.fold_count, blend.WINDOW, blend.WIDEN
                blend.fold_count, blend.WINDOW, blend.WIDEN = policy  # type: ignore[assignment]
                try:
                    t = time.perf_counter()
                    chosen = blend.build(trained.templates, X, y, Xh, y_h[known], task=contract.task,
                                         metric=contract.metric, n_classes=k, seed=contract.training.seed,
                                         first_is_winner=trained.best_estimator in trained.templates)
                    seconds = time.perf_counter() - t
                finally:
                    blend.fold_count, blend.WINDOW, blend.WIDEN = saved
                scores = shipped(chosen, trained.templates, Xa[ka], ya[ka], Xt[kt], contract.task)
                value = modeling.score(contract.metric, yt[kt], scores, k)
                row.setdefault(name, []).append(value)
                what = ("+".join(f"{n}:{w:g}" for n, w in zip(chosen.learners, chosen.weights, strict=True) if w)
                        if chosen.kept else f"search's {trained.best_estimator}")
                print(f"{short:14} r{repeat} {name:9} {value:9.4f} {seconds:6.2f}s folds={chosen.folds:<3} {what}  "
                      f"oof={ {n: round(v, 4) for n, v in chosen.oof.items()} }", flush=True)
                if name == "5 widen":  # the policy the stage runs: its choice shipped as a bag, too
                    bag = modeling.score(contract.metric, yt[kt], bagged(chosen, trained.templates, Xa[ka], ya[ka],
                                                                         Xt[kt], contract.task,
                                                                         contract.training.seed), k)
                    row.setdefault("5 widen bag", []).append(bag)
                    print(f"{short:14} r{repeat} {'  as a bag':9} {bag:9.4f}", flush=True)
    names = [*POLICIES, "5 widen bag"]
    print(f"\n{'dataset':14} " + " ".join(f"{n:>11}" for n in names) + f"   (test score, mean of {args.repeats})")
    for short, row in table.items():
        task = next(d for d in all_datasets() + folder_datasets(args.extra) if d.name.split()[0] == short).task
        better = sum((b > a) if task == "binary" else (b < a) for a, b in zip(row["5 widen"], row["5 widen bag"],
                                                                             strict=True))
        print(f"{short:14} " + " ".join(f"{np.mean(row[n]):11.4f}" for n in names)
              + f"   {task}; the bag better on {better} of {len(row['5 widen'])} splits")
    print(f"load average at start {load0[0]:.1f}, at end {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores); "
          f"higher is better for ROC AUC: {HIGHER_IS_BETTER['roc_auc']}")


if __name__ == "__main__":
    main()
