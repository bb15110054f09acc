"""Claims are leases: owned by one execution, renewed while it runs, lapsing when its holder dies.

The state rules run against both twins (Redis and in-memory); the runtime rules on the unit runtime.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import dramatiq
import pytest

from sluice.core.runtime import Runtime, claim_key
from sluice.events.s3 import ObjectCreated
from sluice.infra.state import COMPLETED, IN_PROGRESS, MemoryState, RedisState, StateBackend
from sluice.ml.contract import contract_key
from tests.chain import DATASET, sample_bytes, sample_contract


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def state(request: pytest.FixtureRequest) -> Iterator[StateBackend]:
    if request.param == "memory":
        yield MemoryState()
        return
    backend = RedisState(request.getfixturevalue("redis_url"), f"sluice-test-{uuid.uuid4().hex[:8]}")
    yield backend
    for key in backend.redis.scan_iter(backend.prefix + "*"):
        backend.redis.delete(key)


def test_a_lease_is_its_owners_alone(state: StateBackend) -> None:
    assert state.claim("k", "a", 5) is None
    held = state.claim("k", "b", 5)
    assert held is not None and (held.status, held.owner) == (IN_PROGRESS, "a")
    # Someone else can neither renew, complete nor release it.
    assert not state.renew("k", "b", 5)
    assert not state.complete("k", "b", {"x": 1}, 5)
    assert not state.release("k", "b")
    assert state.record("k").owner == "a"  # type: ignore[union-attr]
    assert state.renew("k", "a", 5)
    assert state.complete("k", "a", {"outputs": ["o"]}, 5)
    done = state.record("k")
    assert done is not None and done.status == COMPLETED and done.result == {"outputs": ["o"]}
    assert not state.release("k", "a")  # a completed record is no lease
    state.forget("k")
    assert state.record("k") is None


def test_beginnings_count_until_an_end_is_recorded(state: StateBackend) -> None:
    """What the runtime counts to stop a message that kills its worker: deliveries that began and never ended."""
    assert [state.began("k#m.0", 60) for _ in range(3)] == [1, 2, 3]
    assert state.began("k#m.1", 60) == 1  # another attempt (a retry) counts on its own
    state.ended("k#m.0")
    assert state.began("k#m.0", 60) == 1


def test_a_note_is_read_once_and_lapses(state: StateBackend) -> None:
    """What the registry leaves for the next holder of its lock: taken (read and removed) in one step."""
    assert state.take_note("n") is None
    state.note("n", "head-digest", 60)
    state.note("n", "newer", 60)  # the last one stands
    assert state.take_note("n") == "newer"
    assert state.take_note("n") is None  # taken: the next holder finds none
    state.note("n", "short", 0.05)
    time.sleep(0.15)
    assert state.take_note("n") is None


def test_a_lease_not_renewed_lapses_and_the_next_claim_wins(state: StateBackend) -> None:
    assert state.claim("k", "dead", 0.3) is None
    time.sleep(0.5)
    assert state.claim("k", "alive", 5) is None
    assert not state.complete("k", "dead", {}, 5)  # the dead holder's late completion changes nothing
    assert state.record("k").owner == "alive"  # type: ignore[union-attr]


def drop(rt: Runtime, key: str, data: bytes) -> ObjectCreated:
    rt.store.put(key, data)
    info = rt.store.head(key)
    assert info is not None
    return ObjectCreated(rt.settings.bucket, key, info.size, info.etag, info.version_id)


def short_leases(rt: Runtime, ttl_s: float) -> Runtime:
    rt.settings = replace(rt.settings, lease_ttl_s=ttl_s)
    rt.heartbeat.ttl_s = ttl_s
    return rt


def test_a_duplicate_waits_for_a_live_holder_and_runs_once_its_holder_is_dead(runtime: Runtime) -> None:
    rt = short_leases(runtime, 0.5)
    event = drop(rt, f"incoming/{DATASET}/a.csv", sample_bytes())
    key = claim_key("validate", event)
    # A live holder (renewing): the duplicate is retried later, never acknowledged and dropped.
    assert rt.state.claim(key, "worker-1:msg", 0.5) is None
    with rt.heartbeat.hold(key, "worker-1:msg", 10):
        time.sleep(0.8)  # longer than the TTL: only the heartbeat keeps it alive
        with pytest.raises(dramatiq.Retry) as retry:
            rt.execute("validate", event.to_dict())
        assert 0 < retry.value.delay <= 1500  # type: ignore[operator]
    assert not list(rt.store.keys(f"ledger/{DATASET}/"))
    # The holder dies (no more renewals): within one TTL the redelivery runs the stage.
    time.sleep(0.7)
    result = rt.execute("validate", event.to_dict())
    assert result["outcome"] == "done"
    [entry] = [rt.store.get_json(k) for k in rt.store.keys(f"ledger/{DATASET}/")]
    assert entry["outcome"] == "validated"


def test_the_heartbeat_stops_at_the_time_limit(runtime: Runtime) -> None:
    rt = short_leases(runtime, 0.3)
    assert rt.state.claim("k", "me", 0.3) is None
    with rt.heartbeat.hold("k", "me", 0.5):  # a wedged stage: renewed until its limit, then left to lapse
        time.sleep(0.4)
        assert rt.state.record("k") is not None
        time.sleep(0.8)
        assert rt.state.record("k") is None


def test_a_completed_record_does_not_outvote_the_bucket(runtime: Runtime) -> None:
    event = drop(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    first = runtime.execute("validate", event.to_dict())
    manifest = next(k for k in first["outputs"] if k.endswith("manifest.json"))
    assert runtime.execute("validate", event.to_dict()) == first  # a duplicate while the outputs exist
    for k in first["outputs"]:
        runtime.store.delete(k)  # the bucket was emptied (or recreated)
    again = runtime.execute("validate", event.to_dict())
    assert again["outcome"] == "done" and runtime.store.exists(manifest)


def test_the_same_bytes_after_a_quarantine_and_a_contract_fix_are_validated(runtime: Runtime) -> None:
    # The contract says radius is at most 10: the sample breaks it and is quarantined.
    fixed = sample_contract()
    columns = {**fixed.columns, "mean_radius": fixed.columns["mean_radius"].model_copy(update={"max": 10.0})}
    strict = fixed.model_copy(update={"columns": columns, "max_invalid_fraction": 0.0})
    runtime.store.put(contract_key(DATASET), strict.to_yaml().encode())
    event = drop(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    assert runtime.execute("validate", event.to_dict())["outcome"] == "quarantined"
    # Fixed contract, the same file dropped again (the same key, bytes and ETag): validated, not skipped.
    runtime.store.put(contract_key(DATASET), fixed.to_yaml().encode())
    again = drop(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())
    assert again.idempotency_key == event.idempotency_key
    assert runtime.execute("validate", again.to_dict())["outcome"] == "done"
    entries: list[dict[str, Any]] = [runtime.store.get_json(k) for k in runtime.store.keys(f"ledger/{DATASET}/")]
    assert [e["outcome"] for e in entries] == ["validated"]
