"""`sluice reconcile` and `sluice deadletter`: finding what fell through the cracks and sending it back in."""

from __future__ import annotations

import click

from sluice.commands.common import app_option, load_app
from sluice.commands.common import echo_json as _echo_json
from sluice.commands.common import settings as _settings
from sluice.commands.common import store as _store


@click.command()
@click.option("--dataset", default=None, help="Only this dataset (default: every dataset).")
@click.option("--dry-run", is_flag=True, help="Only list what would be re-driven.")
@click.option("--min-age", type=float, default=60.0, show_default=True,
              help="Leave objects younger than this many seconds alone (their own notification may be on its way).")
@click.option("--json", "as_json", is_flag=True)
@app_option
def reconcile(dataset: str | None, dry_run: bool, min_age: float, as_json: bool, app_spec: str | None) -> None:
    """Find every object whose next step is missing from the bucket and re-drive it once (idempotent)."""
    from sluice.infra.broker import make_state
    from sluice.ml.reconcile import find_gaps
    from sluice.ml.reconcile import reconcile as run
    from sluice.service import build_runtime

    settings = _settings()
    if dry_run:
        gaps = find_gaps(_store(settings), make_state(settings), dataset, min_age_s=min_age)
    else:
        runtime = build_runtime(settings, load_app(app_spec))
        try:
            gaps = run(runtime, dataset, min_age_s=min_age)
        finally:
            runtime.broker.close()
    if as_json:
        _echo_json({"dry_run": dry_run, "gaps": [g.to_dict() for g in gaps]})
        return
    for g in gaps:
        click.echo(f"{'would re-drive' if dry_run else 're-driven'} {g.stage:<12} {g.key}  ({g.why})")
    click.echo(f"{len(gaps)} gap{'s' if len(gaps) != 1 else ''}{' found' if dry_run else ' re-driven'}"
               + ("" if gaps or dry_run else ": the chain is complete"))


@click.group()
def deadletter() -> None:
    """Dead letters: stage messages that exhausted their retries, and the SQS dead-letter queue."""


@deadletter.command("list")
@click.option("--json", "as_json", is_flag=True)
def deadletter_list(as_json: bool) -> None:
    """Every dead-letter record and every message in the SQS dead-letter queue."""
    from sluice.core import deadletters
    from sluice.infra import queues

    settings = _settings()
    recs, sqs = deadletters.records(_store(settings)), queues.dead_letter_messages(settings)
    if as_json:
        _echo_json({"records": recs, "sqs": sqs})
        return
    for rec in recs:
        click.echo(deadletters.describe(rec))
    for m in sqs:
        click.echo(f"{m['message_id']}  sqs:{settings.dead_letter_queue}  received {m['receives']} times")
    click.echo(f"{len(recs)} dead-letter records, {len(sqs)} in SQS {settings.dead_letter_queue}"
               + (". `sluice deadletter redrive` sends them back." if recs or sqs else ""))


@deadletter.command("show")
@click.argument("message_id")
def deadletter_show(message_id: str) -> None:
    """One record in full: the message, its attempts and the traceback."""
    from sluice.core import deadletters

    rec = deadletters.find(_store(_settings()), message_id)
    if rec is None:
        raise click.ClickException(f"no single dead letter matches {message_id!r}; see `sluice deadletter list`")
    _echo_json(rec)


@deadletter.command("redrive")
@click.argument("message_ids", nargs=-1)
@click.option("--no-sqs", is_flag=True, help="Leave the SQS dead-letter queue alone.")
@app_option
def deadletter_redrive(message_ids: tuple[str, ...], no_sqs: bool, app_spec: str | None) -> None:
    """Send MESSAGE_IDS (default: every record, and the SQS dead letters) back into the chain."""
    from functools import partial

    from sluice.core import deadletters
    from sluice.infra import queues
    from sluice.service import build_runtime

    runtime = build_runtime(_settings(), load_app(app_spec))
    try:
        move_sqs = None if no_sqs else partial(queues.move_dead_letters_back, runtime.settings)
        done = deadletters.redrive(runtime, list(message_ids) or None, move_sqs=move_sqs)
    finally:
        runtime.broker.close()
    for why in done.skipped:
        click.echo(f"skipped {why}")
    unmatched = [m for m in message_ids if not any(str(r).startswith(m) for r in done.records)
                 and not any(str(s).startswith(m) for s in done.skipped)]
    click.echo(f"re-driven {len(done.records)} records and {done.sqs} SQS dead letters")
    if unmatched:
        raise click.ClickException(f"no dead letter matches {', '.join(map(repr, unmatched))}; "
                                   "`sluice deadletter list` shows their ids (already re-driven ones are under "
                                   "redriven/)")
