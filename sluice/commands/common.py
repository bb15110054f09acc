"""What every command needs: the settings, the object store, JSON output."""

from __future__ import annotations

import json
from typing import Any

import click

from sluice.core.settings import Settings


def settings() -> Settings:
    """The settings, from the environment."""
    return Settings.from_env()


def store(s: Settings) -> Any:
    """The bucket of these settings."""
    from sluice.infra.store import S3Store

    return S3Store(s)


def dataset_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: a dataset name that `contract put` would accept, or a one-line error saying the rule."""
    from sluice.ml.contract import NAME

    if value is not None and not NAME.match(value):
        raise click.BadParameter(f"{value[:80]!r}: a dataset name is lowercase letters, digits, '-' and '_', "
                                 "starting with a letter or digit, at most 63 characters (as in contracts/NAME.yaml)")
    return value


def num(value: Any) -> str:
    """A score as a person reads it: four decimals, or `n/a` where the metric is undefined (roc_auc on a holdout
    of one class)."""
    return "n/a" if value is None else f"{value:.4f}"


def echo_json(doc: Any) -> None:
    """Pretty, sorted JSON on stdout."""
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


# Every command that wires stages (up, worker, reconcile, redrives, iam) runs the same app.
app_option = click.option(
    "--app", "app_spec", default=None, metavar="MODULE:APP",
    help="The app to run, e.g. app:app (default: SLUICE_APP, then [tool.sluice] app in pyproject.toml, then the "
         "built-in chain).")


def load_app(spec: str | None) -> Any:
    """The app named by --app, SLUICE_APP or pyproject.toml (the built-in chain otherwise); errors as one line."""
    from sluice.core.errors import AppError
    from sluice.project import load_app as _load

    try:
        return _load(spec)
    except AppError as exc:
        raise click.ClickException(str(exc)) from exc
