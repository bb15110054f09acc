"""`sluice runs`: the experiment log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from sluice.commands.common import echo_json as _echo_json
from sluice.commands.common import num
from sluice.commands.common import settings as _settings
from sluice.commands.common import store as _store
from sluice.core import keys
from sluice.core.errors import SluiceError


@click.group()
def runs() -> None:
    """Training runs: the experiment log."""


@runs.command("list")
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True)
def runs_list(dataset: str, as_json: bool) -> None:
    """Runs of DATASET, oldest first, and any still training."""
    from sluice.ml import runs as r

    found = r.list_runs(_store(_settings()), dataset)
    if as_json:
        _echo_json(found)
        return
    if not found:
        click.echo(f"no runs for dataset {dataset!r}")
    for run in found:
        if "holdout" not in run:
            loss = run.get("best_loss")
            click.echo(f"{run['run_id']}  {run.get('status', 'running'):<9} {run.get('trials', 0)} trials, best loss "
                       f"{'-' if loss is None else f'{loss:.4f}'} ({run.get('at', '')})")
            continue
        m = run["metric"]
        click.echo(f"{run['run_id']}  {run['finished_at']}  {run['best_estimator']:<10} {m}="
                   f"{num(run['holdout']['metrics'][m])} (baseline {num(run['holdout']['baseline'][m])})  "
                   f"{run.get('trials', {}).get('count', '?')} trials  features {run['feature_set_version']}  "
                   f"{len(run['data_versions'])} data versions")


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def runs_show(run_id: str, as_json: bool) -> None:
    """One run: parameters, best configuration, metrics, inputs, durations, environment, artifacts."""
    from sluice.ml import leakage
    from sluice.ml import runs as r

    try:
        run = r.find_run(_store(_settings()), run_id)
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        _echo_json(run)
        return
    h = run["holdout"]
    click.echo(f"run {run['run_id']} of {run['dataset']} ({run['task']}), finished {run['finished_at']}")
    click.echo(f"  best {run['best_estimator']} {json.dumps(run['best_config'], sort_keys=True)}")
    warm = run.get("warm_start")
    click.echo(f"  {run.get('trials', {}).get('count', '?')} trials, budget {run['params']['time_budget_s']}s, "
               f"warm start {'-' if not warm else ('used' if warm['used'] else 'requested, NOT used')}")
    click.echo(f"  holdout {h['rows']} rows (train {h['train_rows']}): " + ", ".join(
        f"{k}={num(v)} (baseline {num(h['baseline'][k])})" for k, v in h["metrics"].items()))
    leaks = leakage.brief(run.get("leakage"))
    if leaks:
        click.echo(f"  {leaks}")
    if run.get("refit"):
        bag = run["refit"].get("bag")
        click.echo(f"  ships: refitted on all {run['refit']['rows']} labelled rows"
                   + (f", a bag of {bag['folds']} fits per member (each without one of {bag['folds']} folds)"
                      if bag else "") + " (the holdout scores above are of the model fitted on the training rows)")
    elif run.get("refit_skipped"):
        click.echo(f"  ships: the evaluated model, not refitted: {run['refit_skipped']}")
    importance = run.get("feature_importance", {})
    top = sorted(importance.items(), key=lambda kv: (-kv[1], kv[0]))[:5]  # by gain, not by name
    click.echo("  top features: " + ", ".join(f"{k} {v:.1%}" for k, v in top))
    labels = run.get("label_versions") or []
    click.echo(f"  inputs: features {run['feature_set_version']}, data versions "
               + ", ".join(v[:12] for v in run["data_versions"])
               + ("" if not labels else ", label versions " + ", ".join(v[:12] for v in labels)))
    click.echo("  durations: " + ", ".join(f"{k} {v}s" for k, v in run["durations_s"].items()))
    env = run["environment"]
    click.echo(f"  environment: python {env['python']}, code {env.get('code', {})}, "
               + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v))
    for name, a in run["artifacts"].items():
        click.echo(f"  artifact {name:<11} s3://{_settings().bucket}/{a['key']} sha256 {a['sha256'][:16]}…")


@runs.command("artifacts")
@click.argument("run_id")
@click.option("--download", "into", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Write every artifact into this folder, each checked against its recorded sha256.")
def runs_artifacts(run_id: str, into: Path | None) -> None:
    """RUN's artifacts (model, plots, trials, holdout, profile), and downloading them."""
    from sluice.ml import runs as r

    store = _store(_settings())
    try:
        run = r.find_run(store, run_id)
        for name, meta in sorted(run["artifacts"].items()):
            line = f"{name:<11} {meta.get('bytes', '?'):>9} bytes  sha256 {meta['sha256'][:16]}…  {meta['key']}"
            if into is not None:
                into.mkdir(parents=True, exist_ok=True)
                target = into / meta["key"].rsplit("/", 1)[-1]
                target.write_bytes(r.artifact(store, run, name))
                line += f"  -> {target}"
            click.echo(line)
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc


@runs.command("compare")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--json", "as_json", is_flag=True)
def runs_compare(run_a: str, run_b: str, as_json: bool) -> None:
    """Metrics, configuration and inputs of two runs side by side."""
    from sluice.ml import runs as r

    store = _store(_settings())
    try:
        diff = r.compare(r.find_run(store, run_a), r.find_run(store, run_b))
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        _echo_json(diff)
        return
    a, b = diff["runs"]
    click.echo(f"{'':22} {a:>18} {b:>18}")
    for m, (x, y) in diff["metrics"].items():
        click.echo(f"{m:22} {x:18.4f} {y:18.4f}")
    for name in ("holdout_rows", "best_estimator", "feature_set_version", "trials", "fit_seconds"):
        x, y = diff[name]
        click.echo(f"{name:22} {x!s:>18} {y!s:>18}")
    for k, (x, y) in diff["config"].items():
        click.echo(f"config.{k:15} {x!s:>18} {y!s:>18}")
    dv = diff["data_versions"]
    click.echo(f"data versions: {dv['shared']} shared, only in {a}: {[v[:12] for v in dv['only_a']]}, "
               f"only in {b}: {[v[:12] for v in dv['only_b']]}")


@runs.command("reproduce")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def runs_reproduce(run_id: str, as_json: bool) -> None:
    """Refit RUN's best configuration on its recorded inputs and say whether the metrics match."""
    from sluice.ml import runs as r

    store = _store(_settings())
    try:
        result = r.reproduce(store, r.find_run(store, run_id))
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        _echo_json(result)
    else:
        for m, v in result["reproduced"].items():
            # A blend recorded its search winner's score on the run's metric only: the others have nothing to match.
            recorded = result["recorded"].get(m)
            was = "(not recorded)" if recorded is None else f"{recorded:.6f}"
            click.echo(f"{m:10} recorded {was:>14}  reproduced {v:.6f}")
        verdict = "MATCH" if result["match"] else "DIFFERENT"
        diff = result["max_abs_difference"]
        click.echo(f"{verdict}: max |difference| {'n/a' if diff is None else f'{diff:.2e}'} on "
                   f"{result['holdout_rows']} holdout rows ({result['estimator']} refitted on {result['train_rows']} "
                   "rows)")
    if not result["match"]:
        sys.exit(1)


@runs.command("cancel")
@click.argument("dataset")
def runs_cancel(dataset: str) -> None:
    """Ask the running training of DATASET to stop (it is recorded as cancelled, not retried)."""
    from sluice.ml import runs as r

    store = _store(_settings())
    running = [run for run in r.list_runs(store, dataset) if run.get("status") == "running"]
    for run in running:
        store.put_json(keys.Run(dataset, run["run_id"], "cancel.json").key, {"requested": True})
        click.echo(f"cancelling {run['run_id']} ({run.get('trials', 0)} trials so far)")
    if not running:
        click.echo(f"no training of {dataset!r} is running")
