"""Prometheus metrics of one worker: `sluice worker --metrics-port P` serves them at `http://HOST:P/metrics`.

Two sources feed them, neither of which changes how a stage runs:
- `StageMetrics`, a Dramatiq middleware, sees every message: processed, failed, retried, deferred (a planned
  wait such as the training debounce), dead-lettered, and how long the stage took.
- `Metrics.observe`, chained onto the runtime's `on_event` hook, turns what the stages recorded into domain
  counters: drops by outcome, rows validated and quarantined, training seconds, gate outcomes. It reads the
  document the stage just wrote (the ledger entry, the run), so the figures agree with the bucket.
Queue depths (the bucket-events queue and its dead-letter queue) are read from SQS when scraped.

Every metric lives in the `Metrics` object's own registry, so several runtimes in one process (tests) do not
collide.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
from dramatiq import Broker, Middleware
from dramatiq.broker import MessageProxy
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sluice.core import keys
from sluice.core.ports import SAME_SECOND_S, newest_first
from sluice.core.settings import Settings
from sluice.events.run import read as read_run

RUNS_LOOKED_AT = 20  # the newest runs read to find the one a train stage just wrote (the first, as a rule)
log = logging.getLogger("sluice.metrics")
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
EventHook = Callable[[str, dict[str, Any]], None]


def dataset_of(key: str) -> str:
    """`<stage>/<dataset>/...` -> dataset (as the runtime names it)."""
    return keys.dataset_of(key)


def stage_of(actor_name: str) -> str:
    """`<namespace>.<stage>` -> stage."""
    return actor_name.rsplit(".", 1)[-1]


class Metrics:
    """The worker's metrics and the hooks that feed them."""

    def __init__(self, settings: Settings, store: Any = None):
        self.settings = settings
        self.store = store
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter("sluice_stage_messages", "Messages by stage and what became of them "
                                "(processed, failed, retried, deferred, dead_lettered, duplicate)",
                                ["stage", "outcome"], registry=r)
        self.duration = Histogram("sluice_stage_duration_seconds", "Time a stage took on one message",
                                  ["stage"], buckets=DURATION_BUCKETS, registry=r)
        self.drops = Counter("sluice_drops", "Dropped objects by outcome (validated, duplicate, quarantined)",
                             ["dataset", "outcome"], registry=r)
        self.rows = Counter("sluice_rows", "Rows checked against the contract, by result (validated, quarantined)",
                            ["dataset", "result"], registry=r)
        self.training = Histogram("sluice_training_seconds", "Wall time of a training run's fit",
                                  ["dataset"], buckets=DURATION_BUCKETS, registry=r)
        self.gate = Counter("sluice_gate_outcomes", "The promotion gate's verdicts on candidates",
                            ["model", "outcome"], registry=r)
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- feeding ---------------------------------------------------------------------------------------------
    def chain(self, hook: EventHook | None) -> EventHook:
        """An `on_event` hook that records metrics, then calls `hook`."""
        def observe_then(kind: str, detail: dict[str, Any]) -> None:
            try:
                self.observe(kind, detail)
            except Exception:  # metrics must never fail a stage
                log.exception("metrics: could not record %s", kind)
            if hook is not None:
                hook(kind, detail)
        return observe_then

    def observe(self, kind: str, detail: dict[str, Any]) -> None:
        """Domain counters from one runtime event."""
        stage = detail.get("stage")
        if kind == "duplicate":
            self.messages.labels(stage, "duplicate").inc()
        elif kind == "quarantined" and detail.get("stage") == "validate":
            dataset = detail["dataset"]
            self.drops.labels(dataset, "quarantined").inc()
            rows = (detail.get("rows") or {}).get("total")
            if rows:
                self.rows.labels(dataset, "quarantined").inc(rows)
        elif kind == "dead-letter":
            self.messages.labels(stage_of(detail.get("actor", "?")), "dead_lettered").inc()
        elif kind == "done" and stage == "validate" and self.store is not None and detail.get("object_id"):
            dataset = dataset_of(detail["key"])
            entry = self.store.get_json_or_none(keys.Ledger(dataset, detail["object_id"]).key)
            if entry is None or entry.get("outcome") == "quarantined":
                return  # counted by the quarantine event
            self.drops.labels(dataset, entry["outcome"]).inc()
            if entry["outcome"] == "validated":
                self.rows.labels(dataset, "validated").inc(entry.get("rows") or 0)
                self.rows.labels(dataset, "quarantined").inc(entry.get("rows_quarantined") or 0)
        elif kind == "done" and stage == "train" and self.store is not None:
            run = self._run_of_features(detail["key"])
            if run is not None and run.get("durations_s", {}).get("fit") is not None:
                self.training.labels(run["dataset"]).observe(float(run["durations_s"]["fit"]))
        elif kind == "published":  # only the register stage publishes, one event per gate verdict
            data = detail.get("data", {})
            if data.get("outcome"):
                self.gate.labels(data.get("model", "?"), data["outcome"]).inc()

    def _run_of_features(self, manifest_key: str) -> dict[str, Any] | None:
        """The newest finished run trained on the feature set whose manifest is `manifest_key`."""
        try:
            features = keys.FeatureSet.parse(manifest_key)
        except ValueError:
            return None
        dataset, fsv = features.dataset, features.version
        # Newest first by the listing's times: the run that just finished is read first, not every run.
        runs: list[dict[str, Any]] = []
        # A train stage that wrote no run (superseded, or waiting for labels) must not read them all: its run,
        # when it wrote one, is among the few newest.
        for listed in newest_first(self.store, keys.Run.prefix(dataset), "/" + keys.RUN)[:RUNS_LOOKED_AT]:
            if runs and (runs[0]["_modified"] - listed.modified).total_seconds() >= SAME_SECOND_S:
                break  # older than the newest match by more than the listing's resolution
            doc = self.store.get_json_or_none(listed.key)
            if doc is not None and (d := read_run(doc)).get("feature_set_version") == fsv:
                runs.append({**d, "_modified": listed.modified})
        if not runs:
            return None
        newest = max(runs, key=lambda d: d.get("finished_at", ""))
        return {k: v for k, v in newest.items() if k != "_modified"}

    def middleware(self) -> StageMetrics:
        """The Dramatiq middleware that counts messages and times stages."""
        return StageMetrics(self)

    # -- exposing --------------------------------------------------------------------------------------------
    def watch_queues(self, sqs: Any) -> None:
        """Report the depth of the bucket-events queue and its dead-letter queue (via the boto3 SQS client
        `sqs`) at each scrape."""
        self.registry.register(QueueDepth(self.settings, sqs))

    def exposition(self) -> bytes:
        """The text format, as served at /metrics."""
        return bytes(generate_latest(self.registry))

    def serve(self, port: int, host: str = "0.0.0.0") -> Any:
        """Serve /metrics on `port` in a daemon thread; returns the server (its `server_port` is the real port)."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server


class StageMetrics(Middleware):
    """Counts each message's fate and times it, per stage."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        """Start the stage's clock."""
        with self.metrics._lock:
            self.metrics._started[message.message_id] = time.monotonic()

    def after_process_message(self, broker: Broker, message: MessageProxy, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        """Processed, deferred, retried or failed; runs after Retries, so a failed message is a dead letter."""
        stage = stage_of(message.actor_name)
        with self.metrics._lock:
            started = self.metrics._started.pop(message.message_id, None)
        if started is not None:
            self.metrics.duration.labels(stage).observe(time.monotonic() - started)
        m = self.metrics.messages
        if exception is None:
            m.labels(stage, "processed").inc()
        elif isinstance(exception, dramatiq.Retry):
            m.labels(stage, "deferred").inc()
        else:
            m.labels(stage, "failed").inc()
            if not message.failed:
                m.labels(stage, "retried").inc()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """A skipped message never ran: forget its clock."""
        with self.metrics._lock:
            self.metrics._started.pop(message.message_id, None)


class QueueDepth(Collector):
    """`sluice_queue_messages{queue=...}`: SQS's approximate depth of the events queue and its dead letters."""

    def __init__(self, settings: Settings, sqs: Any):
        self.settings = settings
        self.sqs = sqs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Read both depths now; a queue that cannot be read is left out rather than reported as zero."""
        family = GaugeMetricFamily("sluice_queue_messages", "Messages waiting in SQS", labels=["queue"])
        sqs = self.sqs
        for name in (self.settings.events_queue, self.settings.dead_letter_queue):
            try:
                url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
                attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
            except Exception as exc:
                log.warning("metrics: cannot read the depth of %s (%s)", name, exc)
                continue
            family.add_metric([name], float(attrs["Attributes"]["ApproximateNumberOfMessages"]))
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """Nothing to describe up front: collecting calls SQS."""
        return iter(())
