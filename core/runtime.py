"""Dispatch: the one place that knows about the broker.

- `Runtime` turns each registered stage into a Dramatiq actor. Running a stage means: claim the event
  (idempotency), call the handler, quarantine bad input, publish what the handler returned.
- `SqsBridge` turns the bucket's S3 notifications (an SQS queue) into Dramatiq messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dramatiq
from dramatiq import Broker

from sluice.core import keys, tracing
from sluice.core.app import NewObject, Pipeline, Route
from sluice.core.context import Context
from sluice.core.errors import (
    AppError,
    ContractError,
    Defer,
    InputError,
    IntegrityError,
    ModelInputError,
    WorkerKilled,
    clip,
    examples,
    summarize,
)
from sluice.core.leases import WORKER_ID, Heartbeat
from sluice.core.middleware import DEFERRALS, DeadLetters, InFlight, attempts
from sluice.core.outputs import RecordingStore
from sluice.core.ports import COMPLETED, ObjectStore, OnlineStore, Publisher, StateBackend
from sluice.core.provenance import is_signed
from sluice.core.settings import Settings
from sluice.events.model import ModelEvent
from sluice.events.s3 import NotificationDecodeError, ObjectCreated, parse_s3_notification

log = logging.getLogger("sluice")

DEFAULT_TIME_LIMIT_S = 300
# A completed record only absorbs duplicate deliveries (which arrive within minutes); the bucket is the truth.
COMPLETED_TTL_S = 3600


def route_time_limit_s(route: Route) -> int:
    """A stage's time limit unless its message carries another (training: the contract's)."""
    return int(route.options.get("time_limit_s", DEFAULT_TIME_LIMIT_S))


def claim_key(stage: str, event: ObjectCreated) -> str:
    """The idempotency key of one stage run on one event."""
    return f"{stage}#{event.idempotency_key}"


# Stages that give an arrival (a dropped file) its outcome in the ledger.
ARRIVAL_STAGES = ("validate", "labels")


def published_key(model: str, event_id: str) -> str:
    """Where the publication of one model event is recorded."""
    return keys.Published(model, event_id).key


def publish_once(publisher: Publisher, store: ObjectStore, event: ModelEvent, *,
                 record_to: ObjectStore | None = None) -> bool:
    """The one path a model event takes to the topic (the register stage and the CLI's lifecycle commands):
    publish, then record the publication (`published/`), so a re-run does not send it again. False when it
    was already published. A crash between the two sends it twice, with the same CloudEvent id: consumers
    de-duplicate on it. `record_to` is where the record is written (a stage's recording store), default `store`.
    """
    if store.exists(published_key(event.model, event.id)):
        return False
    publisher.publish(event)
    (record_to or store).put_json(published_key(event.model, event.id),
                                  {"published_at": datetime.now(UTC).isoformat(), "event": event.to_cloudevent()})
    return True
# Retrying cannot fix these; they are recorded (quarantine, refusal, dead letter) on the first failure.
PERMANENT = (InputError, IntegrityError, ContractError, ModelInputError, AppError, WorkerKilled)
# Deliveries of one message that began and never ended before it is dead-lettered: Dramatiq redelivers a dead
# worker's messages without counting them as retries, so a file that kills its worker (out of memory, a native
# crash) would otherwise kill every worker that takes it, forever. Counted per message id, not per retry: a
# redelivery that finds the dead worker's lease still held is retried (a new retry count) before it runs.
MAX_KILLED_ATTEMPTS = 3
KILLED_COUNT_TTL_S = 24 * 3600


def handler_effects(stage: str, result: Any) -> list[ModelEvent | NewObject]:
    """What a handler returned, as effects: None, one model event or new object, or a list of them. Anything else
    is a mistake in the handler, said before any effect runs (never silently dropped)."""
    if result is None:
        return []
    items = list(result) if isinstance(result, list | tuple) else [result]
    for item in items:
        if not isinstance(item, ModelEvent | NewObject):
            raise AppError(
                f"stage {stage!r} returned a {type(item).__module__}.{type(item).__qualname__}; a handler returns "
                "None, or a list of model events (sluice.events.model.ModelEvent, published on the topic) and new "
                "objects (sluice.NewObject(key, body), written to the bucket). Return [] when there is nothing to do.")
    return items


def dataset_of(key: str) -> str:
    """`<stage>/<dataset>/...` -> dataset."""
    return keys.dataset_of(key)


def _trace() -> dict[str, str]:
    """`{"trace_id": ...}` of the stage being run, for the records it writes; empty outside a traced stage."""
    trace_id = tracing.current().get("trace_id")
    return {"trace_id": trace_id} if trace_id else {}


def _attempt(proxy: Any) -> str:
    """The id of one attempt: the Dramatiq message's and its retry count (a random one when run directly)."""
    if proxy is not None:
        return f"{proxy.message_id[:8]}.{int(proxy.options.get('retries', 0))}"
    return uuid.uuid4().hex[:8]


def began_key(claim: str, message: Any) -> str:
    """What counts the beginnings of a stage's message (`StateBackend.began`): its claim key and message id. Only
    the ends a process records clear it; a busy retry neither begins nor ends."""
    return f"{claim}#{message.message_id if message is not None else uuid.uuid4().hex[:8]}"


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
        store: ObjectStore,
        publisher: Publisher,
        online: OnlineStore,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        contract_time_limit: Callable[[ObjectStore, str], int | None] | None = None,
    ):
        """`contract_time_limit(store, key)`: the time limit of a `time_limit_from_contract` stage on `key`
        (ml/contract.py's `training_time_limit_s`), or None for the route's own."""
        self.settings = settings
        self.pipeline = pipeline
        self.broker = broker
        self.state = state
        self.store = store
        self.publisher = publisher
        self.online = online
        self.on_event = on_event or (lambda kind, detail: None)
        self.contract_time_limit = contract_time_limit
        self.queue_name = settings.namespace
        self.inflight = InFlight()
        broker.add_middleware(self.inflight)
        broker.add_middleware(DeadLetters(self._record_dead_letter))
        self.heartbeat = Heartbeat(state, settings.lease_ttl_s)
        self.routes = {route.name: route for route in pipeline.routes}
        self.actors = {route.name: self._declare(route) for route in pipeline.routes}

    def _declare(self, route: Route) -> dramatiq.Actor[Any, Any]:
        def run(payload: dict[str, Any]) -> None:
            self.execute(route.name, payload)

        run.__name__ = run.__qualname__ = route.name
        max_retries = int(route.options.get("max_retries", self.settings.max_retries))

        def retry_when(retries: int, exc: BaseException) -> bool:
            # A Retry is control flow (a deferral, or a duplicate waiting for a live holder), bounded by the
            # debounce or the holder's time limit; only failures count against max_retries.
            if isinstance(exc, dramatiq.Retry):
                return True
            if isinstance(exc, PERMANENT):
                return False
            message = self.inflight.current()
            failed_before = retries - (attempts(message)[1] if message is not None else 0)
            return failed_before < max_retries

        return dramatiq.actor(  # type: ignore[no-any-return,call-overload]
            run,
            actor_name=f"{self.settings.namespace}.{route.name}",
            queue_name=self.queue_name,
            broker=self.broker,
            max_retries=max_retries,
            retry_when=retry_when,
            min_backoff=self.settings.min_backoff_ms,
            max_backoff=60_000,
            time_limit=route_time_limit_s(route) * 1000,
        )

    def context(self) -> Context:
        """A fresh handler context."""
        return Context(self.settings, self.store, self.state, self.online, extensions=self.pipeline.extensions)

    def dispatch(self, event: ObjectCreated) -> list[str]:
        """Send the event to every stage whose route matches its key; returns the stage names."""
        if event.bucket != self.settings.bucket:
            return []
        names = []
        for route in self.pipeline.match(event.key):
            self.send(route.name, event)
            names.append(route.name)
        return names

    def send(self, stage: str, event: ObjectCreated) -> None:
        """Enqueue one stage for one event, with its time limit."""
        route = self.routes[stage]
        limit_s = self._contract_time_limit(event.key) if route.options.get("time_limit_from_contract") else None
        if limit_s:
            # A hung fit is killed by Dramatiq's TimeLimit and retried; the limit follows the contract's budget,
            # and so does the claim's lease (see `execute`).
            self.actors[stage].send_with_options(args=(event.to_dict(),), time_limit=limit_s * 1000)
        else:
            self.actors[stage].send(event.to_dict())

    def _contract_time_limit(self, key: str) -> int | None:
        return self.contract_time_limit(self.store, key) if self.contract_time_limit is not None else None

    def _time_limit_s(self, route: Route, message: Any) -> float:
        """The one number: the message's time limit (what Dramatiq enforces) bounds how long its lease lives."""
        if message is not None:
            limit_ms = message.options.get("time_limit") or self.actors[route.name].options.get("time_limit")
            if limit_ms:
                return float(limit_ms) / 1000
        return float(route_time_limit_s(route))

    def _retry(self, message: Any, delay_s: float) -> dramatiq.Retry:
        """A control-flow retry: counted as a deferral, not a failure (see `retry_when`)."""
        if message is not None:
            message.options[DEFERRALS] = int(message.options.get(DEFERRALS, 0)) + 1
        return dramatiq.Retry(delay=max(1, int(delay_s * 1000)))

    def execute(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Run stage `name` on one event, exactly once in effect.

        The claim is a lease owned by this execution and renewed while it runs. A duplicate whose holder is
        alive is retried later; one whose holder died finds the lease lapsed and runs. A completed record only
        short-cuts a duplicate while every output it names is still in the bucket.
        """
        event = ObjectCreated.from_dict(payload)
        message = self.inflight.current()
        with tracing.bound(trace_id=self.trace_id(name, event, message), stage=name, dataset=dataset_of(event.key),
                           key=event.key):
            return self._execute(name, event, message)

    def _document_trace(self, key: str) -> str | None:
        """The trace id a (signed, verified) manifest records; None when it has none or cannot be read: the stage
        itself then refuses or retries it as usual."""
        try:
            doc = self.store.get_json(key)
        except Exception:
            return None
        value = doc.get("trace_id") if isinstance(doc, dict) else None
        return value if isinstance(value, str) and tracing.parse_traceparent(f"00-{value}-{'1' * 16}-01") else None

    def _execute(self, name: str, event: ObjectCreated, message: Any) -> dict[str, Any]:
        key = claim_key(name, event)
        route = self.routes[name]
        owner = f"{WORKER_ID}:{message.message_id if message is not None else uuid.uuid4().hex[:12]}"
        prior = self.state.claim(key, owner, self.settings.lease_ttl_s)
        if prior is not None and prior.status == COMPLETED:
            # A record without the list (written before leases existed) cannot be checked: run again, safely.
            outputs = (prior.result or {}).get("outputs", ["(not recorded)"])
            missing = [k for k in outputs if not self.store.exists(k)]
            if not missing:
                log.info("skip %-10s %s (duplicate delivery, already done)", name, event.key)
                self.on_event("duplicate", {"stage": name, "key": event.key})
                at = tracing.now()
                self._span(name, event, message, at, tracing.DUPLICATE_DELIVERY, outputs=outputs)
                return dict(prior.result or {})
            log.warning("redo %-10s %s: %d of its outputs are missing from the bucket (e.g. %s)", name, event.key,
                        len(missing), missing[0])
            self.state.forget(key)
            prior = self.state.claim(key, owner, self.settings.lease_ttl_s)
        if prior is not None:
            wait_s = (prior.ttl_ms or self.settings.lease_ttl_s * 1000) / 1000 + 1
            log.info("busy %-10s %s: in progress in %s; trying again in %.0fs", name, event.key, prior.owner, wait_s)
            self.on_event("busy", {"stage": name, "key": event.key, "owner": prior.owner})
            raise self._retry(message, wait_s)
        with self.heartbeat.hold(key, owner, self._time_limit_s(route, message) + self.settings.lease_ttl_s):
            return self._run(route, event, key, owner, message)

    def trace_id(self, stage: str, event: ObjectCreated, message: Any) -> str | None:
        """The correlation id of a stage run: the message's `traceparent` when it carries one, else, for a drop (an
        unsigned arrival), the id derived from it; kept in the message so a retry or redelivery carries it."""
        found = tracing.parse_traceparent(message.options.get(tracing.TRACEPARENT)) if message is not None else None
        if found is None and not is_signed(event.key):
            found = tracing.trace_id_of(event.idempotency_key)
        elif found is None and event.key.endswith(("/manifest.json", "/run.json", ".candidate.json")):
            found = self._document_trace(event.key)
        if found is not None and message is not None:
            message.options[tracing.TRACEPARENT] = tracing.traceparent(found, tracing.span_id(found, stage, event.key))
        return found

    def _run(self, route: Route, event: ObjectCreated, key: str, owner: str, message: Any) -> dict[str, Any]:
        name = route.name
        store = RecordingStore(self.store)
        ctx = Context(self.settings, store, self.state, self.online, extensions=self.pipeline.extensions)
        self.on_event("start", {"stage": name, "key": event.key, "owner": owner})
        started_at = tracing.now()
        attempt = _attempt(message)
        # Replaced by the attempt's end; if the worker is killed, this is what says the attempt began.
        self._span(name, event, message, started_at, tracing.STARTED, ended=False, attempt=attempt,
                   owner=owner)
        if pause := self.settings.fault_delay_s(name):
            log.warning("fault injection: holding %s on %s for %gs", name, event.key, pause)
            time.sleep(pause)
        began = began_key(key, message)
        try:
            self._refuse_a_killer(name, event, began, message)
            try:
                if is_signed(event.key):
                    # Woken by a document: act only on one a Sluice stage wrote (core/provenance.py).
                    self.store.verify(event.key, event.version_id)
                effects = handler_effects(name, self.pipeline.handlers[name](event, ctx))
            except IntegrityError as err:
                result = {**self.refuse(ctx, name, event, err), "outputs": sorted(store.written)}
                # Completed, naming the refusal record: `sluice refused redrive` forgets it to run the stage again.
                self.state.complete(key, owner, result, COMPLETED_TTL_S)
                self._span(name, event, message, started_at, tracing.REFUSED, attempt=attempt,
                           record=result["record"], message=str(err))
                return result
            except Defer as later:
                self.state.release(key, owner)
                self._span(name, event, message, started_at, tracing.DEFERRED, attempt=attempt,
                           retry_in_s=round(later.delay_s, 3), message=str(later))
                raise self._retry(message, later.delay_s) from None
            except InputError as err:
                result = self.quarantine(ctx, name, event, err)
                # Released, not completed: the same bytes dropped again after a contract fix are validated again.
                self.state.release(key, owner)
                self._span(name, event, message, started_at, tracing.QUARANTINED, attempt=attempt,
                           report=result["report"], reason=err.reason)
                return result
            published = []
            for effect in effects:
                if isinstance(effect, NewObject):
                    self._write(store, name, effect)
                else:
                    self._publish_once(store, effect)
                    published.append(effect.id)
        except dramatiq.Retry:
            self.state.release(key, owner)
            raise  # a deferral, recorded above
        except BaseException as exc:
            self.state.release(key, owner)  # let the retry run
            self._span(name, event, message, started_at, tracing.FAILED, attempt=attempt,
                       error=f"{type(exc).__name__}: {clip(str(exc), 500)}", outputs=sorted(store.written))
            raise
        finally:
            if message is not None:  # any end a process lives to see: only deaths leave the count growing
                with contextlib.suppress(Exception):
                    self.state.ended(began)
        result = {"outcome": "done", "published": published, "outputs": sorted(store.written)}
        self._span(name, event, message, started_at, tracing.DONE, attempt=attempt, outputs=result["outputs"],
                   published=published)
        if not store.written:
            self.state.release(key, owner)  # nothing to check a duplicate against: running it again is cheap
        elif not self.state.complete(key, owner, result, COMPLETED_TTL_S):
            log.warning("lease %s was lost while the stage ran; its outputs are in the bucket all the same", key)
        self.on_event("done", {"stage": name, "key": event.key, "object_id": object_id(event)})
        return result

    def _refuse_a_killer(self, stage: str, event: ObjectCreated, counter: str, message: Any) -> None:
        """Raise WorkerKilled when this very message began MAX_KILLED_ATTEMPTS times
        before and never ended: a counter in the state backend, cleared by any end a process records (`_run`'s
        finally), so only deaths leave it counting."""
        if message is None:
            return  # run directly: no redelivery to count
        before = self.state.began(counter, KILLED_COUNT_TTL_S) - 1
        if before >= MAX_KILLED_ATTEMPTS:
            trace_id = _trace().get("trace_id")
            where = f"`sluice trace {trace_id[:16]}` lists the attempts" if trace_id else "the workers' logs"
            raise WorkerKilled(
                f"{stage} on {event.key} began {before} times before and never finished: each time its worker "
                "died (out of memory? a crash in a native library? kill -9?). Not run again, so it kills no more "
                f"workers. Look at the workers' logs and memory ({where}); fix the cause or the input, then "
                "`sluice deadletter redrive`.")

    def _write(self, store: ObjectStore, stage: str, effect: NewObject) -> None:
        """A handler's new object, written through the stage's recording store (signed where stages sign)."""
        body = effect.body
        if isinstance(body, dict | list):
            store.put_json(effect.key, body)
        else:
            data = body.encode() if isinstance(body, str) else body
            if effect.content_type:
                store.put(effect.key, data, content_type=effect.content_type)
            else:
                store.put(effect.key, data)
        log.info("wrote %-10s %s", stage, effect.key)

    def _publish_once(self, store: ObjectStore, effect: ModelEvent) -> None:
        """Publish through `publish_once`: a re-run of the stage does not send it again."""
        if not publish_once(self.publisher, self.store, effect, record_to=store):
            log.info("same %-10s %s v%s already published (%s)", effect.type, effect.model, effect.version,
                     effect.id[:12])
            return
        self.on_event("published", effect.to_cloudevent())
        log.info("sent %-10s %s v%s -> topic %s", effect.type, effect.model, effect.version, self.settings.topic)

    def _span(self, stage: str, event: ObjectCreated, proxy: Any, started_at: str, outcome: str, *,
              ended: bool = True, attempt: str | None = None, **detail: Any) -> None:
        """Record one attempt of a stage in its drop's trace (`traces/<trace id>/`); never fails the stage.
        `proxy`: the Dramatiq message being processed (None when run directly). `ended=False`: the attempt's
        beginning, at the key its end then replaces (not announced: a listener sees each attempt once)."""
        trace_id = _trace().get("trace_id")
        if not trace_id:
            return  # woken by a document that carries no trace (written before correlation ids)
        attempt = attempt or _attempt(proxy)
        doc = tracing.span_record(trace_id, stage, event.key, started_at=started_at,
                                  ended_at=tracing.now() if ended else None, outcome=outcome, attempt=attempt,
                                  worker=WORKER_ID, message_id=None if proxy is None else proxy.message_id, **detail)
        try:
            self.store.put_json(keys.Span(trace_id, tracing.span_name(started_at, stage, attempt)).key, doc)
        except Exception as exc:  # the bucket may be what failed; the stage's own outcome matters more
            log.warning("could not record the span of %s on %s: %s", stage, event.key, exc)
        if not ended:
            return
        try:
            self.on_event("span", doc)
        except Exception:
            log.exception("a span listener failed on %s %s", stage, event.key)

    def quarantine(self, ctx: Context, stage: str, event: ObjectCreated, err: InputError) -> dict[str, Any]:
        """Record bad input with an actionable report; it is never retried."""
        dataset = dataset_of(event.key)
        oid = object_id(event)
        base = keys.Quarantine.prefix(dataset, err.data_version or oid)
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
            **_trace(),
            **err.details,
        }
        if stage == "validate" and ctx.store.exists(event.key):
            # Keep the exact bytes beside the report, so the file can be fixed and replayed.
            report["file"] = f"{base}{event.key.rsplit('/', 1)[-1]}"
            ctx.store.copy(event.key, report["file"], event.version_id)
        ctx.store.put_json(f"{base}report.json", report)
        ctx.store.put_json(keys.Ledger(dataset, oid).key, {
            "key": event.key, "etag": event.etag, "version_id": event.version_id, "outcome": "quarantined",
            "reason": err.reason, "message": str(err), "report": f"{base}report.json", "at": ctx.timestamp(),
            **_trace(),
        })
        log.warning("quarantined %s: %s", event.key, err)
        self.on_event("quarantined", report)
        return {"outcome": "quarantined", "report": f"{base}report.json"}

    def refuse(self, ctx: Context, stage: str, event: ObjectCreated, err: IntegrityError) -> dict[str, Any]:
        """Record that a stage would not act on something no stage wrote (or bytes that changed); never retried.

        An operator who restored the object re-drives the event with `sluice refused redrive`."""
        dataset = dataset_of(event.key)
        oid = object_id(event)
        record = {
            "stage": stage, "dataset": dataset, "id": oid, "outcome": "refused", "reason": "integrity",
            "message": str(err), "event": event.to_dict(), "at": ctx.timestamp(), **_trace(),
            "what_to_do": "Find out who wrote the object (bucket version history, CloudTrail). Restore it or delete "
                          f"it; to run the stage again, `sluice refused redrive {oid}`.",
        }
        key = keys.Refused(dataset, oid).key
        ctx.store.put_json(key, record)
        if not is_signed(event.key):  # an arrival (a drop): its one outcome
            ctx.store.put_json(keys.Ledger(dataset, oid).key, {
                "key": event.key, "etag": event.etag, "version_id": event.version_id, "outcome": "refused",
                "reason": "integrity", "message": str(err), "refusal": key, "what_to_do": record["what_to_do"],
                "at": ctx.timestamp(), **_trace()})
        log.error("refused %-10s %s: %s", stage, event.key, err)
        self.on_event("refused", record)
        return {"outcome": "refused", "record": key}

    def _record_dead_letter(self, doc: dict[str, Any]) -> None:
        key = keys.DeadLetter(doc["actor"], doc["message_id"]).key
        doc = {**doc, "dead_lettered_at": datetime.now(UTC).isoformat(timespec="milliseconds")}
        self.store.put_json(key, doc)
        stage = str(doc["actor"]).removeprefix(f"{self.settings.namespace}.")
        if stage in ARRIVAL_STAGES and doc.get("args") and isinstance(doc["args"][0], dict):
            # The arrival's one terminal outcome: failed, with the dead letter that says why and how to re-drive.
            event = ObjectCreated.from_dict(doc["args"][0])
            last = (doc.get("traceback") or "").strip().splitlines()[-1:] or ["unknown error"]
            self.store.put_json(keys.Ledger(dataset_of(event.key), object_id(event)).key, {
                "key": event.key, "etag": event.etag, "version_id": event.version_id, "outcome": "failed",
                "stage": stage, "message": last[0], "dead_letter": key, "at": doc["dead_lettered_at"],
                "what_to_do": f"fix the cause, then `sluice deadletter redrive {doc['message_id']}`",
                **({"trace_id": doc["trace_id"]} if doc.get("trace_id") else {}),
            })
        self.on_event("dead-letter", doc)


BRIDGE_MAX_BACKOFF_S = 30.0


def describe_outage(exc: BaseException, settings: Settings) -> str:
    """One line saying what is unreachable or missing, and what to do about it."""
    from botocore.exceptions import ClientError, EndpointConnectionError

    where = settings.endpoint_url or "AWS"
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach SQS at {where} ({exc})"
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if "NonExistentQueue" in code or code in ("NoSuchBucket", "QueueDoesNotExist"):
            return f"{code}: queue {settings.events_queue!r} or bucket {settings.bucket!r} is missing; run `sluice up`"
        return f"SQS/S3 error {code}: {exc}"
    if type(exc).__module__.startswith("redis"):
        return f"cannot reach Redis at {settings.broker_url} ({exc}); start it"
    return f"{type(exc).__name__}: {exc}"


class SqsBridge:
    """Long-polls the bucket-events queue and hands each S3 record to the runtime.

    A message is deleted only after every record in it was enqueued; a crash before that makes SQS deliver
    it again (at least once), and a message that keeps failing moves to the SQS dead-letter queue.
    """

    def __init__(self, runtime: Runtime, sqs: Any, *, wait_s: int = 1):
        self.runtime = runtime
        self.sqs = sqs  # a boto3 SQS client (sluice/service.py makes it from the settings)
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
                log.error("dead-lettered bridge message %s from %s: %s (kept in deadletter/bridge/)",
                          message["MessageId"], self.runtime.settings.events_queue, exc)
                self.runtime._record_dead_letter({
                    "message_id": message["MessageId"], "actor": "bridge", "queue": self.runtime.settings.events_queue,
                    "args": [exc.body[:10_000]], "retries": 0, "traceback": str(exc),
                })
                events = []
            unrouted = []
            for event in events:
                stages = self.runtime.dispatch(event)
                if not stages and event.bucket == self.runtime.settings.bucket:
                    unrouted.append(event.key)
                for stage in stages:
                    dispatched += 1
                    log.info("got  %-10s %s", stage, event.key)
                    self.runtime.on_event("object-created", {"stage": stage, "key": event.key})
            if unrouted:
                # The bucket notifies only for the stages `sluice up` provisioned: a key no stage of this worker takes
                # means the worker runs another app (started before a stage was added). Deleting the message lost
                # the event without a word; left on the queue, a worker with the stage takes it when SQS delivers it
                # again, and after its receive limit it waits in the dead-letter queue.
                log.error("no stage of this worker takes %s: is it running the app `sluice up` provisioned (restart "
                          "it with that --app)? The message stays on %s; after its receive limit it moves to %s, and "
                          "`sluice deadletter redrive` sends it back", ", ".join(unrouted),
                          self.runtime.settings.events_queue, self.runtime.settings.dead_letter_queue)
                continue
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return dispatched

    def run(self) -> None:
        """Poll until `stop()`. An outage gets one line when it starts and one when it ends, with backoff between."""
        outage_since: float | None = None
        delay = 1.0
        while not self.stopping.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # a flaky endpoint must not kill the bridge; SQS keeps the messages
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("bridge: %s; retrying with backoff up to %.0fs (no more lines until it recovers)",
                                describe_outage(exc, self.runtime.settings), BRIDGE_MAX_BACKOFF_S)
                self.stopping.wait(delay)
                delay = min(delay * 2, BRIDGE_MAX_BACKOFF_S)
                continue
            if outage_since is not None:
                log.warning("bridge: polling %s works again after %.0fs", self.runtime.settings.events_queue,
                            time.monotonic() - outage_since)
                outage_since, delay = None, 1.0

    def start(self) -> threading.Thread:
        """Run in a daemon thread."""
        thread = threading.Thread(target=self.run, name="sluice-sqs-bridge", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Ask the polling loop to finish."""
        self.stopping.set()
