"""`sluice models`: the registry's versions, lifecycle, history and cards."""

from __future__ import annotations

from typing import Any

import click

from sluice.commands.common import app_option, load_app, num
from sluice.commands.common import echo_json as _echo_json
from sluice.commands.common import settings as _settings
from sluice.commands.common import store as _store
from sluice.core import keys
from sluice.core.errors import SluiceError
from sluice.core.settings import Settings


@click.group()
def models() -> None:
    """The model registry."""


def _registry(settings: Settings) -> Any:
    from sluice.infra.broker import make_state
    from sluice.ml.registry import ModelRegistry

    return ModelRegistry(_store(settings), make_state(settings))


def _known(registry: Any, name: str, settings: Settings) -> None:
    if not registry.known(name):
        raise click.ClickException(f"no model {name!r} in s3://{settings.bucket}/registry/ "
                                   f"(known: {', '.join(registry.models()) or 'none'})")


def _who() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _ci(diff: dict[str, Any] | None) -> str:
    if not diff or diff.get("low") is None:
        return ""
    return f" [{diff['low']:+.4f}, {diff['high']:+.4f}]"


@models.command("show")
@click.argument("name")
@click.option("--at", "at", default=None, metavar="TIME", help="Which version was champion at TIME (ISO 8601).")
@click.option("--page", default=1, show_default=True, type=click.IntRange(min=1),
              help="Which page of versions, newest first.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1, max=1000),
              help="Versions per page.")
@click.option("--json", "as_json", is_flag=True)
def models_show(name: str, at: str | None, page: int, limit: int, as_json: bool) -> None:
    """Versions with their stage (one page, newest first), the champion and challenger, gate decisions and lineage
    of model NAME."""
    from sluice.ml import leakage
    from sluice.ml.registry import parse_time
    from sluice.ml.registry_index import actions

    settings = _settings()
    registry = _registry(settings)
    if at is not None:
        try:
            when = parse_time(at)
        except SluiceError as exc:
            raise click.ClickException(str(exc)) from exc
        _known(registry, name, settings)
        number, record = registry.champion_at(name, when)
        if as_json:
            _echo_json({"model": name, "at": when.isoformat(), "champion": number, "since": record})
        elif number is None:
            click.echo(f"model {name} had no champion at {when.isoformat()}")
        else:
            assert record is not None
            click.echo(f"model {name} at {when.isoformat()}: champion v{number}, since {record['at']} "
                       f"({actions(record)} by {record['by']}, {record['cause']}: {record['reason']})")
        return
    listing = registry.page(name, page=page, limit=limit)
    if listing["total"] == 0 and listing["sequence"] == 0:
        _known(registry, name, settings)
    versions, stages = listing["versions"], listing["stages"]
    if as_json:
        _echo_json({"model": name, "champion": listing["aliases"]["champion"],
                    "challenger": listing["aliases"]["challenger"], "page": page, "limit": limit,
                    "pages": listing["pages"], "total": listing["total"],
                    "stages": {str(k): v for k, v in stages.items()}, "versions": versions})
        return
    champion, challenger = listing["champion"], listing["challenger"]
    more = f", challenger v{challenger}" if challenger else ""
    click.echo(f"model {name}: champion v{champion or '-'}{more}")
    for v in versions:
        mark = "*" if champion == v["version"] else " "
        s = v["scores"]
        then = "" if s.get("champion") is None else f", champion then {s['champion']:.4f}"
        diff = ((v.get("gate") or {}).get("metric") or {}).get("difference")
        click.echo(f" {mark}v{v['version']}  {stages.get(v['version']) or '?':<10} gate {v['decision']:<21} "
                   f"{v['metric']}={num(s['candidate'])} (baseline {num(s['baseline'])}{then}; "
                   f"improvement{_ci(diff)})  run {v['run_id']}  {v['registered_at']}")
        leaks = leakage.brief(v.get("leakage"))
        if leaks:
            click.echo(f"      {leaks}")
        if v["decision"] == "insufficient_evidence":  # why the gate could not decide, and what to do about it
            reasons = list(v.get("reasons") or [])
            if reasons[:1] == [v["decision"]]:
                reasons = reasons[2:]  # the outcome and the comparison, both on the line above
            for reason in reasons:
                click.echo(f"      {reason}")
        b = v.get("benchmark")
        if b:
            click.echo(f"      inference {b['rows_per_s']:,.0f} rows/s, single row p50 {b['p50_ms']:.3f} ms "
                       f"p99 {b['p99_ms']:.3f} ms, {b['size_bytes']:,} bytes")
        lin = v["lineage"]
        for src in lin["sources"]:
            replay = f", replay of {src['replay_of']['key']}" if src.get("replay_of") else ""
            click.echo(f"      from {src['key']} (version {src.get('version_id')}, etag {src['etag']}, "
                       f"sha256 {src['sha256'][:16]}…{replay})")
        click.echo(f"      features {lin['feature_set_version']}, artifact {v['artifact']['uri']}")
    if listing["pages"] > 1:
        click.echo(f"  page {page} of {listing['pages']} ({listing['total']} versions, {limit} a page; "
                   f"--page N for more)")
    if page == 1:
        for key in registry.store.keys(keys.Backtest.prefix(name)):
            bt = registry.store.get_json(key)
            scores = ", ".join(f"v{r['version']} ({r['role']}) {num(r['metrics'][bt['metric']])}"
                               for r in bt["results"] if "metrics" in r)
            click.echo(f"  backtest on {bt['labels']} labels arrived {bt['at']}: {bt['metric']} {scores}")


@models.command("history")
@click.argument("name")
@click.option("--last", type=click.IntRange(min=1), default=50, show_default=True,
              help="Show the newest N records (read in one round, whatever the history's length).")
@click.option("--all", "every", is_flag=True, help="Every record, read and checked as one chain from the first.")
@click.option("--json", "as_json", is_flag=True)
def models_history(name: str, last: int, every: bool, as_json: bool) -> None:
    """Lifecycle transitions of model NAME, oldest first: what changed, the cause, who and why."""
    settings = _settings()
    registry = _registry(settings)
    _known(registry, name, settings)
    if every:
        records = registry.history(name)
        total = len(records)
    else:
        records, total = registry.history_tail(name, last)
    if as_json:
        _echo_json(records)
        return
    if total > len(records):
        click.echo(f"the newest {len(records)} of {total} records (--last N, or --all)")
    from sluice.ml.registry_index import actions, steps

    for r in records:
        changes = ", ".join(f"v{c['version']} {c['from'] or 'new'}->{c['to']}" for c in r["changes"])
        click.echo(f"{r['sequence']:>4}  {r['at']}  {actions(r):<11} v{r['version']:<4} {changes}")
        for step in steps(r):  # a registration's record holds its transitions, each with its cause and reason
            click.echo(f"      by {r['by']} ({step['cause']}): {step['reason']}; champion after: "
                       f"{'v' + str(step['champion']) if step['champion'] else '-'}")


@models.command("verify")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.option("--no-artifacts", is_flag=True, help="Skip re-hashing the artifacts (documents and history only).")
def models_verify(name: str, as_json: bool, no_artifacts: bool) -> None:
    """Check model NAME's registry: signatures, the history's hash chain, aliases against the history, versions
    against their registration, artifacts against the versions. Exits 1 when anything does not hold."""
    settings = _settings()
    registry = _registry(settings)
    _known(registry, name, settings)
    problems = registry.verify(name, artifacts=not no_artifacts)
    if as_json:
        _echo_json({"model": name, "ok": not problems, "problems": problems})
    elif problems:
        click.echo(f"{name}: {len(problems)} problem(s):")
        for p in problems:
            click.echo(f"  - {p}")
        click.echo(f"Documents that disagree with the history (aliases, versions, the index) are rewritten from it by "
                   f"`sluice models reindex {name}` (the next registration repairs what a writer that died left "
                   "unwritten); a history record or artifact that is missing, edited or not signed has to be restored "
                   "from the bucket's version history (or its writer found) before anything acts on it.")
    else:
        click.echo(f"{name}: registry verified (signatures, history chain, aliases, versions"
                   f"{'' if no_artifacts else ', artifacts'})")
    if problems:
        raise SystemExit(1)


@models.command("reindex")
@click.argument("name")
def models_reindex(name: str) -> None:
    """Rebuild model NAME's index (registry/NAME/index/) from its whole history, under the model's lock."""
    settings = _settings()
    registry = _registry(settings)
    _known(registry, name, settings)
    try:
        idx = registry.reindex(name)
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc
    n = idx.head["versions"]
    click.echo(f"{name}: index rebuilt from {idx.sequence} history record{'' if idx.sequence == 1 else 's'} and {n} "
               f"version{'' if n == 1 else 's'}")
    if idx.skipped:
        click.echo(f"left out, not what a Sluice stage registered (restore each from the bucket's version history, "
                   f"or delete it, then run this again; `sluice models verify {name}` lists every problem):")
        for problem in idx.skipped:
            click.echo(f"  - {problem}")


def _lifecycle(name: str, operation: str, **kwargs: Any) -> None:
    """Run a registry operation, then publish its event."""
    from botocore.exceptions import BotoCoreError, ClientError

    from sluice.core.context import Context
    from sluice.core.runtime import publish_once
    from sluice.events.model import for_transition
    from sluice.infra.notify import SnsPublisher

    settings = _settings()
    registry = _registry(settings)
    _known(registry, name, settings)
    ctx = Context(settings, registry.store, registry.state)
    try:
        version, record = getattr(registry, operation)(name, at=ctx.timestamp(), **kwargs)
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc
    event = for_transition(version, record, ctx.source)
    try:
        publish_once(SnsPublisher(settings), registry.store, event)
    except (BotoCoreError, ClientError) as exc:
        # The history already holds the change: an event never announces something that did not happen.
        raise click.ClickException(f"{record['action']} v{record['version']} is recorded (history "
                                   f"#{record['sequence']}), but publishing {event.type} failed: {exc}") from exc
    changes = ", ".join(f"v{c['version']} {c['from']}->{c['to']}" for c in record["changes"])
    click.echo(f"{name}: {record['action']} v{record['version']} ({changes}); champion now "
               f"v{record['champion'] or '-'}; sent {event.type} id={event.id}")


@models.command("promote")
@click.argument("name")
@click.argument("version", type=int)
@click.option("--reason", required=True, help="Why; recorded in the history.")
@click.option("--force", is_flag=True, help="Promote a version the gate rejected.")
@click.option("--by", default=None, help="Who (default: user@host).")
def models_promote(name: str, version: int, reason: str, force: bool, by: str | None) -> None:
    """Make VERSION the champion of NAME; the current champion is archived."""
    _lifecycle(name, "promote", number=version, reason=reason, by=by or _who(), force=force)


@models.command("rollback")
@click.argument("name")
@click.option("--reason", required=True, help="Why; recorded in the history.")
@click.option("--by", default=None, help="Who (default: user@host).")
def models_rollback(name: str, reason: str, by: str | None) -> None:
    """Restore the previous champion of NAME; the current one is archived."""
    _lifecycle(name, "rollback", reason=reason, by=by or _who())


@models.command("archive")
@click.argument("name")
@click.argument("version", type=int)
@click.option("--reason", default="archived by hand", show_default=True, help="Why; recorded in the history.")
@click.option("--by", default=None, help="Who (default: user@host).")
def models_archive(name: str, version: int, reason: str, by: str | None) -> None:
    """Retire VERSION of NAME (not the champion)."""
    _lifecycle(name, "archive", number=version, reason=reason, by=by or _who())


@models.command("card")
@click.argument("name")
@click.argument("version", type=int)
def models_card(name: str, version: int) -> None:
    """Print the model card of VERSION of NAME (markdown)."""
    from botocore.exceptions import ClientError

    from sluice.ml.card import render_card

    settings = _settings()
    registry = _registry(settings)
    doc = registry.version(name, version)
    if doc is None:
        _known(registry, name, settings)
        raise click.ClickException(f"{name} has no version {version} "
                                   f"(versions: {', '.join(map(str, registry.version_numbers(name)))})")
    try:
        click.echo(registry.store.get(registry.card_key(name, version)).decode(), nl=False)
    except ClientError:  # registered before cards existed, or the register stage has not written it yet
        previous = registry.version(name, doc["compared_with"]) if doc.get("compared_with") else None
        click.echo(render_card(doc, previous), nl=False)


def _load(ref: str, settings: Settings, app_spec: str | None = None) -> Any:
    """The model, through `sluice.load_model` (which opens the bucket), with the app's feature functions and
    learners when the model needs them."""
    from sluice import load_model

    try:
        return load_model(ref, settings=settings, app=load_app(app_spec))
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc


@models.command("predict")
@click.argument("ref", metavar="NAME[@ALIAS|:VERSION]")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", "out", default=None, type=click.Path(dir_okay=False),
              help="Write to this .csv or .parquet (default: CSV on stdout).")
@app_option
def models_predict(ref: str, file: str, out: str | None, app_spec: str | None) -> None:
    """Score the rows of FILE (CSV or Parquet) with a registered model: the same rows, with their predictions.

    Rows the model cannot score (a column missing, a value the contract refuses) keep an empty prediction and
    say why in `unscored_reason`; a summary goes to stderr. When no row can be scored, nothing is written and the
    command fails with the reasons.
    """
    import polars as pl

    from sluice.ml.bundle import as_frame

    settings = _settings()
    model = _load(ref, settings, app_spec)
    try:
        rows = as_frame(file)
        result = model.predict(rows)
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc
    if result.rows and not len(result.scored):  # nothing to write: say why, and fail
        from collections import Counter

        common = Counter(u["reason"] for u in result.unscored).most_common()
        why = "; ".join(f"{reason} ({n} rows)" for reason, n in common[:3])
        more = f"; and {len(common) - 3} more reasons" if len(common) > 3 else ""
        raise click.ClickException(f"{model.name} v{model.version} could score none of the {result.rows} rows of "
                                   f"{file}: {why}{more}")
    scored = result.to_polars().drop("row")
    # A file scored before (an earlier output) has these columns already: this model's answers replace them.
    replaced = [c for c in scored.columns if c in rows.columns]
    table = pl.concat([rows.drop(replaced), scored], how="horizontal")
    if out is None:
        click.echo(table.write_csv(), nl=False)
    elif out.endswith(".parquet"):
        table.write_parquet(out)
    else:
        table.write_csv(out)
    click.echo(f"{model.name} v{model.version} (model sha256 {model.model_sha256[:12]}…): scored "
               f"{len(result.scored)} of {result.rows} rows" + (f" -> {out}" if out else ""), err=True)
    if replaced:
        click.echo(f"replaced the file's own {', '.join(replaced)} with this model's", err=True)
    if result.unscored:
        from collections import Counter

        reasons = Counter(u["reason"] for u in result.unscored)
        click.echo(f"{result.rows - len(result.scored)} rows not scored:", err=True)
        for reason, n in reasons.most_common(10):
            click.echo(f"  {n:6d} x {reason}", err=True)


@models.command("download")
@click.argument("ref", metavar="NAME[@ALIAS|:VERSION]")
@click.argument("folder", type=click.Path(file_okay=False))
def models_download(ref: str, folder: str) -> None:
    """Copy a version's verified bundle to FOLDER; `sluice.load_model(FOLDER)` then needs no bucket."""
    from pathlib import Path

    settings = _settings()
    model = _load(ref, settings)
    registry = _registry(settings)
    version = registry.version(model.name, model.version)
    if not version or not version.get("bundle"):
        raise click.ClickException(f"{model.name} v{model.version} was registered before bundles existed; "
                                   "it can be loaded by name, not downloaded")
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    key = version["bundle"]["key"]
    prefix = key.rsplit("/", 1)[0]
    store = _store(settings)
    manifest = store.get(key)
    (target / key.rsplit("/", 1)[1]).write_bytes(manifest)
    import json as _json

    for meta in _json.loads(manifest)["files"].values():
        (target / meta["path"]).write_bytes(store.get(f"{prefix}/{meta['path']}"))
    from sluice.ml.bundle import VERSION_RECORD

    (target / VERSION_RECORD).write_text(_json.dumps({"model": model.name, "version": model.version,
                                                      "bundle": version["bundle"]}, indent=1))
    click.echo(f"{model.name} v{model.version}: bundle {version['bundle']['sha256'][:12]}… -> {target} "
               f"(check it with sluice.load_model({str(target)!r}))")


@models.command("rescore")
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Show the corrections without recording them.")
@click.option("--by", default=None, help="Who (default: user@host).")
@app_option
def models_rescore(name: str, dry_run: bool, by: str | None, app_spec: str | None) -> None:
    """Re-compute every version's gate scores with the current loader and record corrections in the history.

    Versions are never rewritten: a correction is a `rescored` history record beside the original decision.
    """
    from datetime import UTC, datetime

    from sluice.ml.rescore import rescore

    settings = _settings()
    registry = _registry(settings)
    _known(registry, name, settings)
    at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    extensions = load_app(app_spec).extensions
    for line in rescore(registry, name, by=by or _who(), at=at, dry_run=dry_run, extensions=extensions):
        click.echo(line)
