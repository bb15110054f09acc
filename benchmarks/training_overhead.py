"""Framework overhead of the training stage: the stage's wall time minus the model work (FLAML's search, the blend's
fits, the refit's fit).

Runs Sluice's train stage (handlers/train.py through the runtime, against moto's server over HTTP, as in
production against S3) on the bundled dataset and on a larger synthetic one, with a 10 s budget, and reads
the stage's durations from the run record. The goal: overhead under 5 % of the stage.

    .venv/bin/python benchmarks/training_overhead.py [--budget 10] [--repeats 3] [--cold] [--against REF]

With `--against REF` (a git ref, e.g. main), the same runs are made with REF's code as well, alternating one run of
each in fresh processes (each with its own moto server), and both are printed with the ratios: the baseline side
by side, at the same load.

The stage splits three ways, from the run's `durations_s`: FLAML's search (`flaml_fit`), the other model work
(`blend_fit`: the blend's out-of-fold fits; `refit_fit`: the refit's own fit on every labelled row), and the
framework: everything else, reported as a share of the stage. The stage's record ends before the run's environment,
trace links, the ledger entry and the span; a second line times the whole handler from outside
(`runtime.execute`) and gives the framework's share of that. The framework part splits further: `prepare`
(contract, inputs, reading the rows, the holdout split, the encoding, the leakage check), `around fit` (encoding
the frame for FLAML, exporting and checking the stored model), `store` (bundles and their verification, holdout
scores and metrics, Parquet, drift profile, plots, uploads, the refit's export and check). A first, untimed
training pays the imports, as a worker does once, unless `--cold`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import polars as pl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--synthetic-rows", type=int, default=100_000)
    parser.add_argument("--cold", action="store_true", help="Time the process's first training too (imports).")
    parser.add_argument("--against", metavar="REF", help="Also run REF's code (a git ref), alternating, and compare.")
    parser.add_argument("--child", metavar="TREE", help=argparse.SUPPRESS)  # run TREE's sluice, print JSON
    args = parser.parse_args()
    if args.against:
        return compare(args)
    if args.child:
        use_tree(args.child)

    import logging

    from dramatiq.brokers.stub import StubBroker
    from moto.server import ThreadedMotoServer
    from sklearn.datasets import make_classification

    from sluice.core.settings import Settings
    from sluice.events.s3 import ObjectCreated
    from sluice.handlers import build_pipeline
    from sluice.infra.provision import provision
    from sluice.infra.state import MemoryState
    from sluice.ml.contract import contract_key, infer_contract
    from sluice.service import build_runtime

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    bundled = (Path(__file__).parents[1] / "sluice" / "data" / "breast_cancer.csv").read_bytes()
    X, y = make_classification(n_samples=args.synthetic_rows, n_features=20, n_informative=8, random_state=0)
    synthetic = pl.DataFrame(X, schema=[f"x{i}" for i in range(20)]).with_columns(
        target=pl.Series(y).cast(pl.Utf8))
    buf = io.BytesIO()
    synthetic.write_csv(buf)
    cases = {"breast_cancer (569 rows)": (bundled, "diagnosis"),
             f"synthetic ({args.synthetic_rows:,} rows x 20)": (buf.getvalue(), "target")}

    def run_once(data: bytes, target: str, budget: float) -> dict[str, float]:
        settings = replace(Settings(), bucket=f"bench-{uuid.uuid4().hex[:8]}", broker_url="memory://",
                           endpoint_url=f"http://{host}:{port}")
        provision(settings, build_pipeline().routes)
        rt = build_runtime(settings, build_pipeline(), broker=StubBroker(), state=MemoryState())
        contract = infer_contract(pl.read_csv(io.BytesIO(data)), "bench", target, budget, debounce_s=0)
        rt.store.put(contract_key("bench"), contract.to_yaml().encode())
        rt.store.put("incoming/bench/data.csv", data)
        for stage, prefix in (("validate", "incoming/"), ("features", "validated/"), ("train", "features/")):
            [key] = [k for k in rt.store.keys(prefix) if k.endswith((".csv", "manifest.json"))]
            info = rt.store.head(key)
            assert info is not None
            started = time.perf_counter()
            rt.execute(stage, ObjectCreated(settings.bucket, key, info.size, info.etag).to_dict())
            handler_s = time.perf_counter() - started  # the train stage's last: the whole handler, as dispatched
        [run_key] = [k for k in rt.store.keys("runs/") if k.endswith("run.json")]
        run = rt.store.get_json(run_key)
        durations: dict[str, float] = run["durations_s"]
        durations["handler"] = handler_s
        if "refit_fit" not in durations:  # runs of code before the key: the refit records its fit time itself
            durations["refit_fit"] = (run.get("refit") or {}).get("fit_s", 0.0)
        if "blend_fit" not in durations:  # and the blend's time, with its export and check (counted as model work)
            durations["blend_fit"] = durations.get("blend", 0.0)
        return durations

    try:
        if not args.cold:  # a worker pays its imports (FLAML, LightGBM, matplotlib) once, on its first training
            run_once(bundled, "diagnosis", 1.0)
        results = {name: [run_once(data, target, args.budget) for _ in range(args.repeats)]
                   for name, (data, target) in cases.items()}
    finally:
        server.stop()
    if args.child:
        print("RESULTS " + json.dumps(results))
        return
    report({"this checkout": results}, args)


def report(trees: dict[str, dict[str, list[dict[str, float]]]], args: argparse.Namespace) -> None:
    """The table, one block per code tree, and the ratios to the first tree's when there are two."""
    runs = len(next(iter(next(iter(trees.values())).values())))
    print(f"{'dataset':32} {'stage s':>8} {'search s':>9} {'model s':>8} {'framework s':>12} {'overhead %':>11} "
          f"{'prepare':>8} {'around fit':>11} {'store':>7}  (median of {runs}, budget {args.budget:g}s"
          f"{', cold' if args.cold else ', warm worker'}; model = blend and refit fits)")
    medians: dict[str, dict[str, dict[str, float]]] = {}
    for tree, results_by_case in trees.items():
        if len(trees) > 1:
            print(f"-- {tree}")
        for name, results in results_by_case.items():

            def median(f: Callable[[dict[str, float]], float], results: list[dict[str, float]] = results) -> float:
                return statistics.median(f(r) for r in results)

            def model(r: dict[str, float]) -> float:
                return r.get("blend_fit", 0.0) + r.get("refit_fit", 0.0)

            stage, fit = median(lambda r: r["total"]), median(lambda r: r["flaml_fit"])
            framework = median(lambda r: r["total"] - r["flaml_fit"] - model(r))
            over = median(lambda r: (r["total"] - r["flaml_fit"] - model(r)) / r["total"])
            medians.setdefault(tree, {})[name] = {"stage": stage, "framework": framework, "over": over}
            print(f"{name:32} {stage:8.2f} {fit:9.2f} {median(model):8.2f} {framework:12.2f} {100 * over:10.1f}% "
                  f"{median(lambda r: r['prepare']):8.2f} {median(lambda r: r['fit'] - r['flaml_fit']):11.2f} "
                  f"{median(lambda r: r['evaluate_and_store'] - model(r)):7.2f}")
            # The limit: checks, search, blend and refit within 1.1 x the budget; the rest is I/O.
            compute = median(lambda r: r.get("leakage_check", 0) + r["fit"] + r.get("blend", 0)
                             + r.get("refit_and_store", 0))
            search, given = median(lambda r: r["fit"]), median(lambda r: r.get("search_budget", 0))
            blend, refit = median(lambda r: r.get("blend", 0)), median(lambda r: r.get("refit_and_store", 0))
            print(f"{'':32} search {search:.2f}s (given {given:.2f}s), blend {blend:.2f}s, refit {refit:.2f}s; "
                  f"checks+search+blend+refit {compute:.2f}s = {compute / args.budget:.2f} x budget (limit 1.1); "
                  f"whole stage {stage / args.budget:.2f} x budget")
            if all("handler" in r for r in results):  # trees whose runs lack it: older code, same benchmark
                # The stage's record stops at `total`; the run's environment, trace links, the ledger and the
                # span come after it. The whole handler as the runtime dispatches it, measured from outside:
                whole = median(lambda r: r["handler"])
                whole_over = median(lambda r: (r["handler"] - r["flaml_fit"] - model(r)) / r["handler"])
                print(f"{'':32} whole handler (runtime.execute, measured outside) {whole:.2f}s: framework "
                      f"{median(lambda r: r['handler'] - r['flaml_fit'] - model(r)):.2f}s, {100 * whole_over:.1f}%, "
                      f"{whole - stage:.2f}s after the stage's record")
    if len(medians) == 2:
        (_, ma), (b, mb) = medians.items()
        for name in ma:
            print(f"{name}: framework {ma[name]['framework']:.2f}s vs {mb[name]['framework']:.2f}s "
                  f"({ma[name]['framework'] / mb[name]['framework']:.2f}x of {b}'s), stage {ma[name]['stage']:.2f}s vs "
                  f"{mb[name]['stage']:.2f}s")
    print("goal: framework under 5 % of the stage (overhead % is the median of framework / stage per run)")
    print(f"load average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))


def use_tree(tree: str) -> None:
    """Import `sluice` from `tree` (a checkout) instead of the installed one: drop the editable install's finder."""
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
                        and "__editable__" not in getattr(f, "__name__", "")]
    sys.path.insert(0, tree)


def compare(args: argparse.Namespace) -> None:
    """One run of this checkout and one of `args.against`, alternating, `args.repeats` times, in fresh processes."""
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="sluice-against-") as tmp:
        ref_tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(ref_tree), args.against],
                       check=True, capture_output=True)
        try:
            trees = {"this checkout": str(root), args.against: str(ref_tree)}
            gathered: dict[str, dict[str, list[dict[str, float]]]] = {t: {} for t in trees}
            for _ in range(args.repeats):
                for label, tree in trees.items():
                    cmd = [sys.executable, __file__, "--child", tree, "--repeats", "1", "--budget", str(args.budget),
                           "--synthetic-rows", str(args.synthetic_rows), *(["--cold"] if args.cold else [])]
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                    [line] = [x for x in out.splitlines() if x.startswith("RESULTS ")]
                    for name, results in json.loads(line.removeprefix("RESULTS ")).items():
                        gathered[label].setdefault(name, []).extend(results)
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(ref_tree)],
                           capture_output=True)
    report(gathered, args)


if __name__ == "__main__":
    main()
