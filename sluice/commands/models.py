"""`sluice models`: the registry's versions, lifecycle, history and cards."""

from __future__ import annotations

from typing import Any

import click

from sluice.commands.common import echo_json as _echo_json
from sluice.commands.common import settings as _settings
from sluice.commands.common import store as _store
from sluice.core.errors import SluiceError
from sluice.core.settings import Settings


@click.group()
def models() -> None:
    """The model registry."""


def _registry(settings: Settings) -> Any:
    from sluice.core.registry import ModelRegistry
    from sluice.infra.broker import make_state

    return ModelRegistry(_store(settings), make_state(settings))


def _known(registry: Any, name: str, settings: Settings) -> None:
    if not registry.version_numbers(name):
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
@click.option("--json", "as_json", is_flag=True)
def models_show(name: str, at: str | None, as_json: bool) -> None:
    """Versions with their stage, the champion and challenger, gate decisions and lineage of model NAME."""
    from sluice.core.registry import CHALLENGER, parse_time

    settings = _settings()
    registry = _registry(settings)
    _known(registry, name, settings)
    if at is not None:
        try:
            when = parse_time(at)
        except SluiceError as exc:
            raise click.ClickException(str(exc)) from exc
        number, record = registry.champion_at(name, when)
        if as_json:
            _echo_json({"model": name, "at": when.isoformat(), "champion": number, "since": record})
        elif number is None:
            click.echo(f"model {name} had no champion at {when.isoformat()}")
        else:
            assert record is not None
            click.echo(f"model {name} at {when.isoformat()}: champion v{number}, since {record['at']} "
                       f"({record['action']} by {record['by']}, {record['cause']}: {record['reason']})")
        return
    snap = registry.snapshot(name)
    versions = registry.versions(name)
    if as_json:
        _echo_json({"model": name, "champion": registry.alias(name), "challenger": registry.alias(name, CHALLENGER),
                    "stages": {str(k): v for k, v in snap.stages.items()}, "versions": versions})
        return
    challenger = f", challenger v{snap.challenger}" if snap.challenger else ""
    click.echo(f"model {name}: champion v{snap.champion or '-'}{challenger}")
    for v in versions:
        mark = "*" if snap.champion == v["version"] else " "
        s = v["scores"]
        then = "" if s.get("champion") is None else f", champion then {s['champion']:.4f}"
        diff = ((v.get("gate") or {}).get("metric") or {}).get("difference")
        click.echo(f" {mark}v{v['version']}  {snap.stages.get(v['version'], '?'):<10} gate {v['decision']:<21} "
                   f"{v['metric']}={s['candidate']:.4f} (baseline {s['baseline']:.4f}{then}; "
                   f"improvement{_ci(diff)})  run {v['run_id']}  {v['registered_at']}")
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
    for key in registry.store.keys(f"registry/{name}/backtests/"):
        bt = registry.store.get_json(key)
        scores = ", ".join(f"v{r['version']} ({r['role']}) {r['metrics'][bt['metric']]:.4f}"
                           for r in bt["results"] if "metrics" in r)
        click.echo(f"  backtest on {bt['labels']} labels arrived {bt['at']}: {bt['metric']} {scores}")


@models.command("history")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def models_history(name: str, as_json: bool) -> None:
    """Every lifecycle transition of model NAME, oldest first: what changed, the cause, who and why."""
    settings = _settings()
    registry = _registry(settings)
    _known(registry, name, settings)
    records = registry.history(name)
    if as_json:
        _echo_json(records)
        return
    for r in records:
        changes = ", ".join(f"v{c['version']} {c['from'] or 'new'}->{c['to']}" for c in r["changes"])
        click.echo(f"{r['sequence']:>4}  {r['at']}  {r['action']:<11} v{r['version']:<4} {changes}")
        click.echo(f"      by {r['by']} ({r['cause']}): {r['reason']}; champion after: "
                   f"{'v' + str(r['champion']) if r['champion'] else '-'}")


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
        click.echo(f"{name}: {len(problems)} problem(s); act on nothing of it until it is restored:")
        for p in problems:
            click.echo(f"  - {p}")
    else:
        click.echo(f"{name}: registry verified (signatures, history chain, aliases, versions"
                   f"{'' if no_artifacts else ', artifacts'})")
    if problems:
        raise SystemExit(1)


def _lifecycle(name: str, operation: str, **kwargs: Any) -> None:
    """Run a registry operation, then publish its event."""
    from botocore.exceptions import BotoCoreError, ClientError

    from sluice.core.context import Context
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
        SnsPublisher(settings).publish(event)
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

    from sluice.core.card import render_card

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
