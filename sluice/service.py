"""Assembling a running Sluice: runtime, Dramatiq worker and the SQS bridge, for the CLI, the demo and tests.

The app to run is passed in (`sluice worker --app module:app` loads it): the framework knows no pipeline of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dramatiq import Broker, Worker

from sluice.core.app import App
from sluice.core.metrics import Metrics
from sluice.core.ports import ObjectStore, OnlineStore, Publisher, StateBackend
from sluice.core.runtime import Runtime, SqsBridge
from sluice.core.settings import Settings
from sluice.infra.aws import client
from sluice.infra.broker import make_broker, make_state
from sluice.infra.notify import SnsPublisher
from sluice.infra.online import make_online
from sluice.infra.otel import OtelSpans
from sluice.infra.otel import from_env as otel_from_env
from sluice.infra.store import S3Store
from sluice.ml.contract import training_time_limit_s


@dataclass
class Service:
    """A runtime with its worker threads and bridge."""

    runtime: Runtime
    worker: Worker
    bridge: SqsBridge
    reconciler: Reconciler | None = None
    metrics: Metrics | None = None
    metrics_server: Any = None
    otel: OtelSpans | None = None

    def stop(self) -> None:
        """Stop polling, then let in-flight messages finish."""
        self.bridge.stop()
        if self.reconciler is not None:
            self.reconciler.stop()
        self.worker.stop()
        self.runtime.broker.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        if self.otel is not None:
            self.otel.shutdown()  # flushes the spans still batched


class Reconciler:
    """Runs `reconcile` every `interval_s` in a daemon thread; one pass per interval across all workers."""

    def __init__(self, runtime: Runtime, interval_s: float, min_age_s: float | None = None):
        self.runtime = runtime
        self.interval_s = interval_s
        # Younger objects are left to their own notification; at least a minute, or two intervals.
        self.min_age_s = min_age_s if min_age_s is not None else max(60.0, 2 * interval_s)
        self.stopping = threading.Event()
        self._failing = False

    def pass_once(self) -> int:
        """One pass, unless another worker ran one within this interval; returns the gaps re-driven."""
        from sluice.core.leases import WORKER_ID
        from sluice.ml.reconcile import reconcile

        if self.runtime.state.claim("reconcile#pass", WORKER_ID, self.interval_s * 0.8) is not None:
            return 0  # the lease lapses by itself: the next interval, whoever comes first runs it
        return len(reconcile(self.runtime, min_age_s=self.min_age_s))

    def run(self) -> None:
        """Pass every interval until `stop()`."""
        log = logging.getLogger("sluice")
        while not self.stopping.wait(self.interval_s):
            try:
                n = self.pass_once()
                if n:
                    log.warning("reconcile: re-drove %d objects whose next step was missing", n)
                self._failing = False
            except Exception as exc:  # an outage: the bridge says so too; one line, then quiet
                if not self._failing:
                    log.warning("reconcile: pass failed (%s: %s); trying again every %.0fs", type(exc).__name__, exc,
                                self.interval_s)
                self._failing = True

    def start(self) -> threading.Thread:
        """Run in a daemon thread."""
        thread = threading.Thread(target=self.run, name="sluice-reconcile", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Ask the loop to finish."""
        self.stopping.set()


def build_runtime(
    settings: Settings,
    app: App,
    *,
    broker: Broker | None = None,
    state: StateBackend | None = None,
    store: ObjectStore | None = None,
    publisher: Publisher | None = None,
    online: OnlineStore | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> Runtime:
    """The app's stages declared as actors on the configured broker: the one place where the ports
    (core/ports.py) get the implementations the settings name (infra/), unless given."""
    return Runtime(settings, app, broker or make_broker(settings), state or make_state(settings),
                   store=store or S3Store(settings), publisher=publisher or SnsPublisher(settings),
                   online=online or make_online(settings), on_event=on_event,
                   contract_time_limit=training_time_limit_s)


def start(settings: Settings, *, app: App | None = None, runtime: Runtime | None = None, bridge_wait_s: int = 1,
          on_event: Callable[[str, dict[str, Any]], None] | None = None,
          metrics_port: int | None = None, otel: OtelSpans | None = None) -> Service:
    """Start the Dramatiq worker threads and the bridge; returns once both run.

    With `metrics_port` (0 picks a free port), the worker's Prometheus metrics are served at /metrics. Each stage
    attempt's span goes to `otel`, by default the OTLP exporter when OTEL_EXPORTER_OTLP_ENDPOINT is set and
    `sluice[otel]` is installed (infra/otel.py).
    """
    if runtime is None:
        if app is None:
            raise TypeError("start() needs the app to run (or a runtime built from one)")
        runtime = build_runtime(settings, app, on_event=on_event)
    metrics, metrics_server = None, None
    if metrics_port is not None:
        metrics = Metrics(settings, runtime.store)
        runtime.on_event = metrics.chain(runtime.on_event)
        runtime.broker.add_middleware(metrics.middleware())
        metrics.watch_queues(client("sqs", settings))
        metrics_server = metrics.serve(metrics_port)
    otel = otel if otel is not None else otel_from_env()
    if otel is not None:
        runtime.on_event = _both(otel, runtime.on_event)
    worker = Worker(runtime.broker, worker_threads=settings.worker_threads,
                    worker_timeout=settings.poll_interval_ms)
    worker.start()
    bridge = SqsBridge(runtime, client("sqs", settings), wait_s=bridge_wait_s)
    bridge.start()
    reconciler = None
    if settings.reconcile_interval_s > 0:
        reconciler = Reconciler(runtime, settings.reconcile_interval_s)
        reconciler.start()
    logging.getLogger("sluice").info(
        "worker: %d threads on %s (polled every %d ms when idle), bridge polling %s, reconcile every %s",
        settings.worker_threads, settings.broker_url, settings.poll_interval_ms, settings.events_queue,
        f"{settings.reconcile_interval_s:g}s" if reconciler else "(off)")
    return Service(runtime, worker, bridge, reconciler, metrics, metrics_server, otel)


def _both(first: Callable[[str, dict[str, Any]], None],
          then: Callable[[str, dict[str, Any]], None]) -> Callable[[str, dict[str, Any]], None]:
    """An `on_event` hook calling `first`, then `then`; a failing exporter never keeps the event from `then`."""
    def hook(kind: str, detail: dict[str, Any]) -> None:
        try:
            first(kind, detail)
        except Exception:
            logging.getLogger("sluice").exception("exporting a %s event failed", kind)
        then(kind, detail)

    return hook
