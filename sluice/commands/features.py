"""`sluice features`: the online feature store."""

from __future__ import annotations

import click

from sluice.commands.common import echo_json as _echo_json
from sluice.commands.common import settings as _settings


@click.group()
def features() -> None:
    """The feature store."""


@features.command("get")
@click.argument("dataset")
@click.argument("entity")
@click.option("--json", "as_json", is_flag=True)
def features_get(dataset: str, entity: str, as_json: bool) -> None:
    """The latest feature vector of ENTITY, from the online store (Redis at SLUICE_BROKER_URL)."""
    from sluice.infra.online import make_online

    settings = _settings()
    if settings.broker_is_memory:
        raise click.ClickException("the online store lives in Redis: set SLUICE_BROKER_URL to redis://…")
    found = make_online(settings).get(dataset, entity)
    if found is None:
        raise click.ClickException(f"no online features for entity {entity!r} of dataset {dataset!r}; features "
                                   "are published there when a dataset with an `entity` is materialized")
    if as_json:
        _echo_json(found)
        return
    click.echo(f"{dataset} {entity}: as of {found['event_time']}, feature set {found['feature_set']}")
    for name, value in found["features"].items():
        click.echo(f"  {name:<28} {value}")
