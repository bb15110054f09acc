"""The `sluice` command: the pipeline's own commands here, each other group in `sluice/commands/`."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from sluice.commands import contracts, data, events, features, models, ops, runs, trace, trust
from sluice.commands.common import app_option, dataset_name, load_app
from sluice.commands.common import echo_json as _echo_json
from sluice.commands.common import settings as _settings
from sluice.commands.common import store as _store
from sluice.core.settings import Settings


def setup_logging(verbose: bool = False, fmt: str | None = None) -> None:
    """Concise lines for people (or JSON lines: SLUICE_LOG_FORMAT=json); third-party chatter only with -v."""
    import logging  # here: nothing else `sluice --help` loads needs it
    import os

    from sluice.core import tracing

    try:
        tracing.configure(fmt or os.environ.get("SLUICE_LOG_FORMAT", "text").strip().lower() or "text")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    for noisy in ("botocore", "boto3", "urllib3", "werkzeug", "dramatiq", "flaml", "pika"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("dramatiq.middleware.retries.Retries").setLevel(logging.WARNING)


class _Sluice(click.Group):
    """Turns the failures a user can fix (no emulator, no credentials, no Redis) into one line saying how."""

    def invoke(self, ctx: click.Context) -> Any:
        import sys

        streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Printable(sys.stdout), _Printable(sys.stderr)
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:  # shown by click after this returns, past the escaping streams
            from sluice.core.errors import printable

            if type(exc) is not click.ClickException or printable(exc.message) == exc.message:
                raise  # usage errors quote what the user typed
            raise click.ClickException(printable(exc.message)) from exc
        except Exception as exc:
            from sluice.core.errors import ConfigError, IntegrityError, printable

            # A document no stage wrote, or changed bytes: say which. An unusable setting: say what to set.
            if isinstance(exc, (IntegrityError, ConfigError)):
                raise click.ClickException(printable(str(exc))) from exc
            # botocore and redis are imported only when one of their errors is in hand: `sluice X --help` and
            # the commands that never touch them start without paying for them.
            if not any(c.__module__.partition(".")[0] in ("botocore", "redis") for c in type(exc).__mro__):
                raise
            hint = _how_to_fix(exc)
            if hint is None:
                raise
            raise click.ClickException(hint) from exc
        finally:
            sys.stdout, sys.stderr = streams


class _Printable:
    """A text stream that prints control characters as escapes (`errors.printable`): every command prints keys,
    column names and values that producers chose."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        from sluice.core.errors import printable

        return int(self._stream.write(printable(text) if isinstance(text, str) else text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _how_to_fix(exc: Exception) -> str | None:
    """One line saying how to fix a missing emulator, credentials, bucket or Redis; None for anything else."""
    import redis
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    settings = Settings.from_env()
    where = settings.endpoint_url or "AWS"
    if isinstance(exc, EndpointConnectionError):
        return (f"cannot reach S3/SQS/SNS at {where} ({exc}). Start the emulator (`make localstack-up`, or "
                "`moto_server`) and point AWS_ENDPOINT_URL at it, or unset it to use AWS.")
    if isinstance(exc, NoCredentialsError):
        return ("no AWS credentials. For AWS, configure them as for the AWS CLI; for moto or LocalStack, set "
                "AWS_ENDPOINT_URL (Sluice then uses test credentials).")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket", "AWS.SimpleQueueService.NonExistentQueue", "NotFound", "404"):
            return f"{code} at {where}: bucket {settings.bucket!r} or its queues are missing; run `sluice up` first."
        operation = getattr(exc, "operation_name", "the request")
        message = exc.response.get("Error", {}).get("Message", "")
        if code in ("AccessDenied", "AccessDeniedException", "AuthorizationError", "Forbidden", "403"):
            return (f"{operation} was denied at {where} ({code}: {message}): these credentials lack the permission. "
                    "`sluice iam` prints the policy of each role (producer, contract-owner, worker, model-reader, "
                    "operator).")
        return f"{operation} failed at {where}: {code}: {message}"
    if isinstance(exc, redis.exceptions.ConnectionError):
        return f"cannot reach Redis at {settings.broker_url} ({exc}); start it or set SLUICE_BROKER_URL."
    return None


@click.group(cls=_Sluice)
@click.version_option(package_name="sluice", prog_name="sluice")
@click.option("-v", "--verbose", is_flag=True, help="Also show library logs.")
def main(verbose: bool) -> None:
    """Sluice: drop a file into the bucket, get a validated, trained, benchmarked and promoted model."""
    setup_logging(verbose)


@main.command()
@app_option
def up(app_spec: str | None) -> None:
    """Provision the bucket, queues, topic and one notification per stage of the app (idempotent)."""
    from sluice.infra.provision import provision

    settings = _settings()
    app = load_app(app_spec)
    res = provision(settings, app.routes)
    for change in res.changes:
        click.echo(f"  + {change}")
    click.echo(f"{'provisioned' if res.changes else 'up to date'}: bucket {res.bucket}, queue "
               f"{settings.events_queue} (dead letters: {settings.dead_letter_queue}), topic {res.topic_arn}")
    click.echo(f"app {app.name}: " + ", ".join(f"{r.name} <- {r.prefix}*{r.suffix}" for r in app.routes))


@main.command()
@click.option("--threads", type=int, default=None, help="Worker threads (default SLUICE_WORKER_THREADS or 2).")
@click.option("--metrics-port", type=int, default=None, envvar="SLUICE_METRICS_PORT",
              help="Serve Prometheus metrics at http://0.0.0.0:PORT/metrics (env SLUICE_METRICS_PORT).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="Log lines for people (text, the default) or JSON lines with trace_id, stage, dataset and key "
                   "(env SLUICE_LOG_FORMAT).")
@app_option
def worker(threads: int | None, metrics_port: int | None, log_format: str | None, app_spec: str | None) -> None:
    """Run the app's stages as Dramatiq actors, plus the bridge from the bucket's SQS notifications."""
    from dataclasses import replace

    from sluice.service import start

    if log_format:
        setup_logging(bool(click.get_current_context().find_root().params.get("verbose")), log_format)
    settings = _settings()
    if threads:
        settings = replace(settings, worker_threads=threads)
    app = load_app(app_spec)
    service = start(settings, app=app, bridge_wait_s=10, metrics_port=metrics_port)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    click.echo(f"sluice worker: app {app.name} ({', '.join(r.name for r in app.routes)}), broker "
               f"{settings.broker_url}, bucket {settings.bucket}. Ctrl-C to stop.")
    if service.metrics_server is not None:
        click.echo(f"metrics: http://0.0.0.0:{service.metrics_server.server_port}/metrics")
    done.wait()
    click.echo("stopping: finishing in-flight messages")
    service.stop()


@main.command()
@click.argument("name")
@click.option("--alias", default="champion", show_default=True, type=click.Choice(["champion", "challenger"]))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--bundle", default=None, type=click.Path(exists=True, file_okay=False),
              help="Serve a bundle downloaded with `sluice models download` (no bucket, no swapping).")
@app_option
def serve(name: str, alias: str, host: str, port: int, bundle: str | None, app_spec: str | None) -> None:
    """Serve model NAME over HTTP (POST /predict), swapping to each new champion as it is announced."""
    from sluice.core.errors import SluiceError
    from sluice.serve import serve as run

    def announce(model: Any) -> None:  # once the model is loaded: a name without one is only an error
        what = (f"the bundle in {bundle} (v{model.version}; no bucket, no swapping)" if bundle
                else f"{name}@{alias} (v{model.version})")
        click.echo(f"sluice serve: {what} on http://{host}:{port} (POST /predict, GET /health /ready /model)")

    try:
        run(name, alias, host, port, _settings(), bundle=bundle, app=load_app(app_spec), on_ready=announce)
    except SluiceError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=int)
def ui(host: str, port: int) -> None:
    """A read-only web dashboard: drops, quarantine, runs, the registry, lineage and drift."""
    from sluice.ui import run_ui

    click.echo(f"sluice ui: http://{host}:{port} (read-only; bucket {_settings().bucket}). Ctrl-C to stop.")
    run_ui(host, port, _settings())


MAX_PUT_BYTES = 5 * 2**30  # S3's limit for one PUT (`put_file` sends one, so its checksum covers the object)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dataset", required=True, callback=dataset_name,
              help="Dataset name; its contract is contracts/NAME.yaml.")
@click.option("--as", "name", default=None, help="Object name under incoming/NAME/ (default: the file's name).")
@click.option("--labels", is_flag=True, help="FILE holds labels (entity, label time, target): upload to labels/.")
def drop(file: Path, dataset: str, name: str | None, labels: bool) -> None:
    """Upload FILE (CSV, CSV.GZ or Parquet) to incoming/DATASET/, with its SHA-256 checksum."""
    from sluice.core.keys import DROP_FORMATS

    settings = _settings()
    key = f"{'labels' if labels else 'incoming'}/{dataset}/{name or file.name}"
    if not key.lower().endswith(DROP_FORMATS):
        raise click.ClickException(
            f"{name or file.name}: Sluice reads {', '.join(DROP_FORMATS)} files, so the worker would quarantine this "
            "one. Export it as CSV or Parquet, or name it for its content with --as (e.g. --as data.csv).")
    size = file.stat().st_size
    if size > MAX_PUT_BYTES:
        raise click.ClickException(
            f"{file} is {size / 2**30:.1f} GiB: S3 takes at most 5 GiB in one upload, and a worker reads at most "
            "2 GiB by default (the contract's limits.max_file_bytes). Split it into several files (each is its own "
            "drop, and the debounce trains on them together), or compress it (.csv.gz).")
    sha = _store(settings).put_file(key, file)
    click.echo(f"dropped {file} -> s3://{settings.bucket}/{key} (sha256 {sha[:12]}…, the data version if it validates)")


def _say_once(said: dict[str, str], gist: str, key: str, *lines: str) -> None:
    """A problem's lines, the first time `status` meets it; later drops point to the first one (`said`: gist -> key)."""
    if gist in said:
        click.echo(f"              the same problem as {said[gist]}")
        return
    said[gist] = key
    for line in filter(None, lines):
        click.echo(f"              {line}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@app_option
def status(as_json: bool, app_spec: str | None) -> None:
    """Per dataset: what arrived, where it is in the chain, the quarantine; and the dead letters."""
    from sluice.infra.broker import make_state
    from sluice.ml.status import dataset_status, datasets, dead_letters

    settings = _settings()
    app = load_app(app_spec)
    store = _store(settings)
    state, redis_down = _state_or_none(settings, make_state)
    report: dict[str, Any] = {
        "bucket": settings.bucket,
        "datasets": [dataset_status(store, state, d, pipeline=app) for d in datasets(store)],
        "dead_letters": dead_letters(store),
        "sqs_dead_letters": _sqs_dlq_depth(settings),
        **({"redis": redis_down} if redis_down else {}),
    }
    if as_json:
        _echo_json(report)
        return
    if redis_down:
        click.echo(f"{redis_down}: work in progress shows as waiting (its claims are in Redis); the rest is read "
                   "from the bucket")
    for ds in report["datasets"]:
        m = ds["model"]
        plural = "" if m["versions"] == 1 else "s"
        click.echo(f"dataset {ds['dataset']}: model {m['name']}, {m['versions']} version{plural}, champion "
                   f"{'v' + str(m['champion']) if m['champion'] else '-'}")
        said: dict[str, str] = {}  # a quarantine message (with the file name taken out) -> the first file it was for
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
            if a.get("owner"):
                extra += f" (by {a['owner']})"
            for leak in a.get("leakage", []):
                extra += f" [LEAK? {', '.join(leak['columns'])}: {leak['action']}]"
            if a.get("replayed"):
                extra += f" (quarantined, then replayed {a['replayed']}x after a contract fix: the replay has its line)"
            click.echo(f"  {a['stage']:<11} {a['key']}{extra}")
            if a["outcome"] in ("quarantined", "failed", "refused") and not a.get("replayed"):
                _say_once(said, a["message"].replace(a["key"], "<file>"), a["key"], a["message"])
            told = a.get("training")  # the train stage quarantined its feature set: where this drop's path ended
            if told:
                gist = f"training refused: {told['message']}"
                _say_once(said, gist, a["key"], gist, told.get("what_to_do") or "")
            if a.get("what_to_do"):
                click.echo(f"              {a['what_to_do']}")
            elif a["outcome"] == "refused" and a.get("refusal"):  # recorded before the ledger said what to do
                click.echo(f"              to run the stage again once it is fixed: `sluice refused redrive "
                           f"{str(a['refusal']).rsplit('/', 1)[-1].removesuffix('.json')}`")
        if not ds["arrivals"]:
            click.echo("  (nothing dropped yet)")
        for r in ds.get("refused", []):
            click.echo(f"  refused     {r['stage']} {r['event']['key']}: "
                       f"{str(r.get('message', '')).removeprefix(r['event']['key'] + ': ').split(';')[0]}")
            click.echo(f"              once it is restored: `sluice refused redrive {r['id']}`")
        for bad in ds.get("untrusted", []):
            click.echo(f"  untrusted   {bad['key']}: {bad['problem'].removeprefix(bad['key'] + ': ').split(';')[0]}"
                       "; left out here, refused by the stages (`sluice refused list`, `sluice models verify`)")
        if ds.get("waiting"):
            w = ds["waiting"]
            click.echo(f"  waiting     training of {w['feature_set_version']} starts in {w['starts_in_s']:.0f}s "
                       "(coalescing drops)" if w["starts_in_s"] else
                       f"  waiting     training of {w['feature_set_version']} is due; waiting for a worker")
        for t in ds["training"]:
            loss = t.get("best_loss")
            click.echo(f"  {'interrupted' if t['status'] == 'interrupted' else 'training':<11} {t['run_id']}: "
                       f"{t['trials']} trials, best loss "
                       f"{'-' if loss is None else f'{loss:.4f}'} after {t.get('elapsed_s', 0)}s of {t['budget_s']}s")
    click.echo(f"dead letters: {len(report['dead_letters'])} recorded, "
               f"{report['sqs_dead_letters']} in SQS {settings.dead_letter_queue}")
    for d in report["dead_letters"]:
        last = (d.get("traceback") or "").strip().splitlines()[-1:] or [""]
        click.echo(f"  {d['actor']} {d['message_id']} after {d.get('attempts', d['retries'])} attempts: {last[0]}")


def _state_or_none(settings: Settings, make_state: Any) -> tuple[Any, str | None]:
    """Redis's state, or, when Redis cannot be reached, an empty one and why: `status` reads the bucket, and an
    operator needs it most on the day Redis is down."""
    import redis

    from sluice.core.memory import MemoryState

    state = make_state(settings)
    try:
        state.record("status-probe")
    except redis.exceptions.ConnectionError as exc:
        return MemoryState(), f"Redis is unreachable at {settings.broker_url} ({exc})"
    return state, None


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


@main.command()
@click.argument("project")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write it (default: ./PROJECT).")
def new(project: str, folder: Path | None) -> None:
    """Scaffold PROJECT: an app.py with a stage and a check of its own beside the built-in chain, a contract, a
    test on moto and a README."""
    from sluice.scaffold import write

    target = folder or Path(project)
    try:
        written = write(project, target)
    except (ValueError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from exc
    for path in written:
        click.echo(f"  + {path}")
    click.echo(f"created {target}: `cd {target} && pytest`, then `sluice worker --app app:app` (see its README)")


@main.command()
@click.option("--budget", type=float, default=10.0, show_default=True, help="FLAML time budget, seconds.")
@click.option("--timeout", type=float, default=150.0, show_default=True)
def demo(budget: float, timeout: float) -> None:
    """The whole chain on an embedded moto server and an in-memory broker."""
    from sluice.demo import run_demo

    sys.exit(run_demo(budget=budget, timeout=timeout))


for _command in (models.models, events.events, events.subscribe, contracts.contract, data.data, data.quarantine,
                 runs.runs, features.features, ops.reconcile, ops.deadletter, trust.iam, trust.refused,
                 trace.trace):
    main.add_command(_command)


if __name__ == "__main__":
    main()
