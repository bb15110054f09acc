"""`make demo`: the whole chain on an embedded moto server (S3, SQS, SNS) and Dramatiq's in-memory broker."""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from sluice.core import keys
from sluice.core.settings import ENV_ENDPOINT_URL, Settings
from sluice.infra.store import S3Store
from sluice.ml.contract import contract_key, infer_contract

DATASET = "breast-cancer"
TARGET = "diagnosis"


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(budget: float = 10.0, timeout: float = 150.0) -> int:
    """Run the demo; returns the process exit code (0 only when a promotion event was received)."""
    from moto.server import ThreadedMotoServer

    from sluice.handlers import build_pipeline
    from sluice.infra.provision import provision
    from sluice.infra.subscribe import TemporarySubscription
    from sluice.service import start

    t_start = time.perf_counter()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ[ENV_ENDPOINT_URL] = f"http://{host}:{port}"
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    settings = replace(Settings.from_env(), broker_url="memory://", bucket="sluice-demo", min_backoff_ms=200)
    _say(f"== embedded moto server at {os.environ[ENV_ENDPOINT_URL]}, Dramatiq StubBroker in-process")

    started: dict[tuple[str, str], float] = {}
    stage_times: dict[str, float] = {}

    def on_event(kind: str, detail: dict[str, Any]) -> None:
        now = time.perf_counter()
        if kind == "start":
            started[(detail["stage"], detail["key"])] = now
        elif kind == "done" and (detail["stage"], detail["key"]) in started:
            stage_times.setdefault(detail["stage"], now - started[(detail["stage"], detail["key"])])

    service = None
    try:
        app = build_pipeline()
        resources_ = provision(settings, app.routes)
        for change in resources_.changes:
            _say(f"   + {change}")
        service = start(settings, app=app, on_event=on_event)
        store = S3Store(settings)
        data = resources.files("sluice").joinpath("data/breast_cancer.csv").read_bytes()
        with tempfile.TemporaryDirectory() as tmp:
            sample = Path(tmp) / "breast_cancer.csv"
            sample.write_bytes(data)
            contract = infer_contract(pl.read_csv(sample), DATASET, TARGET, time_budget_s=budget, debounce_s=0)
        store.put(contract_key(DATASET), contract.to_yaml().encode())
        _say(f"== contract {contract_key(DATASET)}: {len(contract.columns)} columns, task {contract.task}, "
             f"metric {contract.metric}, budget {budget:g}s")

        with TemporarySubscription(settings) as subscriber:
            _say(f"== subscriber queue {subscriber.queue_name} listens on topic {settings.topic}")
            key = keys.Drop(DATASET, "breast_cancer.csv").key
            t_drop = time.perf_counter()
            store.put(key, data)
            _say(f"== dropped {len(data):,} bytes at s3://{settings.bucket}/{key}")
            event = _wait_for_event(subscriber, timeout)
            t_event = time.perf_counter()
            if event is None:
                _say(f"!! no model event within {timeout:g}s: the chain did not complete. `sluice status` "
                     "would show where it stopped.")
                return 1

            d = event["data"]
            _say("\n== the subscriber received:")
            _say(json.dumps(event, indent=2, sort_keys=True))
            m = d["metric"]
            _say(f"\n== {event['type']}: model {d['model']} v{d['version']}, holdout {m['name']} "
                 f"{m['candidate']:.4f} vs naive baseline {m['baseline']:.4f}")

            # What a downstream system does with the event: one line to a verified model, then score rows.
            from sluice import load_model

            model = load_model(event, settings=settings)
            rows = pl.read_csv(io.BytesIO(data)).drop(TARGET).head(3)
            result = model.predict(rows.to_dicts())
            _say(f"== sluice.load_model(event) -> {model!r}")
            for rec in result.to_dicts():
                probs = ", ".join(f"{k} {v:.3f}" for k, v in rec["probabilities"].items())
                _say(f"   row {rec['row']}: {rec['prediction']} ({probs})")

            # At least once: the same bytes again give the same data version and no new run.
            store.put(keys.Drop(DATASET, "breast_cancer_again.csv").key, data)
            dup = _wait_for_ledger(store, keys.Drop(DATASET, "breast_cancer_again.csv").key, 30)
            versions = sum(1 for k in store.keys(f"registry/{d['model']}/versions/") if k.endswith(".json"))
            _say(f"== dropped the same bytes again: outcome {dup}, registry still has {versions} version(s)")

            # One drop's whole path, read back from the bucket: what `sluice trace KEY` prints.
            from sluice.commands.trace import render
            from sluice.core.memory import MemoryState
            from sluice.ml.trace import trace

            _say(f"\n== sluice trace {key}")
            for line in render(trace(store, MemoryState(), key)):
                if line == "documents:":
                    break
                _say(line)

        _say("\n== stage wall times (s):")
        for stage, seconds in stage_times.items():
            _say(f"   {stage:<10} {seconds:6.2f}")
        _say(f"   drop -> event {t_event - t_drop:6.2f}")
        _say(f"   demo total    {time.perf_counter() - t_start:6.2f}")
        return 0 if event["type"] == "sluice.model.promoted" and dup == "duplicate" else 1
    finally:
        if service:
            service.stop()
        server.stop()


def _wait_for_event(subscriber: Any, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for doc in subscriber.receive(wait_s=1):
            return dict(doc)
    return None


def _wait_for_ledger(store: S3Store, key: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for k in store.keys(keys.Ledger.prefix(DATASET)):
            entry = store.get_json(k)
            if entry["key"] == key:
                return str(entry["outcome"])
        time.sleep(0.2)
    return None
