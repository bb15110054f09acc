"""`sluice events tail` and `sluice subscribe`: the model events on the SNS topic."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import click

from sluice.commands.common import settings as _settings
from sluice.events.model import MODEL_EVENT_TYPES


@click.command()
@click.option("--sqs-queue", "queue", default=None, help="Subscribe this SQS queue (created if needed).")
@click.option("--http", "url", default=None, help="Subscribe this HTTP(S) endpoint.")
@click.option("--model", "models_", multiple=True, help="Only events of this model (repeatable).")
@click.option("--dataset", "datasets_", multiple=True, help="Only events of this dataset (repeatable).")
@click.option("--type", "types", multiple=True, type=click.Choice(MODEL_EVENT_TYPES),
              help="Only events of this type (repeatable).")
def subscribe(queue: str | None, url: str | None, models_: tuple[str, ...], datasets_: tuple[str, ...],
              types: tuple[str, ...]) -> None:
    """Subscribe a queue or an HTTP endpoint to the model events, with an SNS filter policy; raw CloudEvents."""
    from sluice.infra.subscribe import filter_policy, subscribe_http, subscribe_queue

    if (queue is None) == (url is None):
        raise click.UsageError("give exactly one of --sqs-queue NAME or --http URL")
    settings = _settings()
    policy = filter_policy(models=models_, datasets=datasets_, types=types)
    if queue is not None:
        queue_url, arn = subscribe_queue(settings, queue, policy)
        click.echo(f"subscribed queue {queue} ({queue_url}) to topic {settings.topic}: {arn}")
    else:
        assert url is not None
        arn = subscribe_http(settings, url, policy)
        click.echo(f"subscribed {url} to topic {settings.topic}: {arn}; the endpoint must confirm the "
                   "subscription by fetching the SubscribeURL SNS posts to it first")
    click.echo(f"filter policy: {json.dumps(policy) if policy else 'none (every event)'}")


@click.group()
def events() -> None:
    """Model events on the SNS topic."""


@events.command("tail")
@click.option("--json", "as_json", is_flag=True, help="Print each CloudEvent as one JSON line.")
@click.option("--timeout", type=float, default=0, help="Stop after this many seconds (0: until Ctrl-C).")
@click.option("--count", type=int, default=0, help="Stop after this many events (0: no limit).")
def events_tail(as_json: bool, timeout: float, count: int) -> None:
    """Subscribe a fresh queue to the topic and print events as they arrive."""
    from sluice.infra.subscribe import TemporarySubscription

    settings = _settings()
    seen = 0
    deadline = time.monotonic() + timeout if timeout else None
    stop = threading.Event()
    # SIGTERM (and Ctrl-C) end the loop between two receives, so the `with` removes the queue and subscription.
    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT) if main}
    try:
        with TemporarySubscription(settings) as sub:
            click.echo(f"listening on {settings.topic} via queue {sub.queue_name}", err=True)
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                for doc in sub.receive(wait_s=2):
                    click.echo(json.dumps(doc, sort_keys=True) if as_json else describe(doc))
                    seen += 1
                    if count and seen >= count:
                        return
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stop.is_set():
            click.echo("stopped; removed the queue and its subscription", err=True)


def describe(doc: dict[str, Any]) -> str:
    """One line per event: what happened, the gate's metric, and what caused it."""
    d = doc["data"]
    metric = d.get("metric") or {}
    score = metric.get("candidate")
    t = d.get("transition") or {}
    cause = f" cause {t.get('cause')} by {t.get('by')}: {t.get('reason')}" if t else ""
    # The drop that caused it, as `sluice trace` takes it (the ledger id: the trace id's first 16 digits).
    parent = str(doc.get("traceparent") or "").split("-")
    trace = f" trace={parent[1][:16]}" if len(parent) == 4 and len(parent[1]) == 32 else ""
    return (f"{doc['time']} {doc['type']} {d['model']} v{d['version']} "
            f"{metric.get('name')}={'-' if score is None else f'{score:.4f}'} gate {d.get('outcome')} "
            f"champion v{d.get('champion') or '-'}{cause} id={doc['id']}{trace}")
