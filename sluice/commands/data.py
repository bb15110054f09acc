"""`sluice data` and `sluice quarantine`: data versions, and what validation split out."""

from __future__ import annotations

import re

import click

from sluice.commands.common import echo_json as _echo_json
from sluice.commands.common import settings as _settings
from sluice.commands.common import store as _store
from sluice.core.errors import SluiceError


@click.group()
def data() -> None:
    """Data versions."""


@data.command("list")
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True)
def data_list(dataset: str, as_json: bool) -> None:
    """The dataset's snapshot: its data versions, oldest first, with rows, source, contract and drift."""
    from sluice.ml.status import data_versions

    versions = data_versions(_store(_settings()), dataset)
    if as_json:
        _echo_json(versions)
        return
    if not versions:
        click.echo(f"dataset {dataset!r} has no validated data yet")
    for v in versions:
        d = v.get("drift")
        drift = "no champion to compare" if not d else (
            f"drift {d['drifted_share']:.0%} of columns{' (DRIFTED)' if d['drifted'] else ''}")
        replay = f", replay of {v['replay_of']['data_version'][:12]}" if v.get("replay_of") else ""
        click.echo(f"{v['data_version'][:12]}  {v['validated_at']}  {v['rows']:>9} rows "
                   f"({v['rows_quarantined']} quarantined)  contract {v['contract_version'][:12]}  {drift}"
                   f"  <- {v['source']['key']}{replay}")


@click.group()
def quarantine() -> None:
    """What validation split out, and replaying it."""


@quarantine.command("list")
@click.argument("dataset", required=False)
@click.option("--json", "as_json", is_flag=True)
def quarantine_list(dataset: str | None, as_json: bool) -> None:
    """Quarantined files and rows, oldest first."""
    from sluice.ml import quarantine as q

    found = q.entries(_store(_settings()), dataset)
    if as_json:
        _echo_json([{"dataset": e.dataset, "id": e.id, "scope": e.scope, "report": e.report, "replays": e.replays}
                    for e in found])
        return
    if not found:
        click.echo("the quarantine is empty")
    for e in found:
        r = e.report
        rows = r.get("rows") or {}
        count = f"{rows['quarantined']} of {rows['total']} rows" if rows else "whole file"
        replayed = f", replayed {len(e.replays)}x" if e.replays else ""
        click.echo(f"{e.dataset}  {e.id[:12]}  {e.scope:<4}  {r['reason']:<18} {count}{replayed}  "
                   f"<- {r['source']['key']}")


@quarantine.command("show")
@click.argument("dataset")
@click.argument("ident")
@click.option("--json", "as_json", is_flag=True)
@click.option("--rows", "n_rows", type=int, default=10, show_default=True, help="Quarantined rows to print.")
def quarantine_show(dataset: str, ident: str, as_json: bool, n_rows: int) -> None:
    """One entry: why, what to do, the top failures and example rows."""
    import polars as pl

    from sluice.ml import quarantine as q
    from sluice.ml.validation import REASONS, ROW

    store = _store(_settings())
    try:
        entry = q.find(store, dataset, ident)
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        _echo_json({"id": entry.id, "report": entry.report, "replays": entry.replays})
        return
    r = entry.report
    click.echo(f"{r['source']['key']} ({entry.scope}, {r['reason']}), quarantined {r['quarantined_at']}")
    click.echo(f"  {r['message']}")
    # The report's advice starts by pointing here (`Inspect them with sluice quarantine show ...`): said once.
    advice = re.sub(r"^Inspect them with `sluice quarantine show [^`]*`\.\s*", "", str(r["what_to_do"]))
    click.echo(f"  what to do: {advice}")
    lines = r.get("summary_text") or [f"{s['column']}: {s['check']} x{s['rows']}" for s in r.get("summary", [])]
    if lines:
        click.echo("  top failures:")
        for line in lines[:10]:
            click.echo(f"    {line}")
    frame = q.rows(store, entry)
    if frame is not None and n_rows:
        click.echo(f"  first {min(n_rows, frame.height)} of {frame.height} quarantined rows:")
        with pl.Config(tbl_rows=n_rows, tbl_width_chars=160, fmt_str_lengths=80):
            click.echo(str(frame.head(n_rows).select(ROW, REASONS, pl.exclude(ROW, REASONS))))
    for replay in entry.replays:
        click.echo(f"  replayed under contract {replay['contract_version']} at {replay['at']} as {replay['key']}")


@quarantine.command("replay")
@click.argument("dataset")
@click.argument("data_version", required=False)
def quarantine_replay(dataset: str, data_version: str | None) -> None:
    """Validate quarantined data again under the current contract (after a contract fix)."""
    from datetime import UTC, datetime

    from sluice.ml import quarantine as q

    store = _store(_settings())
    try:
        keys = q.replay(store, dataset, data_version, datetime.now(UTC).isoformat())
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc
    for key in keys:
        click.echo(f"replaying as {key}")
    if not keys and not q.entries(store, dataset):
        click.echo(f"nothing to replay: nothing of {dataset} is quarantined")
    elif not keys:
        click.echo("nothing to replay (everything quarantined was already replayed under this contract)")
    else:
        click.echo("the worker validates them now; see `sluice status` or `sluice data list`")
