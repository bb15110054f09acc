"""Helpers shared by the chain tests: provision, upload a contract, drop a file, wait for the outcome."""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

import polars as pl

from sluice.core.runtime import Runtime
from sluice.core.settings import Settings
from sluice.events.s3 import ObjectCreated
from sluice.handlers import build_pipeline
from sluice.infra.provision import Resources, provision
from sluice.infra.store import S3Store
from sluice.ml.contract import Contract, contract_key, infer_contract
from sluice.ml.registry import ModelRegistry

DATASET = "cancer"
BUDGET_S = 1.0


def sample_bytes() -> bytes:
    """The bundled breast-cancer CSV."""
    return resources.files("sluice").joinpath("data/breast_cancer.csv").read_bytes()


def sample_rows(picks: list[tuple[int, str]]) -> bytes:
    """A CSV of the sample's header and, for each (row, class), that row of the sample with its target set to the
    class: a few valid rows, or many identical ones."""
    head, *rows = sample_bytes().decode().splitlines()
    target = head.split(",").index("diagnosis")
    out = [head]
    for i, label in picks:
        cells = rows[i].split(",")
        cells[target] = label
        out.append(",".join(cells))
    return ("\n".join(out) + "\n").encode()


def sample_contract(budget_s: float = BUDGET_S) -> Contract:
    """The contract inferred from the bundled sample, with a short training budget."""
    import io

    contract = infer_contract(pl.read_csv(io.BytesIO(sample_bytes())), DATASET, "diagnosis", budget_s, debounce_s=0)
    # Strict, unlike `contract infer`'s 1 %: these tests quarantine a whole file for one bad row.
    return contract.model_copy(update={"max_invalid_fraction": 0.0})


def prepare(settings: Settings, contract: Contract | None = None) -> tuple[Resources, S3Store]:
    """Provision and upload the contract."""
    res = provision(settings, build_pipeline().routes)
    store = S3Store(settings)
    store.put(contract_key(DATASET), (contract or sample_contract()).to_yaml().encode())
    return res, store


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def ledger(store: S3Store, key: str) -> dict[str, Any] | None:
    """The ledger entry of one dropped key, if it has one."""
    for k in store.keys(f"ledger/{DATASET}/"):
        entry: dict[str, Any] = store.get_json(k)
        if entry["key"] == key:
            return entry
    return None


def versions(store: S3Store) -> list[dict[str, Any]]:
    """Registry versions of the sample model."""
    from sluice.infra.state import MemoryState

    return ModelRegistry(store, MemoryState()).versions(DATASET)


def run_chain(rt: Runtime, key: str, data: bytes) -> dict[str, Any]:
    """Drop and run every stage in order, as the bridge would; returns the new run."""
    before = {k for k in rt.store.keys("") if k.endswith("run.json")}
    rt.store.put(key, data)
    stages = [("validate", lambda k: k == key), ("features", lambda k: k.startswith("validated/")
              and k.endswith("manifest.json")), ("train", lambda k: k.startswith("features/")
              and k.endswith("manifest.json")), ("benchmark", lambda k: k.endswith("run.json")),
              ("register", lambda k: k.endswith(".candidate.json"))]
    for stage, wanted in stages:
        for k in sorted(rt.store.keys("")):
            if wanted(k):
                info = rt.store.head(k)
                assert info is not None
                rt.execute(stage, ObjectCreated(rt.settings.bucket, k, info.size, info.etag).to_dict())
    [new] = [k for k in rt.store.keys("") if k.endswith("run.json") and k not in before]
    run: dict[str, Any] = rt.store.get_json(new)
    return run


def drain(broker: Any, queue: str) -> None:
    """Run a Dramatiq worker on `broker` (a StubBroker) until `queue` is empty, failures and retries included."""
    from dramatiq import Worker

    worker = Worker(broker, worker_timeout=50)
    worker.start()
    try:
        broker.join(queue, fail_fast=False)
        worker.join()
    finally:
        worker.stop()
