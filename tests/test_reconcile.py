"""Reconcile finds every object whose next step is missing, stage by stage, and re-drives it through the runtime."""

from __future__ import annotations

from typing import Any

import pytest

from sluice.core.runtime import Runtime
from sluice.events.s3 import ObjectCreated
from sluice.ml.reconcile import find_gaps, reconcile
from tests.chain import DATASET, sample_bytes


def run(rt: Runtime, stage: str, key: str) -> dict[str, Any]:
    info = rt.store.head(key)
    assert info is not None
    return rt.execute(stage, ObjectCreated(rt.settings.bucket, key, info.size, info.etag).to_dict())


def gaps(rt: Runtime) -> list[tuple[str, str]]:
    return [(g.stage, g.key) for g in find_gaps(rt.store, rt.state, min_age_s=0)]


def only(rt: Runtime, prefix: str, suffix: str) -> str:
    [key] = [k for k in rt.store.keys(prefix) if k.endswith(suffix)]
    return key


@pytest.mark.slow
def test_each_missing_next_step_is_found_until_the_chain_is_complete(runtime: Runtime) -> None:
    drop = f"incoming/{DATASET}/a.csv"
    runtime.store.put(drop, sample_bytes())
    assert find_gaps(runtime.store, runtime.state) == []  # younger than the default minimum age
    chain = [("validate", lambda: drop), ("features", lambda: only(runtime, "validated/", "manifest.json")),
             ("train", lambda: only(runtime, "features/", "manifest.json")),
             ("benchmark", lambda: only(runtime, "runs/", "run.json")),
             ("register", lambda: only(runtime, "registry/", ".candidate.json"))]
    for stage, key in chain:
        assert gaps(runtime) == [(stage, key())]
        run(runtime, stage, key())
    assert gaps(runtime) == []
    # The event was published and recorded; without its record, register is re-driven (and sends it once).
    [marker] = list(runtime.store.keys("published/"))
    runtime.store.delete(marker)
    candidate = only(runtime, "registry/", ".candidate.json")
    assert gaps(runtime) == [("register", candidate)]
    # A re-drive goes through the broker like any delivery.
    [gap] = reconcile(runtime, min_age_s=0)
    assert (gap.stage, gap.key) == ("register", candidate)
    queued = runtime.broker.queues[runtime.queue_name]  # type: ignore[attr-defined]
    assert queued.qsize() == 1
    # Its completed record names the marker among its outputs, so the re-run is not skipped as a duplicate.
    run(runtime, "register", candidate)
    assert runtime.store.exists(marker) and gaps(runtime) == []


def test_a_quarantined_drop_is_no_gap(runtime: Runtime) -> None:
    drop = f"incoming/{DATASET}/bad.csv"
    runtime.store.put(drop, b"mean_radius;diagnosis\n1;benign\n")
    assert gaps(runtime) == [("validate", drop)]
    assert run(runtime, "validate", drop)["outcome"] == "quarantined"
    assert gaps(runtime) == []
