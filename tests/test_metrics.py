"""The worker's Prometheus endpoint, scraped after a real chain run (moto's server, the StubBroker, the bridge),
its counters checked against the ledger, the run and the registry in the bucket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.core.settings import Settings
from sluice.handlers import build_pipeline
from sluice.service import Service, start
from tests.chain import DATASET, prepare, sample_bytes, versions, wait_for
from tests.conftest import unique_settings

TIMEOUT_S = 90


@pytest.fixture
def service(moto_endpoint: str) -> Iterator[tuple[Service, Settings]]:
    settings = unique_settings(moto_endpoint)
    prepare(settings)
    svc = start(settings, app=build_pipeline(), bridge_wait_s=1, metrics_port=0)
    yield svc, settings
    svc.stop()


def scrape(svc: Service) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at /metrics, by name and labels."""
    body = httpx.get(f"http://127.0.0.1:{svc.metrics_server.server_port}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.slow
def test_metrics_after_a_chain_run_agree_with_the_bucket(service: tuple[Service, Settings]) -> None:
    svc, settings = service
    store = svc.runtime.store
    store.put(f"incoming/{DATASET}/a.csv", sample_bytes())
    store.put(f"incoming/{DATASET}/bad.csv", b"mean_radius;diagnosis\n1;benign\n")
    wait_for(lambda: sum(value(scrape(svc), "sluice_gate_outcomes_total", model=DATASET, outcome=o)
                         for o in ("promote", "reject", "insufficient_evidence")) >= 1, TIMEOUT_S, "a gate verdict")
    wait_for(lambda: value(scrape(svc), "sluice_drops_total", dataset=DATASET, outcome="quarantined") >= 1,
             TIMEOUT_S, "the quarantine")
    samples = scrape(svc)

    ledger = [store.get_json(k) for k in store.keys(f"ledger/{DATASET}/")]
    for outcome in ("validated", "quarantined", "duplicate"):
        expected = sum(1 for e in ledger if e["outcome"] == outcome)
        assert value(samples, "sluice_drops_total", dataset=DATASET, outcome=outcome) == expected, outcome
    assert value(samples, "sluice_rows_total", dataset=DATASET, result="validated") == sum(
        e.get("rows", 0) for e in ledger if e["outcome"] == "validated")
    assert value(samples, "sluice_rows_total", dataset=DATASET, result="quarantined") == sum(
        e.get("rows_quarantined", 0) for e in ledger if e["outcome"] == "validated")

    # One message per dropped object through validate, one run through train, nothing failed.
    assert value(samples, "sluice_stage_messages_total", stage="validate", outcome="processed") == len(ledger)
    for stage in ("validate", "features", "train", "benchmark", "register"):
        processed = value(samples, "sluice_stage_messages_total", stage=stage, outcome="processed")
        assert processed >= 1, stage
        assert value(samples, "sluice_stage_duration_seconds_count", stage=stage) >= processed
        assert value(samples, "sluice_stage_messages_total", stage=stage, outcome="failed") == 0
    [run_key] = [k for k in store.keys(f"runs/{DATASET}/") if k.endswith("/run.json")]
    run = store.get_json(run_key)
    assert value(samples, "sluice_training_seconds_count", dataset=DATASET) == 1
    assert value(samples, "sluice_training_seconds_sum", dataset=DATASET) == pytest.approx(run["durations_s"]["fit"])
    [version] = versions(store)
    assert value(samples, "sluice_gate_outcomes_total", model=DATASET, outcome=version["decision"]) == 1
    assert ("sluice_queue_messages", (("queue", settings.events_queue),)) in samples
    assert ("sluice_queue_messages", (("queue", settings.dead_letter_queue),)) in samples


def test_a_dead_letter_and_its_retries_are_counted(moto_endpoint: str) -> None:
    from sluice.core.metrics import Metrics

    metrics = Metrics(unique_settings(moto_endpoint))
    hook = metrics.chain(None)
    hook("dead-letter", {"actor": "sluice-test.train", "message_id": "m1"})
    hook("duplicate", {"stage": "validate", "key": "incoming/x/a.csv"})
    body = metrics.exposition().decode()
    assert 'sluice_stage_messages_total{outcome="dead_lettered",stage="train"} 1.0' in body
    assert 'sluice_stage_messages_total{outcome="duplicate",stage="validate"} 1.0' in body
