"""`sluice trace KEY|ID`: the whole path of one drop, from the bucket alone (ml/trace.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from sluice.commands.common import echo_json as _echo_json
from sluice.commands.common import settings as _settings
from sluice.commands.common import store as _store

if TYPE_CHECKING:
    from sluice.ml.trace import Trace


def _when(text: str | None) -> str:
    """`04:33:01.456` of an ISO time (the date is on the header line); `-` when it was not recorded."""
    return text[11:23] if text and len(text) >= 23 else (text or "-")


UNFINISHED = "never finished (its worker died: killed, or the machine lost)"
RUNNING = ("no end recorded: still running, or its worker died (a redelivery, or `sluice reconcile`, runs it "
           "again; `sluice status` says which)")


def render(found: Trace) -> list[str]:
    """The text of a drop's path (ml/trace.py's `Trace`), as `sluice trace` prints it."""
    out: list[str] = []
    drop = found.drop
    day = next((s.started_at or s.ended_at for s in found.steps if s.started_at or s.ended_at), None)
    out.append(f"trace {found.trace_id}  dataset {found.dataset or '?'}" + (f"  {day[:10]} (UTC)" if day else ""))
    if drop:
        out.append(f"drop  {drop.get('key')}" + "".join(f"  {k} {str(drop[k]).strip(chr(34))[:16]}"
                                                          for k in ("etag", "version_id", "sha256") if drop.get(k)))
    if not found.steps:
        out.append("  nothing recorded yet: the drop has not been picked up (is a worker running?)")
    out.append(f"  {'stage':<10} {'start':<12} {'end':<12} {'took':>8}  outcome")
    for step in found.steps:
        took = "" if step.duration_s is None else f"{step.duration_s:.1f}s"
        tries = [a["outcome"] for a in step.attempts if a["outcome"] != "duplicate-delivery"]
        again = len(step.attempts) - len(tries)
        earlier = [UNFINISHED if t == "started" else t for t in tries[:-1]]
        retried = f" after {len(tries) - 1} earlier attempts ({', '.join(earlier)})" if len(tries) > 1 else ""
        retried += f" (delivered again {again}x since, nothing redone)" if again and tries else ""
        via = f"  [trace {step.trace_id[:16]}]" if step.trace_id else ""
        detail = step.detail or (RUNNING if step.outcome == "started" else "")
        out.append(f"  {step.stage:<10} {_when(step.started_at):<12} {_when(step.ended_at):<12} {took:>8}  "
                   f"{step.outcome}{': ' + detail if detail else ''}{retried}{via}")
    if found.linked:
        out.append("its data went on in a run that coalesced it with other drops: "
                   + ", ".join(f"trace {t}" for t in found.linked))
    documents = [d for s in found.steps for d in s.documents]
    if documents:
        out.append("documents:")
        for key in documents:
            out.append(f"  {key}")
    return out


@click.command("trace")
@click.argument("ref", metavar="KEY|ID")
@click.option("--json", "as_json", is_flag=True)
def trace(ref: str, as_json: bool) -> None:
    """The path of one drop: each stage's start, end and outcome, down to the model event.

    KEY is a dropped object's key (incoming/<dataset>/<file>, optionally @ETAG or @VERSION_ID; the latest drop of
    the key otherwise); ID is its trace id, its ledger id, or a prefix of 8 or more hex digits. Everything is read
    from the bucket (no Redis needed)."""
    from sluice.core.errors import SluiceError
    from sluice.core.memory import MemoryState
    from sluice.ml.trace import trace as build

    try:
        found = build(_store(_settings()), MemoryState(), ref)
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        _echo_json(found.to_dict())
        return
    for line in render(found):
        click.echo(line)
