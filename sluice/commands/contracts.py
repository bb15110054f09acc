"""`sluice contract`: inferring, checking and uploading dataset contracts."""

from __future__ import annotations

from pathlib import Path

import click

from sluice.commands.common import app_option, dataset_name, load_app
from sluice.commands.common import settings as _settings
from sluice.commands.common import store as _store
from sluice.core.errors import ContractError, SluiceError

# polars and pandera (ml.contract, ml.validation) are imported inside the commands: `sluice --help` stays fast.


@click.group()
def contract() -> None:
    """Dataset contracts."""


@contract.command("infer")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dataset", required=True, callback=dataset_name)
@click.option("--target", required=True, help="The column to predict.")
@click.option("--budget", type=float, default=10.0, show_default=True, help="Training time budget, seconds.")
@click.option("--debounce", type=float, default=30.0, show_default=True,
              help="Seconds of quiet after the last drop before training (drops in between make one run).")
def contract_infer(file: Path, dataset: str, target: str, budget: float, debounce: float) -> None:
    """Write a contract inferred from a sample FILE to stdout; review it, then `sluice contract put`."""
    from sluice.ml.contract import infer_contract
    from sluice.ml.validation import read_sample

    try:
        frame = read_sample(file.name, file.read_bytes())
        inferred = infer_contract(frame, dataset, target, budget, debounce)
        click.echo(inferred.to_yaml(), nl=False)
        # Also on stderr: with stdout redirected to a file, what needs a look would otherwise go unseen.
        for line in inferred.attention():
            click.echo(f"contract infer: {line}", err=True)
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc


@contract.command("put")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@app_option
def contract_put(file: Path, app_spec: str | None) -> None:
    """Check a contract (against the app's checks, feature functions and learners) and upload it."""
    from sluice.ml.contract import contract_key, parse_contract

    settings = _settings()
    try:
        parsed = parse_contract(file.read_text(), source=str(file))
    except ContractError as exc:
        raise click.ClickException(str(exc)) from exc
    missing = load_app(app_spec).extensions.missing(parsed)
    if missing:
        raise click.ClickException(f"{file}: " + " ".join(missing))
    key = contract_key(parsed.dataset)
    store = _store(settings)
    text = parsed.to_yaml().encode()
    # Every version is kept under its fingerprint; data versions record which one validated them.
    store.put(f"contract-versions/{parsed.dataset}/{parsed.fingerprint()[:12]}.yaml", text)
    store.put(key, text, content_type="application/yaml")
    click.echo(f"contract for {parsed.dataset!r} -> s3://{settings.bucket}/{key} (version {parsed.fingerprint()[:12]})")
