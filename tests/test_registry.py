"""The registry's lifecycle on moto in-process: transitions, aliases, the append-only history, `champion_at`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from moto import mock_aws

from sluice.core.errors import RegistryError
from sluice.core.settings import Settings
from sluice.infra.provision import provision
from sluice.infra.state import MemoryState
from sluice.infra.store import S3Store
from sluice.ml.registry import ModelRegistry, parse_time
from sluice.ml.registry_index import actions, digest, steps


@pytest.fixture
def registry() -> Iterator[ModelRegistry]:
    with mock_aws():
        settings = replace(Settings(), bucket="sluice-registry", broker_url="memory://")
        provision(settings, [])
        yield ModelRegistry(S3Store(settings), MemoryState())


def t(second: int) -> str:
    return f"2026-03-01T10:00:{second:02d}.000Z"


def test_lifecycle_aliases_and_who_why_of_every_transition(registry: ModelRegistry) -> None:
    v1 = registry.register("m", {"run_id": "r1", "reasons": ["beats the baseline"]}, outcome="promote",
                           compared_with=None, at=t(1))
    assert v1.record["action"] == "promoted" and registry.alias("m")["version"] == 1
    v2 = registry.register("m", {"run_id": "r2"}, outcome="insufficient_evidence", compared_with=1, at=t(2))
    assert v2.record["action"] == "challenger" and registry.alias("m", "challenger")["version"] == 2
    v3 = registry.register("m", {"run_id": "r3"}, outcome="reject", compared_with=1, at=t(3))
    assert v3.record["action"] == "rejected"
    assert registry.snapshot("m").stages == {1: "champion", 2: "challenger", 3: "rejected"}

    # The challenger is promoted by hand; the challenger alias goes, the old champion is archived.
    _, rec = registry.promote("m", 2, reason="looks good on the dashboard", by="ana", at=t(4))
    assert rec["changes"] == [{"version": 2, "from": "challenger", "to": "champion"},
                              {"version": 1, "from": "champion", "to": "archived"}]
    assert (rec["by"], rec["cause"], rec["reason"], rec["previous_champion"]) == (
        "ana", "manual", "looks good on the dashboard", 1)
    assert registry.alias("m")["version"] == 2 and registry.alias("m", "challenger") is None
    assert registry.alias("m")["previous"] == 1

    # A version the gate rejected needs force, and the history says it was forced.
    with pytest.raises(RegistryError, match="--force"):
        registry.promote("m", 3, reason="trust me", by="bob", at=t(5))
    _, forced = registry.promote("m", 3, reason="trust me", by="bob", at=t(5), force=True)
    assert forced["cause"] == "manual, forced past the gate"

    # Rollbacks walk back through the champions in the order they served.
    version, rb = registry.rollback("m", reason="p99 alarms", by="ana", at=t(6))
    assert version["version"] == 2 and rb["previous_champion"] == 3 and rb["action"] == "rolled_back"
    assert registry.rollback("m", reason="again", by="ana", at=t(7))[0]["version"] == 1
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback("m", reason="once more", by="ana", at=t(8))

    with pytest.raises(RegistryError, match="is the champion"):
        registry.archive("m", 1, reason="x", by="ana", at=t(8))
    with pytest.raises(RegistryError, match="already archived"):
        registry.archive("m", 3, reason="x", by="ana", at=t(8))  # rolled back from, so archived
    registry.register("m", {"run_id": "r4"}, outcome="insufficient_evidence", compared_with=1, at=t(8))
    _, archived = registry.archive("m", 4, reason="superseded", by="ana", at=t(9))
    assert archived["changes"] == [{"version": 4, "from": "challenger", "to": "archived"}]
    assert registry.alias("m", "challenger") is None
    with pytest.raises(RegistryError, match="no version 9"):
        registry.promote("m", 9, reason="x", by="ana", at=t(9))

    history = registry.history("m")
    # Every transition is recorded; a registration's together, in one record (what `models history` prints).
    assert [actions(r) for r in history] == [
        "registered+challenger+promoted", "registered+challenger", "registered+rejected", "promoted", "promoted",
        "rolled_back", "rolled_back", "registered+challenger", "archived"]
    assert [(s["action"], s["version"]) for r in history for s in steps(r)] == [
        ("registered", 1), ("challenger", 1), ("promoted", 1), ("registered", 2), ("challenger", 2),
        ("registered", 3), ("rejected", 3), ("promoted", 2), ("promoted", 3), ("rolled_back", 2),
        ("rolled_back", 1), ("registered", 4), ("challenger", 4), ("archived", 4)]
    assert all(r["by"] and r["cause"] and r["reason"] for r in history)
    assert all(s["cause"] and s["reason"] for r in history for s in steps(r))
    # A registration's record says its net effect, and holds the version document it registered.
    first = history[0]
    assert first["changes"] == [{"version": 1, "from": None, "to": "champion"}]
    assert (first["previous_champion"], first["champion"], first["challenger"]) == (None, 1, None)
    assert first["version_document"] == registry.version("m", 1)
    assert first["document"] == digest(first["version_document"])
    assert registry.snapshot("m").stages == {1: "champion", 2: "archived", 3: "archived", 4: "archived"}


def test_history_is_append_only(registry: ModelRegistry) -> None:
    registry.register("m", {"run_id": "r1"}, outcome="promote", compared_with=None, at=t(1))
    registry.register("m", {"run_id": "r2"}, outcome="promote", compared_with=1, at=t(2))
    registry.rollback("m", reason="r", by="me", at=t(3))
    registry.promote("m", 2, reason="fixed", by="me", at=t(4))  # v2 promoted a second time: a new record
    s3, bucket = registry.store.s3, registry.store.bucket
    listing = s3.list_object_versions(Bucket=bucket, Prefix="registry/m/history/")
    keys = [v["Key"] for v in listing["Versions"]]
    assert len(keys) == len(set(keys)) == len(registry.history("m"))  # one object version per record: none rewritten
    assert [r["action"] for r in registry.history("m") if r["version"] == 2].count("promoted") == 2


def test_champion_at_before_and_after_each_change(registry: ModelRegistry) -> None:
    registry.register("m", {"run_id": "r1"}, outcome="promote", compared_with=None, at=t(10))
    registry.register("m", {"run_id": "r2"}, outcome="promote", compared_with=1, at=t(20))
    registry.rollback("m", reason="r", by="me", at=t(30))
    ms = timedelta(milliseconds=1)
    # Each change at t(10), t(20), t(30): a millisecond before it, and at it.
    expected = [(t(10), None, 1), (t(20), 1, 2), (t(30), 2, 1)]
    for change, before, after in expected:
        assert registry.champion_at("m", parse_time(change) - ms)[0] == before, change
        assert registry.champion_at("m", parse_time(change))[0] == after, change
    assert registry.champion_at("m", parse_time("2020-01-01T00:00:00Z")) == (None, None)
    number, record = registry.champion_at("m", parse_time("2026-03-01T10:00:31+00:00"))
    assert number == 1 and record is not None and record["action"] == "rolled_back"
    # A time without a zone is UTC; other zones are converted.
    assert registry.champion_at("m", parse_time("2026-03-01T10:00:25"))[0] == 2
    assert registry.champion_at("m", parse_time("2026-03-01T11:00:25+01:00"))[0] == 2


def test_times_never_go_backwards_in_the_history(registry: ModelRegistry) -> None:
    registry.register("m", {"run_id": "r1"}, outcome="promote", compared_with=None, at=t(20))
    # A worker whose clock is behind: its record keeps the history's order and time.
    registry.register("m", {"run_id": "r2"}, outcome="promote", compared_with=1, at=t(5))
    times = [r["at"] for r in registry.history("m")]
    assert times == sorted(times) and times[-1] == t(20)
    assert registry.champion_at("m", parse_time(t(19)))[0] is None


def test_a_stale_comparison_is_not_promoted(registry: ModelRegistry) -> None:
    registry.register("m", {"run_id": "r1"}, outcome="promote", compared_with=None, at=t(1))
    registry.register("m", {"run_id": "r2"}, outcome="promote", compared_with=1, at=t(2))
    # r3 was benchmarked against v1, but v2 is champion now: it becomes a challenger, not the champion.
    r3 = registry.register("m", {"run_id": "r3"}, outcome="promote", compared_with=1, at=t(3))
    assert r3.version["decision"] == "insufficient_evidence" and r3.record["action"] == "challenger"
    assert "the champion changed (v1 -> v2)" in r3.version["reasons"][-1]
    assert registry.alias("m")["version"] == 2


def test_registration_resumes_after_a_crash(registry: ModelRegistry) -> None:
    """A version document without its history (a writer of the format before one record per registration died
    in between) is replaced by the one the retry registers: the run still becomes one version."""
    registry.store.put_json("registry/m/versions/000001.json", {
        "run_id": "r1", "model": "m", "version": 1, "registered_at": t(1), "decision": "promote",
        "compared_with": None, "reasons": []})
    reg = registry.register("m", {"run_id": "r1"}, outcome="promote", compared_with=None, at=t(2))
    assert reg.version["version"] == 1 and reg.record["action"] == "promoted"
    assert [actions(r) for r in registry.history("m")] == ["registered+challenger+promoted"]
    assert ModelRegistry(registry.store, registry.state).version("m", 1) == reg.version
    again = registry.register("m", {"run_id": "r1"}, outcome="promote", compared_with=None, at=t(3))
    assert not again.created and again.record == reg.record and len(registry.history("m")) == 1
    assert registry.verify("m", artifacts=False) == []


def test_parse_time_names_the_format() -> None:
    with pytest.raises(RegistryError, match="ISO 8601"):
        parse_time("yesterday")


def test_a_registration_sends_its_documents_without_waiting_for_100_continue(registry: ModelRegistry) -> None:
    # botocore asks for `Expect: 100-continue` on every PUT: a round trip before the body, on each of a
    # registration's sequential writes. Sluice's client drops it for small bodies and keeps it for large uploads.
    store = registry.store
    assert isinstance(store, S3Store)
    sent: list[tuple[str, str, bool]] = []

    def capture(request: Any, **_: Any) -> None:
        sent.append((request.method, request.url.rsplit("/", 1)[-1], "Expect" in request.headers))

    store.s3.meta.events.register_first("before-send.s3", capture)
    registry.register("m", {"run_id": "r1"}, outcome="promote", compared_with=None, at=t(1))
    store.put("data/large.bin", b"x" * (2 << 20))
    puts = [(key, expect) for method, key, expect in sent if method == "PUT"]
    assert len(puts) >= 4 and not any(expect for key, expect in puts if key != "large.bin")
    assert ("large.bin", True) in puts


def test_the_s3_client_keeps_a_connection_for_each_thread_that_shares_it() -> None:
    # A worker's stages share one S3 client; with botocore's 10 pooled connections a training's side threads and
    # parallel uploads opened more, and urllib3 logged "Connection pool is full, discarding connection" (13 times
    # in one tester's worker log) and closed each, to be reopened by the next request.
    from sluice.handlers.train import SIDE_THREADS, UPLOAD_THREADS
    from sluice.infra.aws import client
    from sluice.ml.registry import REGISTRY_THREADS

    for threads in (1, 2, 6):
        s3 = client("s3", Settings(worker_threads=threads, endpoint_url="http://127.0.0.1:9"))
        in_flight = threads * (1 + SIDE_THREADS + UPLOAD_THREADS) + REGISTRY_THREADS
        assert s3.meta.config.max_pool_connections >= in_flight
