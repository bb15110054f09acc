"""`sluice iam` (the policies of each role) and `sluice refused` (what stages would not act on, and re-driving it)."""

from __future__ import annotations

import click

from sluice.commands.common import app_option, load_app
from sluice.commands.common import echo_json as _echo_json
from sluice.commands.common import settings as _settings
from sluice.commands.common import store as _store
from sluice.core.errors import SluiceError


@click.command()
@click.option("--role", type=click.Choice(["producer", "contract-owner", "worker", "model-reader", "operator"]),
              default=None, help="Print one role's policy (default: all, keyed by role).")
@app_option
def iam(role: str | None, app_spec: str | None) -> None:
    """IAM policies for the roles of this deployment, generated from its routes and bucket layout."""
    from sluice.core.iam import policies

    docs = policies(_settings(), load_app(app_spec).routes)
    _echo_json(docs[role] if role else docs)


@click.group()
def refused() -> None:
    """Events a stage refused because what woke it was not written by a Sluice stage (or was changed)."""


@refused.command("list")
@click.option("--json", "as_json", is_flag=True)
def refused_list(as_json: bool) -> None:
    """Every refusal, oldest first."""
    from sluice.core.refusals import refusals

    records = [r for _, r in refusals(_store(_settings()))]
    if as_json:
        _echo_json(records)
        return
    for r in records:
        click.echo(f"{r['id']}  {r['at']}  {r['stage']:<10} {r['event']['key']}")
        click.echo(f"      {r['message']}")
        for done in r.get("redriven", []):
            click.echo(f"      re-driven by {done.get('by')} at {done.get('at')}")


@refused.command("redrive")
@click.argument("ident")
@app_option
def refused_redrive(ident: str, app_spec: str | None) -> None:
    """Send refusal IDENT's event to its stage again, once what it concerns is restored."""
    from datetime import UTC, datetime

    from sluice.commands.models import _who
    from sluice.core.refusals import find, redrive
    from sluice.service import build_runtime

    settings = _settings()
    store = _store(settings)
    try:
        key, record = find(store, ident)
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc
    runtime = build_runtime(settings, load_app(app_spec), store=store)
    try:
        event = redrive(runtime, key, record, by=_who(), at=datetime.now(UTC).isoformat(timespec="seconds"))
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"re-sent {event.key} to stage {record['stage']}")
