"""Dispatch: the one place that knows about the broker.

- `Runtime` turns each registered stage into a Dramatiq actor. Running a stage means: claim the event
  (idempotency), call the handler, quarantine bad input, publish what the handler returned.
- `SqsBridge` turns the bucket's S3 notifications (an SQS queue) into Dramatiq messages.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq import Broker

from sluice.core.app import Pipeline, Route
from sluice.core.context import Context
from sluice.core.errors import ContractError, Defer, InputError, IntegrityError, ModelInputError, SluiceError, clip
from sluice.core.middleware import DeadLetters
from sluice.core.provenance import is_signed
from sluice.core.settings import Settings
from sluice.core.validation import examples, summarize
from sluice.events.model import ModelEvent
from sluice.events.s3 import NotificationDecodeError, ObjectCreated, parse_s3_notification
from sluice.infra.aws import client
from sluice.infra.notify import SnsPublisher
from sluice.infra.online import OnlineStore, make_online
from sluice.infra.state import COMPLETED, StateBackend
from sluice.infra.store import S3Store

log = logging.getLogger("sluice")

DEFAULT_TIME_LIMIT_S = 300
COMPLETED_TTL_S = 7 * 24 * 3600
# Retrying cannot fix these; they are recorded (quarantine, refusal, dead letter) on the first failure.
PERMANENT = (InputError, IntegrityError, ContractError, ModelInputError)


def dataset_of(key: str) -> str:
    """`<stage>/<dataset>/...` -> dataset."""
    parts = key.split("/")
    return parts[1] if len(parts) > 2 else "_unknown"


def object_id(event: ObjectCreated) -> str:
    """A short stable id for one write of one key (the ledger and quarantine entry name)."""
    return hashlib.sha256(event.idempotency_key.encode()).hexdigest()[:16]


class Runtime:
    """The stages of a pipeline as Dramatiq actors on one broker."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        broker: Broker,
        state: StateBackend,
        *,
        store: S3Store | None = None,
        publisher: SnsPublisher | None = None,
        online: OnlineStore | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ):
        self.settings = settings
        self.pipeline = pipeline
        self.broker = broker
        self.state = state
        self.store = store or S3Store(settings)
        self.publisher = publisher or SnsPublisher(settings)
        self.online = online or make_online(settings)
        self.on_event = on_event or (lambda kind, detail: None)
        self.queue_name = settings.namespace
        broker.add_middleware(DeadLetters(self._record_dead_letter))
        self.actors = {route.name: self._declare(route) for route in pipeline.routes}

    def _declare(self, route: Route) -> dramatiq.Actor[Any, Any]:
        def run(payload: dict[str, Any]) -> None:
            self.execute(route.name, payload)

        run.__name__ = run.__qualname__ = route.name
        limit_s = int(route.options.get("time_limit_s", DEFAULT_TIME_LIMIT_S))
        max_retries = int(route.options.get("max_retries", self.settings.max_retries))

        def retry_when(retries: int, exc: BaseException) -> bool:
            return retries < max_retries and not isinstance(exc, PERMANENT)

        return dramatiq.actor(  # type: ignore[no-any-return,call-overload]
            run,
            actor_name=f"{self.settings.namespace}.{route.name}",
            queue_name=self.queue_name,
            broker=self.broker,
            max_retries=max_retries,
            retry_when=retry_when,
            min_backoff=self.settings.min_backoff_ms,
            max_backoff=60_000,
            time_limit=limit_s * 1000,
        )

    def context(self) -> Context:
        """A fresh handler context."""
        return Context(self.settings, self.store, self.state, self.online)

    def dispatch(self, event: ObjectCreated) -> list[str]:
        """Send the event to every stage whose route matches its key; returns the stage names."""
        if event.bucket != self.settings.bucket:
            return []
        names = []
        for route in self.pipeline.match(event.key):
            limit_s = self._contract_time_limit(event.key) if route.options.get("time_limit_from_contract") else None
            if limit_s:
                # A hung fit is killed by Dramatiq's TimeLimit and retried; the limit follows the contract's budget.
                self.actors[route.name].send_with_options(args=(event.to_dict(),), time_limit=limit_s * 1000)
            else:
                self.actors[route.name].send(event.to_dict())
            names.append(route.name)
        return names

    def _contract_time_limit(self, key: str) -> int | None:
        from sluice.core.contract import load_contract

        try:
            return load_contract(self.store, dataset_of(key)).training.time_limit_s
        except SluiceError:
            return None  # the stage itself reports the missing or broken contract

    def execute(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Run stage `name` on one event, exactly once in effect."""
        event = ObjectCreated.from_dict(payload)
        key = f"{name}#{event.idempotency_key}"
        route = next(r for r in self.pipeline.routes if r.name == name)
        prior = self.state.claim(key, int(route.options.get("time_limit_s", DEFAULT_TIME_LIMIT_S)) + 30)
        if prior is not None:
            what = "already done" if prior.status == COMPLETED else "in progress elsewhere"
            log.info("skip %-10s %s (duplicate delivery, %s)", name, event.key, what)
            self.on_event("duplicate", {"stage": name, "key": event.key})
            return prior.result or {}
        ctx = self.context()
        self.on_event("start", {"stage": name, "key": event.key})
        try:
            try:
                if is_signed(event.key):
                    # Woken by a document: act only on one a Sluice stage wrote (core/provenance.py).
                    self.store.verify(event.key, event.version_id)
                effects = self.pipeline.handlers[name](event, ctx)
            except IntegrityError as err:
                result = self.refuse(ctx, name, event, err)
                self.state.complete(key, result, COMPLETED_TTL_S)
                return result
            except Defer as later:
                self.state.release(key)
                raise dramatiq.Retry(delay=int(later.delay_s * 1000)) from None
            except InputError as err:
                result = self.quarantine(ctx, name, event, err)
                self.state.complete(key, result, COMPLETED_TTL_S)
                return result
            published = []
            for effect in effects:
                if isinstance(effect, ModelEvent):
                    self.publisher.publish(effect)
                    published.append(effect.id)
                    self.on_event("published", effect.to_cloudevent())
                    log.info("sent %-10s %s v%s -> topic %s", effect.type, effect.model, effect.version,
                             self.settings.topic)
        except BaseException:
            self.state.release(key)  # let the retry run
            raise
        result = {"outcome": "done", "published": published}
        self.state.complete(key, result, COMPLETED_TTL_S)
        self.on_event("done", {"stage": name, "key": event.key, "object_id": object_id(event)})
        return result

    def quarantine(self, ctx: Context, stage: str, event: ObjectCreated, err: InputError) -> dict[str, Any]:
        """Record bad input with an actionable report; it is never retried."""
        dataset = dataset_of(event.key)
        oid = object_id(event)
        base = f"quarantine/{dataset}/{err.data_version or oid}"
        report = {
            "dataset": dataset,
            "data_version": err.data_version,
            "scope": "file",
            "stage": stage,
            "source": {"bucket": event.bucket, "key": event.key, "etag": event.etag, "version_id": event.version_id},
            "reason": err.reason,
            "message": err.message,
            "what_to_do": err.hint,
            "summary": [
                {"column": f.column, "check": f.check, "rows": f.count, "example_row": f.row,
                 "example_value": None if f.value is None else clip(f.value)}
                for f in summarize(err.failures)
            ],
            "examples": examples(err.failures),
            "failure_count": len(err.failures),
            "quarantined_at": ctx.timestamp(),
            **err.details,
        }
        if stage == "validate" and ctx.store.exists(event.key):
            # Keep the exact bytes beside the report, so the file can be fixed and replayed.
            report["file"] = f"{base}/{event.key.rsplit('/', 1)[-1]}"
            ctx.store.copy(event.key, report["file"], event.version_id)
        ctx.store.put_json(f"{base}/report.json", report)
        ctx.store.put_json(f"ledger/{dataset}/{oid}.json", {
            "key": event.key, "etag": event.etag, "version_id": event.version_id, "outcome": "quarantined",
            "reason": err.reason, "message": str(err), "report": f"{base}/report.json", "at": ctx.timestamp(),
        })
        log.warning("quarantined %s: %s", event.key, err)
        self.on_event("quarantined", report)
        return {"outcome": "quarantined", "report": f"{base}/report.json"}

    def refuse(self, ctx: Context, stage: str, event: ObjectCreated, err: IntegrityError) -> dict[str, Any]:
        """Record that a stage would not act on something no stage wrote (or bytes that changed); never retried.

        An operator who restored the object re-drives the event with `sluice refused redrive`."""
        dataset = dataset_of(event.key)
        oid = object_id(event)
        record = {
            "stage": stage, "dataset": dataset, "id": oid, "outcome": "refused", "reason": "integrity",
            "message": str(err), "event": event.to_dict(), "at": ctx.timestamp(),
            "what_to_do": "Find out who wrote the object (bucket version history, CloudTrail). Restore it or delete "
                          f"it; to run the stage again, `sluice refused redrive {oid}`.",
        }
        key = f"refused/{dataset}/{oid}.json"
        ctx.store.put_json(key, record)
        if not is_signed(event.key):  # an arrival (a drop): its one outcome
            ctx.store.put_json(f"ledger/{dataset}/{oid}.json", {
                "key": event.key, "etag": event.etag, "version_id": event.version_id, "outcome": "refused",
                "reason": "integrity", "message": str(err), "refusal": key, "at": ctx.timestamp()})
        log.error("refused %-10s %s: %s", stage, event.key, err)
        self.on_event("refused", record)
        return {"outcome": "refused", "record": key}

    def _record_dead_letter(self, doc: dict[str, Any]) -> None:
        self.store.put_json(f"deadletter/{doc['actor']}/{doc['message_id']}.json", doc)
        self.on_event("dead-letter", doc)


class SqsBridge:
    """Long-polls the bucket-events queue and hands each S3 record to the runtime.

    A message is deleted only after every record in it was enqueued; a crash before that makes SQS deliver
    it again (at least once), and a message that keeps failing moves to the SQS dead-letter queue.
    """

    def __init__(self, runtime: Runtime, *, wait_s: int = 1):
        self.runtime = runtime
        self.sqs = client("sqs", runtime.settings)
        self.queue_url = self.sqs.get_queue_url(QueueName=runtime.settings.events_queue)["QueueUrl"]
        self.wait_s = wait_s
        self.stopping = threading.Event()

    def poll_once(self) -> int:
        """Receive one batch; returns how many S3 records were dispatched."""
        response = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=self.wait_s
        )
        dispatched = 0
        for message in response.get("Messages", []):
            try:
                events = parse_s3_notification(message["Body"])
            except NotificationDecodeError as exc:
                # Poison: retrying cannot help. Keep it inspectable, then take it off the queue.
                self.runtime._record_dead_letter({
                    "message_id": message["MessageId"], "actor": "bridge", "queue": self.runtime.settings.events_queue,
                    "args": [exc.body[:10_000]], "retries": 0, "traceback": str(exc),
                })
                events = []
            for event in events:
                for stage in self.runtime.dispatch(event):
                    dispatched += 1
                    log.info("got  %-10s %s", stage, event.key)
                    self.runtime.on_event("object-created", {"stage": stage, "key": event.key})
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return dispatched

    def run(self) -> None:
        """Poll until `stop()`."""
        while not self.stopping.is_set():
            try:
                self.poll_once()
            except Exception:  # a flaky endpoint must not kill the bridge; SQS keeps the messages
                log.exception("bridge: polling %s failed; retrying", self.queue_url)
                self.stopping.wait(1.0)

    def start(self) -> threading.Thread:
        """Run in a daemon thread."""
        thread = threading.Thread(target=self.run, name="sluice-sqs-bridge", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Ask the polling loop to finish."""
        self.stopping.set()
