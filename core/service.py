"""Assembling a running Sluice: runtime, Dramatiq worker and the SQS bridge, for the CLI, the demo and tests."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dramatiq import Broker, Worker

from sluice.core.metrics import Metrics
from sluice.core.runtime import Runtime, SqsBridge
from sluice.core.settings import Settings
from sluice.handlers import build_pipeline
from sluice.infra.broker import make_broker, make_state
from sluice.infra.state import StateBackend


@dataclass
class Service:
    """A runtime with its worker threads and bridge."""

    runtime: Runtime
    worker: Worker
    bridge: SqsBridge
    metrics: Metrics | None = None
    metrics_server: Any = None

    def stop(self) -> None:
        """Stop polling, then let in-flight messages finish."""
        self.bridge.stop()
        self.worker.stop()
        self.runtime.broker.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()


def build_runtime(
    settings: Settings,
    *,
    broker: Broker | None = None,
    state: StateBackend | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> Runtime:
    """The pipeline's stages declared as actors on the configured broker."""
    return Runtime(settings, build_pipeline(), broker or make_broker(settings), state or make_state(settings),
                   on_event=on_event)


def start(settings: Settings, *, runtime: Runtime | None = None, bridge_wait_s: int = 1,
          on_event: Callable[[str, dict[str, Any]], None] | None = None,
          metrics_port: int | None = None) -> Service:
    """Start the Dramatiq worker threads and the bridge; returns once both run.

    With `metrics_port` (0 picks a free port), the worker's Prometheus metrics are served at /metrics.
    """
    runtime = runtime or build_runtime(settings, on_event=on_event)
    metrics, metrics_server = None, None
    if metrics_port is not None:
        metrics = Metrics(settings, runtime.store)
        runtime.on_event = metrics.chain(runtime.on_event)
        runtime.broker.add_middleware(metrics.middleware())
        metrics.watch_queues()
        metrics_server = metrics.serve(metrics_port)
    worker = Worker(runtime.broker, worker_threads=settings.worker_threads, worker_timeout=100)
    worker.start()
    bridge = SqsBridge(runtime, wait_s=bridge_wait_s)
    bridge.start()
    logging.getLogger("sluice").info("worker: %d threads on %s, bridge polling %s", settings.worker_threads,
                                     settings.broker_url, settings.events_queue)
    return Service(runtime, worker, bridge, metrics, metrics_server)
