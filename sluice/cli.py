"""The `sluice` command."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from sluice.core.contract import contract_key, infer_contract, parse_contract
from sluice.core.errors import ContractError, SluiceError
from sluice.core.settings import Settings
from sluice.core.validation import read_sample
from sluice.events.model import MODEL_EVENT_TYPES

log = logging.getLogger("sluice")


def _settings() -> Settings:
    return Settings.from_env()


def _store(settings: Settings) -> Any:
    from sluice.infra.store import S3Store

    return S3Store(settings)


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


def setup_logging(verbose: bool = False) -> None:
    """Concise lines for people; third-party chatter only with -v."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    for noisy in ("botocore", "boto3", "urllib3", "werkzeug", "dramatiq", "flaml", "pika"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("dramatiq.middleware.retries.Retries").setLevel(logging.WARNING)


class _Sluice(click.Group):
    """Turns the failures a user can fix (no emulator, no credentials, no Redis) into one line saying how."""

    def invoke(self, ctx: click.Context) -> Any:
        import redis
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        settings = Settings.from_env()
        where = settings.endpoint_url or "AWS"
        try:
            return super().invoke(ctx)
        except EndpointConnectionError as exc:
            raise click.ClickException(
                f"cannot reach S3/SQS/SNS at {where} ({exc}). Start the emulator (`make localstack-up`, or "
                "`moto_server`) and point AWS_ENDPOINT_URL at it, or unset it to use AWS.") from exc
        except NoCredentialsError as exc:
            raise click.ClickException(
                "no AWS credentials. For AWS, configure them as for the AWS CLI; for moto or LocalStack, set "
                "AWS_ENDPOINT_URL (Sluice then uses test credentials).") from exc
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "AWS.SimpleQueueService.NonExistentQueue", "NotFound", "404"):
                raise click.ClickException(f"{code} at {where}: bucket {settings.bucket!r} or its queues are "
                                           "missing; run `sluice up` first.") from exc
            raise
        except redis.exceptions.ConnectionError as exc:
            raise click.ClickException(f"cannot reach Redis at {settings.broker_url} ({exc}); start it or set "
                                       "SLUICE_BROKER_URL.") from exc


@click.group(cls=_Sluice)
@click.option("-v", "--verbose", is_flag=True, help="Also show library logs.")
def main(verbose: bool) -> None:
    """Sluice: drop a file into the bucket, get a validated, trained, benchmarked and promoted model."""
    setup_logging(verbose)


@main.command()
def up() -> None:
    """Provision the bucket, queues, topic and notifications (idempotent)."""
    from sluice.handlers import build_pipeline
    from sluice.infra.provision import provision

    settings = _settings()
    res = provision(settings, build_pipeline().routes)
    for change in res.changes:
        click.echo(f"  + {change}")
    click.echo(f"{'provisioned' if res.changes else 'up to date'}: bucket {res.bucket}, queue "
               f"{settings.events_queue} (dead letters: {settings.dead_letter_queue}), topic {res.topic_arn}")


@main.command()
@click.option("--threads", type=int, default=None, help="Worker threads (default SLUICE_WORKER_THREADS or 2).")
def worker(threads: int | None) -> None:
    """Run the handlers as Dramatiq actors, plus the bridge from the bucket's SQS notifications."""
    from dataclasses import replace

    from sluice.core.service import start

    settings = _settings()
    if threads:
        settings = replace(settings, worker_threads=threads)
    service = start(settings, bridge_wait_s=10)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    click.echo(f"sluice worker: broker {settings.broker_url}, bucket {settings.bucket}. Ctrl-C to stop.")
    done.wait()
    click.echo("stopping: finishing in-flight messages")
    service.stop()


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dataset", required=True, help="Dataset name; its contract is contracts/NAME.yaml.")
@click.option("--as", "name", default=None, help="Object name under incoming/NAME/ (default: the file's name).")
@click.option("--labels", is_flag=True, help="FILE holds labels (entity, label time, target): upload to labels/.")
def drop(file: Path, dataset: str, name: str | None, labels: bool) -> None:
    """Upload FILE (CSV, CSV.GZ or Parquet) to incoming/DATASET/, with its SHA-256 checksum."""
    settings = _settings()
    key = f"{'labels' if labels else 'incoming'}/{dataset}/{name or file.name}"
    sha = _store(settings).put_file(key, file)
    click.echo(f"dropped {file} -> s3://{settings.bucket}/{key} (sha256 {sha[:12]}…, the data version if it validates)")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Per dataset: what arrived, where it is in the chain, the quarantine; and the dead letters."""
    from sluice.core.status import dataset_status, datasets, dead_letters
    from sluice.infra.broker import make_state

    settings = _settings()
    store = _store(settings)
    state = make_state(settings)
    report: dict[str, Any] = {
        "bucket": settings.bucket,
        "datasets": [dataset_status(store, state, d) for d in datasets(store)],
        "dead_letters": dead_letters(store),
        "sqs_dead_letters": _sqs_dlq_depth(settings),
    }
    if as_json:
        _echo_json(report)
        return
    for ds in report["datasets"]:
        m = ds["model"]
        click.echo(f"dataset {ds['dataset']}: model {m['name']}, {m['versions']} versions, champion "
                   f"{'v' + str(m['champion']) if m['champion'] else '-'}")
        for a in ds["arrivals"]:
            dv = (a.get("data_version") or "")[:12]
            extra = f" data {dv}" if dv else ""
            if a.get("rows_quarantined"):
                extra += f" ({a['rows_quarantined']} rows quarantined)"
            if a.get("drift"):
                d = a["drift"]
                extra += (f" [drift: {len(d['drifted_columns'])} of {len(d['psi'])} columns over PSI "
                          f"{d['psi_threshold']}{', DRIFTED' if d['drifted'] else ''}]")
            if a.get("versions"):
                extra += f" -> v{','.join(map(str, a['versions']))}"
            click.echo(f"  {a['stage']:<11} {a['key']}{extra}")
            if a["outcome"] == "quarantined":
                click.echo(f"              {a['message']}")
        if not ds["arrivals"]:
            click.echo("  (nothing dropped yet)")
        for t in ds["training"]:
            loss = t.get("best_loss")
            click.echo(f"  training    {t['run_id']}: {t['trials']} trials, best loss "
                       f"{'-' if loss is None else f'{loss:.4f}'} after {t.get('elapsed_s', 0)}s of {t['budget_s']}s")
    click.echo(f"dead letters: {len(report['dead_letters'])} recorded, "
               f"{report['sqs_dead_letters']} in SQS {settings.dead_letter_queue}")
    for d in report["dead_letters"]:
        last = (d.get("traceback") or "").strip().splitlines()[-1:] or [""]
        click.echo(f"  {d['actor']} {d['message_id']} after {d['retries']} retries: {last[0]}")


def _sqs_dlq_depth(settings: Settings) -> int | None:
    from botocore.exceptions import ClientError

    from sluice.infra.aws import client

    sqs = client("sqs", settings)
    try:
        url = sqs.get_queue_url(QueueName=settings.dead_letter_queue)["QueueUrl"]
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    except ClientError:
        return None
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


@main.group()
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


@main.command()
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


@main.group()
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
    with TemporarySubscription(settings) as sub:
        click.echo(f"listening on {settings.topic} via queue {sub.queue_name}", err=True)
        while deadline is None or time.monotonic() < deadline:
            for doc in sub.receive(wait_s=2):
                if as_json:
                    click.echo(json.dumps(doc, sort_keys=True))
                else:
                    d = doc["data"]
                    click.echo(f"{doc['time']} {doc['type']} {d['model']} v{d['version']} "
                               f"{d['metric']['name']}={d['metric']['candidate']:.4f} gate {d.get('outcome')} "
                               f"champion v{d.get('champion') or '-'} id={doc['id']}")
                seen += 1
                if count and seen >= count:
                    return


@main.group()
def contract() -> None:
    """Dataset contracts."""


@contract.command("infer")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dataset", required=True)
@click.option("--target", required=True, help="The column to predict.")
@click.option("--budget", type=float, default=10.0, show_default=True, help="Training time budget, seconds.")
@click.option("--debounce", type=float, default=30.0, show_default=True,
              help="Seconds of quiet after the last drop before training (drops in between make one run).")
def contract_infer(file: Path, dataset: str, target: str, budget: float, debounce: float) -> None:
    """Write a contract inferred from a sample FILE to stdout; review it, then `sluice contract put`."""
    try:
        frame = read_sample(file.name, file.read_bytes())
        click.echo(infer_contract(frame, dataset, target, budget, debounce).to_yaml(), nl=False)
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc


@contract.command("put")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def contract_put(file: Path) -> None:
    """Check a contract and upload it to contracts/<dataset>.yaml."""
    settings = _settings()
    try:
        parsed = parse_contract(file.read_text(), source=str(file))
    except ContractError as exc:
        raise click.ClickException(str(exc)) from exc
    key = contract_key(parsed.dataset)
    store = _store(settings)
    text = parsed.to_yaml().encode()
    # Every version is kept under its fingerprint; data versions record which one validated them.
    store.put(f"contract-versions/{parsed.dataset}/{parsed.fingerprint()[:12]}.yaml", text)
    store.put(key, text, content_type="application/yaml")
    click.echo(f"contract for {parsed.dataset!r} -> s3://{settings.bucket}/{key} (version {parsed.fingerprint()[:12]})")


@main.group()
def data() -> None:
    """Data versions."""


@data.command("list")
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True)
def data_list(dataset: str, as_json: bool) -> None:
    """The dataset's snapshot: its data versions, oldest first, with rows, source, contract and drift."""
    from sluice.core.status import data_versions

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


@main.group()
def runs() -> None:
    """Training runs: the experiment log."""


@runs.command("list")
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True)
def runs_list(dataset: str, as_json: bool) -> None:
    """Runs of DATASET, oldest first, and any still training."""
    from sluice.core import runs as r

    found = r.list_runs(_store(_settings()), dataset)
    if as_json:
        _echo_json(found)
        return
    if not found:
        click.echo(f"no runs for dataset {dataset!r}")
    for run in found:
        if "holdout" not in run:
            loss = run.get("best_loss")
            click.echo(f"{run['run_id']}  {run.get('status', 'running'):<9} {run.get('trials', 0)} trials, best loss "
                       f"{'-' if loss is None else f'{loss:.4f}'} ({run.get('at', '')})")
            continue
        m = run["metric"]
        click.echo(f"{run['run_id']}  {run['finished_at']}  {run['best_estimator']:<10} {m}="
                   f"{run['holdout']['metrics'][m]:.4f} (baseline {run['holdout']['baseline'][m]:.4f})  "
                   f"{run.get('trials', {}).get('count', '?')} trials  features {run['feature_set_version']}  "
                   f"{len(run['data_versions'])} data versions")


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def runs_show(run_id: str, as_json: bool) -> None:
    """One run: parameters, best configuration, metrics, inputs, durations, environment, artifacts."""
    from sluice.core import runs as r

    try:
        run = r.find_run(_store(_settings()), run_id)
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        _echo_json(run)
        return
    h = run["holdout"]
    click.echo(f"run {run['run_id']} of {run['dataset']} ({run['task']}), finished {run['finished_at']}")
    click.echo(f"  best {run['best_estimator']} {json.dumps(run['best_config'], sort_keys=True)}")
    warm = run.get("warm_start")
    click.echo(f"  {run.get('trials', {}).get('count', '?')} trials, budget {run['params']['time_budget_s']}s, "
               f"warm start {'-' if not warm else ('used' if warm['used'] else 'requested, NOT used')}")
    click.echo(f"  holdout {h['rows']} rows (train {h['train_rows']}): " + ", ".join(
        f"{k}={v:.4f} (baseline {h['baseline'][k]:.4f})" for k, v in h["metrics"].items()))
    top = list(run.get("feature_importance", {}).items())[:5]
    click.echo("  top features: " + ", ".join(f"{k} {v:.1%}" for k, v in top))
    click.echo(f"  inputs: features {run['feature_set_version']}, data versions "
               + ", ".join(v[:12] for v in run["data_versions"]))
    click.echo("  durations: " + ", ".join(f"{k} {v}s" for k, v in run["durations_s"].items()))
    env = run["environment"]
    click.echo(f"  environment: python {env['python']}, code {env.get('code', {})}, "
               + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v))
    for name, a in run["artifacts"].items():
        click.echo(f"  artifact {name:<11} s3://{_settings().bucket}/{a['key']} sha256 {a['sha256'][:16]}…")


@runs.command("compare")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--json", "as_json", is_flag=True)
def runs_compare(run_a: str, run_b: str, as_json: bool) -> None:
    """Metrics, configuration and inputs of two runs side by side."""
    from sluice.core import runs as r

    store = _store(_settings())
    try:
        diff = r.compare(r.find_run(store, run_a), r.find_run(store, run_b))
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        _echo_json(diff)
        return
    a, b = diff["runs"]
    click.echo(f"{'':22} {a:>18} {b:>18}")
    for m, (x, y) in diff["metrics"].items():
        click.echo(f"{m:22} {x:18.4f} {y:18.4f}")
    for name in ("holdout_rows", "best_estimator", "feature_set_version", "trials", "fit_seconds"):
        x, y = diff[name]
        click.echo(f"{name:22} {x!s:>18} {y!s:>18}")
    for k, (x, y) in diff["config"].items():
        click.echo(f"config.{k:15} {x!s:>18} {y!s:>18}")
    dv = diff["data_versions"]
    click.echo(f"data versions: {dv['shared']} shared, only in {a}: {[v[:12] for v in dv['only_a']]}, "
               f"only in {b}: {[v[:12] for v in dv['only_b']]}")


@runs.command("reproduce")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def runs_reproduce(run_id: str, as_json: bool) -> None:
    """Refit RUN's best configuration on its recorded inputs and say whether the metrics match."""
    from sluice.core import runs as r

    store = _store(_settings())
    try:
        result = r.reproduce(store, r.find_run(store, run_id))
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        _echo_json(result)
    else:
        for m, v in result["reproduced"].items():
            click.echo(f"{m:10} recorded {result['recorded'][m]:.6f}  reproduced {v:.6f}")
        verdict = "MATCH" if result["match"] else "DIFFERENT"
        click.echo(f"{verdict}: max |difference| {result['max_abs_difference']:.2e} on {result['holdout_rows']} "
                   f"holdout rows ({result['estimator']} refitted on {result['train_rows']} rows)")
    if not result["match"]:
        sys.exit(1)


@runs.command("cancel")
@click.argument("dataset")
def runs_cancel(dataset: str) -> None:
    """Ask the running training of DATASET to stop (it is recorded as cancelled, not retried)."""
    from sluice.core import runs as r

    store = _store(_settings())
    running = [run for run in r.list_runs(store, dataset) if run.get("status") == "running"]
    for run in running:
        store.put_json(f"runs/{dataset}/{run['run_id']}/cancel.json", {"requested": True})
        click.echo(f"cancelling {run['run_id']} ({run.get('trials', 0)} trials so far)")
    if not running:
        click.echo(f"no training of {dataset!r} is running")


@main.group()
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


@main.group()
def quarantine() -> None:
    """What validation split out, and replaying it."""


@quarantine.command("list")
@click.argument("dataset", required=False)
@click.option("--json", "as_json", is_flag=True)
def quarantine_list(dataset: str | None, as_json: bool) -> None:
    """Quarantined files and rows, oldest first."""
    from sluice.core import quarantine as q

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

    from sluice.core import quarantine as q
    from sluice.core.validation import REASONS, ROW

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
    click.echo(f"  what to do: {r['what_to_do']}")
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

    from sluice.core import quarantine as q

    try:
        keys = q.replay(_store(_settings()), dataset, data_version, datetime.now(UTC).isoformat())
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc
    for key in keys:
        click.echo(f"replaying as {key}")
    if not keys:
        click.echo("nothing to replay (everything quarantined was already replayed under this contract)")
    else:
        click.echo("the worker validates them now; see `sluice status` or `sluice data list`")


@main.command()
@click.option("--budget", type=float, default=10.0, show_default=True, help="FLAML time budget, seconds.")
@click.option("--timeout", type=float, default=150.0, show_default=True)
def demo(budget: float, timeout: float) -> None:
    """The whole chain on an embedded moto server and an in-memory broker."""
    from sluice.demo import run_demo

    sys.exit(run_demo(budget=budget, timeout=timeout))


if __name__ == "__main__":
    main()
