"""The registry's index: it answers exactly like a replay of the whole history, costs the same number of requests at
any length, refuses what no writer signed (and rebuilds from the history), and survives a writer killed between
the history and the index."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from sluice.core.errors import RegistryError, SluiceError
from sluice.core.settings import Settings
from sluice.infra.provision import provision
from sluice.infra.state import MemoryState
from sluice.infra.store import S3Store
from sluice.ml import registry_index
from sluice.ml.registry import CHALLENGER, CHAMPION, ModelRegistry, Snapshot, parse_time
from tests.conftest import unique_settings

KEY = "ab" * 32
SMALL_PAGES = {"stages": 3, "docs": 2, "timeline": 2, "champions": 2}
SMALL_TAIL = {"entries": 6, "docs": 2}  # the head's tail moves into the pages every other write or so


def t(n: int) -> str:
    return (datetime(2026, 3, 1, 10) + timedelta(seconds=n)).isoformat() + "Z"


@pytest.fixture
def small_pages() -> Iterator[None]:
    """Pages of two or three entries, so that a short history crosses many page boundaries."""
    with pytest.MonkeyPatch.context() as mp:
        for kind, size in SMALL_PAGES.items():
            mp.setitem(registry_index.PAGE, kind, size)
        for kind, size in SMALL_TAIL.items():
            mp.setitem(registry_index.TAIL, kind, size)
        yield


@pytest.fixture
def registry(small_pages: None) -> Iterator[ModelRegistry]:
    with mock_aws():
        s = replace(Settings(), bucket="sluice-index", broker_url="memory://", signing_key=KEY)
        provision(s, [])
        yield ModelRegistry(S3Store(s), MemoryState())


def fresh(reg: ModelRegistry) -> ModelRegistry:
    """A cold reader: a new CLI process or worker."""
    return ModelRegistry(reg.store, reg.state)


def raw_put(reg: ModelRegistry, key: str, doc: Any) -> None:
    """A write by someone without the signing key."""
    reg.store.s3.put_object(Bucket=reg.store.bucket, Key=key, Body=json.dumps(doc).encode())


# -- the reference: a replay of the whole history -------------------------------------------------------------


def replay_aliases(snap: Snapshot) -> dict[str, dict[str, Any] | None]:
    """What the aliases must say, from the whole history (as the registry computed them before the index)."""
    return {
        CHAMPION: None if snap.champion is None else {
            "version": snap.champion, "since": snap.since(snap.champion),
            "previous": snap.champions[-2] if len(snap.champions) > 1 else None},
        CHALLENGER: None if snap.challenger is None else {
            "version": snap.challenger,
            "since": next(r["at"] for r in reversed(snap.records)
                          if r["action"] == "challenger" and r["version"] == snap.challenger)},
    }


def replay_champion_at(records: list[dict[str, Any]], when: datetime) -> tuple[int | None, int | None]:
    champion, cause = None, None
    for record in records:
        if parse_time(record["at"]) > when:
            break
        if record["champion"] != champion:
            champion, cause = record["champion"], record["sequence"]
    return champion, cause


def assert_index_answers_like_the_history(reg: ModelRegistry, model: str = "m") -> None:
    cold = fresh(reg)
    snap = cold.snapshot(model)
    versions = cold.version_numbers(model)
    listing = cold.page(model, page=1, limit=max(1, len(versions)))
    assert [v["version"] for v in listing["versions"]] == sorted(versions, reverse=True)
    assert listing["stages"] == {n: snap.stages.get(n) for n in versions}
    assert (listing["champion"], listing["challenger"]) == (snap.champion, snap.challenger)
    assert listing["aliases"] == replay_aliases(snap)
    # One page at a time covers every version once.
    paged = [v["version"] for p in range(1, listing["total"] // 3 + 2) for v in cold.page(model, p, 3)["versions"]]
    assert paged == sorted(versions, reverse=True)
    for name, expected in replay_aliases(snap).items():
        assert cold.alias(model, name) == expected, name
    idx, docs = cold.indexed_versions(model)
    assert [docs[n] for n in sorted(docs)] == cold.versions(model)
    for n in versions:
        gate = [r for r in snap.records if r["version"] == n and r["cause"] == "gate"]
        rescored = [r["sequence"] for r in snap.records if r["version"] == n and r["action"] == "rescored"]
        assert idx.entry(n) == [snap.stages.get(n), gate[-1]["sequence"] if gate else None,
                                rescored[-1] if rescored else None, gate[-1]["action"] if gate else None], n
    ms = timedelta(milliseconds=1)
    for record in snap.records:
        for when in (parse_time(record["at"]) - ms, parse_time(record["at"]), parse_time(record["at"]) + ms):
            number, cause = cold.champion_at(model, when)
            assert (number, cause["sequence"] if cause else None) == replay_champion_at(snap.records, when), when
    assert cold.verify(model, artifacts=False) == []


# -- equivalence ------------------------------------------------------------------------------------------------

OUTCOMES = st.sampled_from(["promote", "promote", "insufficient_evidence", "reject"])
OPERATION = st.one_of(
    st.tuples(st.just("register"), OUTCOMES, st.booleans()),
    st.tuples(st.just("promote"), st.integers(1, 12), st.booleans()),
    st.tuples(st.just("rollback"), st.just(0), st.just(False)),
    st.tuples(st.just("archive"), st.integers(1, 12), st.just(False)),
    st.tuples(st.just("rescore"), st.integers(1, 12), st.booleans()),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(OPERATION, min_size=1, max_size=24), st.integers(0, 3))
def test_after_random_transitions_the_index_answers_like_a_full_replay(
        small_pages: None, operations: list[tuple[str, Any, bool]], same_second_every: int) -> None:
    with mock_aws():
        s = replace(Settings(), bucket="sluice-index-eq", broker_url="memory://", signing_key=KEY)
        provision(s, [])
        reg = ModelRegistry(S3Store(s), MemoryState())
        runs = 0
        for i, (kind, arg, flag) in enumerate(operations):
            # Several records share a time now and then (same second), and one writer's clock is behind.
            at = t(i // (same_second_every + 1) * 10 - (7 if i % 5 == 4 else 0))
            try:
                if kind == "register":
                    runs += 1
                    champion = reg.current("m").champion
                    compared = champion if flag or champion is None else max(1, champion - 1)
                    reg.register("m", {"run_id": f"run-{runs}", "reasons": [f"reason {runs}"]}, outcome=arg,
                                 compared_with=compared, at=at)
                elif kind == "promote":
                    reg.promote("m", arg, reason="by hand", by="ana", at=at, force=flag)
                elif kind == "rollback":
                    reg.rollback("m", reason="alarms", by="ana", at=at)
                elif kind == "archive":
                    reg.archive("m", arg, reason="retired", by="bob", at=at)
                else:
                    reg.record_rescore("m", arg, scores_before={"a": 1}, scores_after={"a": 2 if flag else 3},
                                       by="ci", at=at, reason="loader fix")
            except RegistryError:
                pass  # refused transitions change nothing, in both
        if runs:
            assert_index_answers_like_the_history(reg)
            # A retried registration finds its version through the index and changes nothing.
            again = fresh(reg).register("m", {"run_id": "run-1"}, outcome="promote", compared_with=None, at=t(999))
            assert not again.created and again.version["version"] == 1
            assert len(fresh(reg).history("m")) == len(reg.history("m"))


def populate(reg: ModelRegistry, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        reg.register("m", {"run_id": f"r{i}"}, outcome="promote" if i % 3 else "insufficient_evidence",
                     compared_with=reg.current("m").champion, at=t(i))


def test_a_rebuilt_index_equals_the_incremental_one(registry: ModelRegistry) -> None:
    populate(registry, 9)
    registry.rollback("m", reason="r", by="me", at=t(50))
    registry.register("m", {"run_id": "waiting"}, outcome="insufficient_evidence", compared_with=8, at=t(51))
    registry.archive("m", 10, reason="r", by="me", at=t(52))
    prefix = "registry/m/index/"
    assert fresh(registry).current("m").head["tail"], "the incremental index keeps its newest entries in the head"
    before = logical(fresh(registry).current("m"))
    for key in list(registry.store.keys(prefix)):
        registry.store.delete(key)
    assert logical(fresh(registry).current("m")) == before  # rebuilt in memory by a reader
    assert not list(registry.store.keys(prefix))  # readers write nothing
    registry.reindex("m")
    assert fresh(registry).current("m").head["tail"] == {}  # a rebuild writes every entry into its page
    assert logical(fresh(registry).current("m")) == before


def as_one_record_per_transition(reg: ModelRegistry, model: str = "m") -> None:
    """Rewrite the history as the registry wrote it before a registration's transitions shared one record (one
    record per transition, without the version document), chained and signed, and drop the index."""
    records = reg.history(model)
    for key in list(reg.store.keys(f"registry/{model}/")):
        if "/history/" in key or "/index/" in key:
            reg.store.delete(key)
    prev, sequence = None, 0
    for record in records:
        for step in registry_index.steps(record):
            sequence += 1
            old = {"model": model, "sequence": sequence, "version": step["version"], "action": step["action"],
                   "changes": step["changes"], "cause": step["cause"], "by": record["by"], "reason": step["reason"],
                   "at": record["at"],
                   **{k: v for k, v in step.items() if k not in ("model", "sequence", "by", "at", "prev", "steps",
                                                                 "version_document")},
                   "prev": prev}
            reg.store.put_json(f"registry/{model}/history/{sequence:08d}.json", old)
            prev = registry_index.digest(old)
    reg._cache.clear()  # it holds the records as they were


def test_a_history_of_one_record_per_transition_reads_and_takes_new_records(registry: ModelRegistry) -> None:
    populate(registry, 7)
    registry.rollback("m", reason="r", by="me", at=t(50))
    registry.register("m", {"run_id": "rejected"}, outcome="reject", compared_with=None, at=t(51))
    before = fresh(registry).page("m", 1, 20)
    combined = len(registry.history("m"))
    as_one_record_per_transition(registry)
    history = fresh(registry).history("m")
    assert len(history) > combined and not any("steps" in r for r in history)
    after = fresh(registry).page("m", 1, 20)
    assert {k: after[k] for k in ("stages", "champion", "challenger", "aliases", "versions")} == {
        k: before[k] for k in ("stages", "champion", "challenger", "aliases", "versions")}
    assert_index_answers_like_the_history(registry)
    # New registrations (one record each) follow the old records; the index folds both kinds.
    populate(registry, 3, start=60)
    assert [registry_index.actions(r) for r in fresh(registry).history("m")[-3:]] == [
        "registered+challenger", "registered+challenger+promoted", "registered+challenger+promoted"]
    assert_index_answers_like_the_history(registry)
    registry.reindex("m")
    assert_index_answers_like_the_history(registry)


def test_a_head_of_the_format_before_tails_is_read_as_is_and_written_as_the_new_format(
        registry: ModelRegistry) -> None:
    populate(registry, 5)
    registry.reindex("m")  # every entry in its page, an empty tail: what the format-2 writer left
    head_key = "registry/m/index/head.json"
    old = {k: v for k, v in registry.store.get_json(head_key).items() if k != "tail"} | {"format": 2}
    registry.store.put_json(head_key, old)
    before = logical(fresh(registry).current("m"))
    reads = count_requests(registry, lambda: fresh(registry).current("m"))
    assert "ListObjectsV2" not in reads, reads  # not rebuilt from the history
    populate(registry, 1, start=5)
    assert registry.store.get_json(head_key)["format"] == registry_index.FORMAT == 3
    assert logical(fresh(registry).current("m"))[1]["docs"][:5] == before[1]["docs"]
    assert_index_answers_like_the_history(registry)


def logical(idx: registry_index.Index) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """What an index says, whether an entry sits in the head's tail or in its page: the head without its tail
    (and without the writes its writer made with it, `pending`), and every valid entry of each kind."""
    head = idx.head
    versions, depth, timeline = int(head["versions"]), int(head["depth"]), int(head["timeline"])
    return {k: v for k, v in head.items() if k not in ("tail", "format", "pending")}, {
        "stages": [idx.entry(n) for n in range(1, versions + 1)],
        "docs": [idx.doc(n) for n in range(1, versions + 1)],
        "timeline": [idx.get("timeline", i) for i in range(timeline)],
        "champions": [idx.get("champions", i) for i in range(depth)],
    }


# -- cost does not grow with the history --------------------------------------------------------------------


def count_requests(reg: ModelRegistry, fn: Any) -> dict[str, int]:
    counts: dict[str, int] = {}

    def hook(model: Any, **_: Any) -> None:
        counts[model.name] = counts.get(model.name, 0) + 1

    reg.store.s3.meta.events.register("before-call.s3", hook)
    try:
        fn()
    finally:
        reg.store.s3.meta.events.unregister("before-call.s3", hook)
    return counts


def test_reads_and_writes_take_the_same_requests_at_any_length(registry: ModelRegistry,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def costs(n: int) -> list[dict[str, int]]:
        cold = fresh(registry)
        champion = cold.current("m").champion
        middle = parse_time(t(n // 2))
        return [
            count_requests(cold, lambda: fresh(registry).register(
                "m", {"run_id": f"new-{n}"}, outcome="promote", compared_with=champion, at=t(n))),
            count_requests(cold, lambda: fresh(registry).alias("m")),
            count_requests(cold, lambda: fresh(registry).page("m", 1, 2)),
            count_requests(cold, lambda: fresh(registry).champion_at("m", middle)),
        ]

    populate(registry, 6)
    with monkeypatch.context() as mp:  # a tail that never moves into the pages: the common write
        mp.setitem(registry_index.TAIL, "entries", 10**6)
        mp.setitem(registry_index.TAIL, "docs", 10**6)
        small = costs(6)
        populate(registry, 30, start=7)
        large = costs(37)
        retried = count_requests(registry, lambda: fresh(registry).register(
            "m", {"run_id": "new-37"}, outcome="promote", compared_with=None, at=t(99)))
    # The same requests, give or take a page boundary (which pages an operation touches depends on where the
    # versions fall, not on how many there are); a replay would read 6 times as many objects here.
    for before, after in zip(small, large, strict=True):
        assert sum(after.values()) <= sum(before.values()) + 2, (small, large)
    register, alias, page, at = large
    # The alias as the signed index says it: the head, and the look for a newer record (a HEAD); not the alias
    # file alone, which an earlier signed copy could replace (tests/test_trust.py).
    assert alias == {"GetObject": 1, "HeadObject": 1}
    # A registration reads the head and asks whether the run's pointer exists (at once: a HEAD, not a GET of an
    # object that a new run does not have) and no page; it writes one history record (registered, challenger,
    # promoted: created with If-None-Match, which is its look for a record newer than the head), then the
    # version, the champion alias (the challenger's is deleted) and the head, which says which version the run
    # became (no pointer object yet).
    assert register == {"GetObject": 1, "HeadObject": 1, "PutObject": 4, "DeleteObject": 1}, large
    assert not registry.store.exists("registry/m/index/runs/new-37.json")
    # Found through the head: the head and the (absent) pointer, its gate record (returned; the version is in the
    # head), and the look for a newer record that a write appending nothing makes (whether it exists: a HEAD);
    # nothing written.
    assert retried == {"GetObject": 2, "HeadObject": 2}, retried
    assert sum(page.values()) <= 6 and sum(at.values()) <= 4, large
    # Once the tail outgrows SMALL_TAIL, its entries move into their pages (read, then written before the head);
    # the head keeps only the hot entries, and the next write is back to reading no page.
    spilled = costs(38)[0]
    assert spilled["GetObject"] > 2 and spilled["PutObject"] > 4, spilled
    assert registry.store.exists("registry/m/index/runs/new-37.json")  # the tail's runs became pointers
    # A run registered before the spill is found through its pointer, read because the first round found it (the
    # pointer's HEAD, and the look for a newer record of a write that appends nothing); nothing written.
    again_37 = count_requests(registry, lambda: fresh(registry).register(
        "m", {"run_id": "new-37"}, outcome="promote", compared_with=None, at=t(99)))
    assert again_37["HeadObject"] == 2 and "PutObject" not in again_37, again_37
    found = fresh(registry).register("m", {"run_id": "new-37"}, outcome="promote", compared_with=None, at=t(99))
    assert not found.created and found.version["run_id"] == "new-37" and found.version["version"] == 38, found
    tail = fresh(registry).current("m").head["tail"]
    assert sum(len(v) for v in tail.values()) <= 4 and "docs" not in tail, tail
    with monkeypatch.context() as mp:
        mp.setitem(registry_index.TAIL, "entries", 10**6)
        again = costs(39)[0]
        assert again == {"GetObject": 1, "HeadObject": 1, "PutObject": 4}, again
    assert_index_answers_like_the_history(registry)


# -- what no writer signed ------------------------------------------------------------------------------------


def test_a_planted_index_is_refused_and_rebuilt(registry: ModelRegistry) -> None:
    populate(registry, 5)
    truth = fresh(registry).current("m").head
    head_key = "registry/m/index/head.json"
    # Unsigned: someone with write access to the bucket but not the key says v1 is the champion.
    raw_put(registry, head_key, {**truth, "champion": 1, "challenger": None})
    assert fresh(registry).current("m").champion == truth["champion"]
    assert fresh(registry).page("m")["champion"] == truth["champion"]
    problems = registry.verify("m", artifacts=False)
    assert any(p.startswith(f"{head_key}: not written by a Sluice stage") for p in problems), problems
    # The next write rebuilds it from the history and signs it.
    populate(registry, 1, start=5)
    assert registry.verify("m", artifacts=False) == []
    assert_index_answers_like_the_history(registry)


def test_a_tampered_page_is_refused_and_rebuilt(registry: ModelRegistry) -> None:
    populate(registry, 7)
    key = "registry/m/index/stages/000001.json"  # versions 4-6
    stored = registry.store.get_json(key)
    raw_put(registry, key, {**stored, "entries": [["champion", None, None]] * 3})
    listing = fresh(registry).page("m", 1, 7)
    assert listing["stages"] == {n: fresh(registry).snapshot("m").stages.get(n) for n in range(1, 8)}
    populate(registry, 1, start=7)
    assert registry.verify("m", artifacts=False) == []


def test_an_index_signed_by_a_key_holder_but_not_the_history_is_reported_and_reindexed(
        registry: ModelRegistry) -> None:
    populate(registry, 5)
    head_key = "registry/m/index/head.json"
    head = registry.store.get_json(head_key)
    registry.store.put_json(head_key, {**head, "champion": 1})
    problems = registry.verify("m", artifacts=False)
    assert any(p.startswith(f"{head_key}: says champion 1, the history says") for p in problems), problems
    registry.reindex("m")
    assert registry.verify("m", artifacts=False) == []
    # A forged record after the index's last one is refused, as any unsigned document is.
    last = registry.history("m")[-1]
    raw_put(registry, f"registry/m/history/{last['sequence'] + 1:08d}.json", {**last, "sequence": last["sequence"] + 1})
    with pytest.raises(Exception, match="not written by a Sluice stage"):
        fresh(registry).page("m")


# -- a writer that dies between the history and the index ---------------------------------------------------


def test_a_writer_failing_after_the_history_leaves_a_registry_that_reads_correctly(
        registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    populate(registry, 4)

    def boom(*_: Any, **__: Any) -> None:
        raise ConnectionError("the network went away after the history was written")

    with monkeypatch.context() as mp:
        mp.setattr(ModelRegistry, "_flush", boom)
        with pytest.raises(ConnectionError):
            registry.promote("m", 1, reason="by hand", by="ana", at=t(30))
        with pytest.raises(ConnectionError):
            registry.register("m", {"run_id": "late"}, outcome="promote", compared_with=1, at=t(31))
    cold = fresh(registry)
    assert cold.current("m").sequence == len(cold.history("m"))  # the newer records are folded in on read
    assert cold.current("m").champion == cold.snapshot("m").champion == 5
    assert cold.page("m")["stages"][1] == "archived"
    # Until the next write the alias documents lag (they are a cache); `verify` says so, the next write repairs.
    assert any("aliases/champion.json" in p for p in cold.verify("m", artifacts=False))
    again = fresh(registry).register("m", {"run_id": "late"}, outcome="promote", compared_with=1, at=t(32))
    assert not again.created and again.version["version"] == 5
    assert_index_answers_like_the_history(registry)


def test_a_write_failing_with_its_head_landed_is_repaired_by_the_next_writer(
        registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    # The head lands, the champion alias and the version document written with it fail: the writer raises and
    # leaves no note, so the next writer of this very process (the same state backend) writes them again.
    monkeypatch.setitem(registry_index.TAIL, "entries", 10**6)  # no page to write: the head goes with them
    monkeypatch.setitem(registry_index.TAIL, "docs", 10**6)
    populate(registry, 4)
    real_put = registry.store.put

    def failing(key: str, data: bytes, **kw: Any) -> bool:
        if "/aliases/" in key or "/versions/" in key:
            raise ConnectionError(f"the network went away writing {key}")
        return real_put(key, data, **kw)

    champion = fresh(registry).current("m").champion
    with monkeypatch.context() as mp:
        mp.setattr(registry.store, "put", failing)
        with pytest.raises(ConnectionError):
            registry.register("m", {"run_id": "late"}, outcome="promote", compared_with=champion, at=t(31))
    assert registry.store.get_json(HEAD_KEY)["champion"] == 5
    assert registry.store.get_json("registry/m/aliases/champion.json")["version"] == champion
    assert not registry.store.exists("registry/m/versions/000005.json")
    assert fresh(registry).version("m", 5)["run_id"] == "late"  # from the head's copy
    # The next write changes no alias and registers nothing, and repairs both.
    registry.record_rescore("m", 2, scores_before={}, scores_after={"candidate": 0.1}, by="ana", at=t(32),
                            reason="a bug in the metric")
    assert registry.store.get_json("registry/m/aliases/champion.json")["version"] == 5
    assert registry.store.get_json("registry/m/versions/000005.json")["run_id"] == "late"
    assert_index_answers_like_the_history(registry)


def test_a_writer_repairs_what_the_head_lists_unless_a_note_says_it_landed(
        registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry_index.TAIL, "entries", 10**6)
    monkeypatch.setitem(registry_index.TAIL, "docs", 10**6)
    populate(registry, 4)

    def rescore(reg: ModelRegistry, n: int) -> dict[str, int]:
        return count_requests(reg, lambda: reg.record_rescore(  # a version not rescored before: the same reads
            "m", n, scores_before={}, scores_after={"candidate": n / 10}, by="ana", at=t(40 + n), reason="r"))

    # The last registration's head lists the challenger alias and v4's document; its writer left a note that they
    # landed, so the next writer writes only its own record and head (which lists nothing: nothing went with it).
    assert registry.store.get_json(HEAD_KEY)["pending"] == {"aliases": ["challenger"], "versions": [4]}
    assert rescore(fresh(registry), 1) == {"GetObject": 2, "PutObject": 2}
    assert "pending" not in registry.store.get_json(HEAD_KEY)
    # A writer with no note (a new process with the in-memory state, a Redis restarted: the same as after a writer
    # that died) writes again what the head lists: the alias, and the version document (found, and checked).
    registry.register("m", {"run_id": "r5"}, outcome="promote", compared_with=4, at=t(50))
    unnoted = ModelRegistry(registry.store, MemoryState())
    assert rescore(unnoted, 2) == {"GetObject": 3, "PutObject": 4}
    assert registry.store.get_json(HEAD_KEY)["pending"] == {"aliases": ["challenger"], "versions": [5]}
    assert rescore(ModelRegistry(registry.store, unnoted.state), 3) == {"GetObject": 2, "PutObject": 2}
    # A note on another head (one written since by a writer outside this state backend) is no note on this one.
    registry.register("m", {"run_id": "r6"}, outcome="promote", compared_with=5, at=t(51))
    registry.state.note(registry._settled_key("m"), "the sha256 of another head", 60)
    assert rescore(fresh(registry), 4) == {"GetObject": 3, "PutObject": 4}
    assert_index_answers_like_the_history(registry)


KILLED_WRITER = """
import os, signal, sys, time
from dataclasses import replace
from sluice.core.settings import Settings
from sluice.infra.state import MemoryState
from sluice.infra.store import S3Store
from sluice.ml import registry_index
from sluice.ml.registry import ModelRegistry

for kind, size in {pages}.items():
    registry_index.PAGE[kind] = size
for kind, size in {tail}.items():
    registry_index.TAIL[kind] = size
settings = replace(Settings.from_env(), bucket=sys.argv[1], broker_url="memory://", endpoint_url=sys.argv[2])
store = S3Store(settings)
where = sys.argv[3]
put = store.put
pages = []
# A registration that moves nothing into a page writes the champion alias, the version document and the head in one
# round: which of them land before the process is killed (the others wait for the kill).
LANDS = {{"alias-before-version": {{"alias"}}, "before-head": {{"alias", "version"}}, "head-only": {{"head"}},
         "head-and-alias": {{"head", "alias"}}, "head-and-version": {{"head", "version"}}}}
landed = []
if where in LANDS:
    for kind in registry_index.TAIL:
        registry_index.TAIL[kind] = 10**6  # no page to write: the head goes in the same round
def put_then_die(key, data, **kw):
    # Just after the history record: nothing derived from it is written.
    if where == "after-history" and "/history/" not in key:
        os.kill(os.getpid(), signal.SIGKILL)
    kind = ("alias" if "/aliases/" in key else "version" if "/versions/" in key
            else "head" if key.endswith("/index/head.json") else None)
    if where in LANDS and kind is not None:
        if kind in LANDS[where]:
            done = put(key, data, **kw)
            landed.append(kind)
            return done
        for _ in range(3000):  # until the ones that land have
            if LANDS[where] <= set(landed):
                break
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)
    if where == "before-index" and "/index/" in key and "/runs/" not in key:
        os.kill(os.getpid(), signal.SIGKILL)
    # The head's tail has just moved into its pages (written), and the head that says so is not written yet.
    if where == "spilled-before-head" and key.endswith("/index/head.json") and pages:
        os.kill(os.getpid(), signal.SIGKILL)
    if "/index/" in key and "/runs/" not in key and not key.endswith("/head.json"):
        pages.append(key)
    return put(key, data, **kw)
store.put = put_then_die
reg = ModelRegistry(store, MemoryState())
reg.register("m", {{"run_id": "killed-" + where}}, outcome="promote", compared_with=reg.current("m").champion,
             at="2026-03-01T12:00:00Z")
print("not killed")
"""


def killed_writer(moto_endpoint: str, where: str, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    """Five versions, then a registration by a process killed (SIGKILL) at `where`."""
    monkeypatch.setenv("SLUICE_SIGNING_KEY", KEY)
    s = unique_settings(moto_endpoint, signing_key=KEY)
    provision(s, [])
    reg = ModelRegistry(S3Store(s), MemoryState())
    populate(reg, 5)
    script = KILLED_WRITER.format(pages=SMALL_PAGES, tail=SMALL_TAIL)
    done = subprocess.run([sys.executable, "-c", script, s.bucket, moto_endpoint, where],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    return reg


@pytest.mark.parametrize("where", ["after-history", "alias-before-version", "before-index", "before-head",
                                   "spilled-before-head"])
def test_a_writer_killed_between_the_history_and_the_index_leaves_a_registry_that_reads_correctly(
        moto_endpoint: str, small_pages: None, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = killed_writer(moto_endpoint, where, monkeypatch)
    cold = fresh(reg)
    history = cold.history("m")
    assert history[-1]["version"] == 6 and history[-1]["cause"] == "gate"
    assert history[-1]["version_document"]["run_id"] == f"killed-{where}"
    assert cold.current("m").sequence == len(history) and cold.current("m").champion == cold.snapshot("m").champion
    assert cold.page("m")["versions"][0]["run_id"] == f"killed-{where}"
    written = reg.store.exists("registry/m/versions/000006.json")
    if where != "before-index":  # killed on a page write, at once with the version document's
        assert written == where.endswith("before-head"), where
    # Its version document is read from the history when the writer died before writing it; and an alias that
    # went first (the champion alias and the version document are written at once) resolves.
    assert fresh(reg).version("m", 6) == history[-1]["version_document"]
    if where == "alias-before-version":
        assert fresh(reg).alias("m")["version"] == 6
        assert fresh(reg).champion("m") == history[-1]["version_document"]
    if not written:
        assert any("version document is gone (the history holds it" in p
                   for p in fresh(reg).verify("m", artifacts=False))
    # The retry (the message is redelivered) completes it; nothing is registered twice.
    again = fresh(reg).register("m", {"run_id": f"killed-{where}"}, outcome="promote",
                                compared_with=history[-1]["previous_champion"], at="2026-03-01T12:00:01Z")
    assert not again.created and again.version["version"] == 6
    assert reg.store.get_json("registry/m/versions/000006.json") == history[-1]["version_document"]
    assert_index_answers_like_the_history(reg)


HEAD_KEY = "registry/m/index/head.json"


@pytest.mark.parametrize("where", ["head-only", "head-and-alias", "head-and-version"])
def test_a_writer_killed_after_its_head_landed_leaves_a_state_the_next_writer_repairs(
        moto_endpoint: str, small_pages: None, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The head, the champion alias and the version document are written in one round: the head can land while
    # the others do not. The head lists them (`pending`); the next writer, finding no note that they landed (the
    # killed process left none), writes them again.
    reg = killed_writer(moto_endpoint, where, monkeypatch)
    history = fresh(reg).history("m")
    registered = history[-1]["version_document"]
    head = reg.store.get_json(HEAD_KEY)
    assert head["sequence"] == len(history) and head["champion"] == 6
    assert head["pending"] == {"aliases": ["champion"], "versions": [6]}
    alias_written = reg.store.get_json("registry/m/aliases/champion.json")["version"] == 6
    version_written = reg.store.exists("registry/m/versions/000006.json")
    assert (alias_written, version_written) == ("alias" in where, "version" in where)
    # Readers: the index says v6 without folding anything; the version document not written is read from the
    # head's copy; an alias not written lags, as after a writer killed just after the history record (a cache).
    cold = fresh(reg)
    assert cold.current("m").champion == 6 == cold.snapshot("m").champion and not cold.current("m").folded
    assert fresh(reg).version("m", 6) == registered
    assert fresh(reg).page("m")["versions"][0] == registered
    problems = fresh(reg).verify("m", artifacts=False)
    assert any("aliases/champion.json: says v5" in p for p in problems) == (not alias_written), problems
    assert any("version document is gone" in p for p in problems) == (not version_written), problems
    # The retry (the message is redelivered) registers nothing twice and repairs both.
    again = fresh(reg).register("m", {"run_id": f"killed-{where}"}, outcome="promote",
                                compared_with=history[-1]["previous_champion"], at="2026-03-01T12:00:01Z")
    assert not again.created and again.version["version"] == 6
    assert reg.store.get_json("registry/m/versions/000006.json") == registered
    assert fresh(reg).alias("m")["version"] == 6
    assert_index_answers_like_the_history(reg)


@pytest.mark.parametrize("where", ["head-only", "head-and-version"])
def test_a_lifecycle_command_after_a_writer_killed_after_its_head_repairs_what_it_does_not_change(
        moto_endpoint: str, small_pages: None, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A rescore changes no alias: the champion alias the killed writer left unwritten is written all the same.
    reg = killed_writer(moto_endpoint, where, monkeypatch)
    assert reg.store.get_json("registry/m/aliases/champion.json")["version"] == 5
    with monkeypatch.context() as mp:  # nothing moves into a page: the repairs go with the head
        mp.setitem(registry_index.TAIL, "entries", 10**6)
        mp.setitem(registry_index.TAIL, "docs", 10**6)
        fresh(reg).record_rescore("m", 3, scores_before={"candidate": 0.9}, scores_after={"candidate": 0.8},
                                  by="ana", at="2026-03-01T12:00:05Z", reason="a bug in the metric")
    assert reg.store.get_json("registry/m/aliases/champion.json")["version"] == 6
    assert reg.store.get_json("registry/m/versions/000006.json") == fresh(reg).history("m")[-2]["version_document"]
    # The repairs went with the rescore's head, which lists them in turn (until a note says they landed).
    assert reg.store.get_json(HEAD_KEY)["pending"] == {"aliases": ["champion"], "versions": [6]}
    assert_index_answers_like_the_history(reg)


@pytest.mark.parametrize("where", ["after-history", "before-head", "spilled-before-head"])
def test_a_lifecycle_command_after_a_killed_writer_decides_on_the_whole_history(
        moto_endpoint: str, small_pages: None, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A writer does not look for history records newer than the head before deciding: its first record, created
    # with If-None-Match at the head's next number, fails when the dead writer left one, and it decides again.
    reg = killed_writer(moto_endpoint, where, monkeypatch)
    before = fresh(reg).snapshot("m")
    assert before.champion == 6  # the killed writer's registration promoted v6; its head did not say so
    assert reg.store.get_json("registry/m/index/head.json")["champion"] != 6
    fresh(reg).rollback("m", reason="alarms", by="ana", at="2026-03-01T12:00:05Z")
    after = fresh(reg).snapshot("m")
    assert after.champion == before.champions[-2] and after.stages[6] == "archived"
    assert_index_answers_like_the_history(reg)


def test_models_show_prints_one_page_newest_first(registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from sluice.cli import main

    monkeypatch.setenv("SLUICE_BUCKET", registry.store.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    monkeypatch.setenv("SLUICE_SIGNING_KEY", KEY)
    for i in range(1, 8):
        version = {"run_id": f"r{i}", "metric": "roc_auc", "scores": {"candidate": 0.9, "baseline": 0.5},
                   "lineage": {"sources": [], "feature_set_version": "fs-1"}, "artifact": {"uri": f"s3://b/{i}"}}
        registry.register("m", version, outcome="reject" if i == 5 else "promote",
                          compared_with=registry.current("m").champion, at=t(i))
    shown = CliRunner().invoke(main, ["models", "show", "m", "--page", "2", "--limit", "3", "--json"])
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.output)
    assert [v["version"] for v in doc["versions"]] == [4, 3, 2] and (doc["total"], doc["pages"]) == (7, 3)
    assert doc["stages"] == {"4": "archived", "3": "archived", "2": "archived"}
    assert doc["champion"]["version"] == 7 and doc["champion"]["previous"] == 6
    text = CliRunner().invoke(main, ["models", "show", "m", "--limit", "3"]).output
    assert text.startswith("model m: champion v7\n") and " *v7  champion" in text and "  v5  rejected" in text
    assert "v4 " not in text and "page 1 of 3 (7 versions, 3 a page; --page N for more)" in text
    missing = CliRunner().invoke(main, ["models", "show", "nope"])
    assert missing.exit_code == 1 and "no model 'nope'" in missing.output


def test_a_lifecycle_command_by_a_role_that_cannot_write_versions_after_a_killed_writer(
        moto_endpoint: str, small_pages: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # The killed writer left its registration's record and nothing else; the operator's role (core/iam.py) does
    # not write versions/, so its command leaves the document unwritten, says so, and readers read it anyway.
    reg = killed_writer(moto_endpoint, "after-history", monkeypatch)
    real_put = reg.store.put

    def operator_put(key: str, data: bytes, **kw: Any) -> bool:
        if "/versions/" in key:
            raise PermissionError(f"AccessDenied: {key}")
        return real_put(key, data, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(reg.store, "put", operator_put)
        fresh(reg).rollback("m", reason="alarms", by="ana", at="2026-03-01T12:00:05Z")
    assert "versions/000006.json is not written (AccessDenied" in caplog.text
    assert not reg.store.exists("registry/m/versions/000006.json")
    assert fresh(reg).version("m", 6) == fresh(reg).history("m")[-2]["version_document"]
    assert fresh(reg).snapshot("m").stages[6] == "archived" == fresh(reg).page("m")["stages"][6]
    reg.reindex("m")  # by a role that writes versions/
    assert reg.store.exists("registry/m/versions/000006.json")
    assert_index_answers_like_the_history(reg)


def test_the_dashboards_model_and_version_pages_cost_the_same_at_any_length(
        registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    # The model page read every version document and replayed the whole history (two requests per version: minutes
    # at 10,000 versions); the version page replayed the history too. Now: the index's page, the history's tail.
    import sluice.ui
    from sluice.ui import Dashboard

    monkeypatch.setattr(sluice.ui, "VERSIONS_SHOWN", 4)
    monkeypatch.setattr(sluice.ui, "HISTORY_SHOWN", 5)
    board = Dashboard(replace(Settings(), bucket="sluice-index", broker_url="memory://", signing_key=KEY),
                      store=registry.store, state=registry.state)

    def costs() -> list[int]:
        board.registry = fresh(registry)
        model = count_requests(registry, lambda: board.model("m", None))
        board.registry = fresh(registry)
        version = count_requests(registry, lambda: board.version("m", 2))
        return [sum(model.values()), sum(version.values())]

    def versions(n: int, start: int = 0) -> None:  # as the register stage writes them (lineage, scores)
        for i in range(start, start + n):
            lineage = {"run_id": f"r{i}", "contract_version": "c" * 64, "feature_set_version": "f" * 16,
                       "data_versions": [], "sources": []}
            registry.register("m", {"run_id": f"r{i}", "dataset": "m", "artifact": {"sha256": "a" * 64},
                                    "lineage": lineage, "scores": {"candidate": 0.9, "champion": None}},
                              outcome="promote" if i % 3 else "insufficient_evidence",
                              compared_with=registry.current("m").champion, at=t(i))

    versions(6)
    small = costs()
    versions(30, start=6)
    large = costs()
    assert all(after <= before + 2 for before, after in zip(small, large, strict=True)), (small, large)
    snap = registry.snapshot("m")
    page = board.model("m", None)
    assert page.count('<a href="/models/m/') >= 4 and "v36" in page and "v32" not in page.split("<h2>History")[0]
    assert "The newest 5 of 36 records" in page and 'href="/models/m?page=2"' in page
    older = board.model("m", None, page=9)  # 36 versions, 4 a page: the oldest page holds versions 4 to 1
    rows = older.split('<table id="versions">')[1].split("</table>")[0]
    assert [f"v{n}" in rows for n in (5, 4, 1)] == [False, True, True]
    for n in (1, 4):  # each version's stage is the history's
        assert f'<span class="pill {snap.stages[n]}">{snap.stages[n]}</span>' in rows
    with pytest.raises(SluiceError, match="not 10"):
        board.model("m", None, page=10)
    # `?page=abc` or `?page=-1` said "no model 'm'; models: m"
    with pytest.raises(SluiceError, match=r"\?page= takes a page number from 1"):
        board.model("m", None, page=0)
    assert f'<span class="pill {snap.stages[2]}">' in board.version("m", 2)


def test_a_runs_version_stage_and_gate_record_cost_the_same_at_any_length(registry: ModelRegistry) -> None:
    # `sluice trace` found a drop's version by reading every version and replaying the history twice.
    def answer(run_id: str) -> tuple[Any, ...]:
        found = fresh(registry).run_state("m", run_id)
        assert found is not None
        version, stage, record = found
        return version["version"], stage, record["sequence"] if record else None

    def replayed(run_id: str) -> tuple[Any, ...]:
        [version] = [v for v in registry.versions("m") if v["run_id"] == run_id]
        n = version["version"]
        gate = [r for r in registry.history("m") if r["version"] == n and r.get("cause") == "gate"]
        return n, registry.snapshot("m").stages[n], gate[-1]["sequence"]

    populate(registry, 6)
    small = count_requests(registry, lambda: answer("r2"))
    populate(registry, 30, start=6)
    registry.rollback("m", reason="r", by="me", at=t(90))
    large = count_requests(registry, lambda: answer("r2"))
    assert sum(large.values()) <= sum(small.values()) + 2 and "ListObjectsV2" not in large, (small, large)
    for run_id in ("r0", "r2", "r33", "r35"):
        assert answer(run_id) == replayed(run_id)
    assert fresh(registry).run_state("m", "never-registered") is None
