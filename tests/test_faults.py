"""Fault injection with real processes: `sluice worker` subprocesses killed with SIGKILL, a `redis-server` of the
test's own killed and restarted empty, on moto's server.

Redelivery is tuned to seconds, not minutes: leases of 3 s, Dramatiq's worker heartbeat timeout of 3 s with
queue maintenance on every broker command. Bound: after the kill, the chain converges within CONVERGE_S.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sluice.core.settings import Settings
from sluice.infra.aws import client
from sluice.infra.store import S3Store
from sluice.infra.subscribe import TemporarySubscription
from sluice.ml.contract import contract_key
from tests.chain import DATASET, ledger, prepare, sample_bytes, sample_contract, versions, wait_for
from tests.conftest import missing, unique_settings

pytestmark = pytest.mark.faults
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log

# From a kill to the next stage running, or to one version and one event: the lease TTL, Dramatiq's heartbeat
# timeout and the SQS visibility timeout below, plus the stages' own time (measured: see the README's Guarantees).
CONVERGE_S = 60
LEASE_TTL_S = 3
VISIBILITY_S = 5
SIGNING_KEY = "fa17" * 16
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own, with no persistence: a restart comes back empty."""

    def __init__(self, tmp: Path):
        if not Path(REDIS_SERVER).exists():
            missing(f"no redis-server binary at {REDIS_SERVER}")
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.tmp)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        wait_for(lambda: _pings(client), 10, "redis-server to start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.kill()


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update({
        "AWS_ENDPOINT_URL": settings.endpoint_url or "", "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "SLUICE_BUCKET": settings.bucket, "SLUICE_EVENTS_QUEUE": settings.events_queue,
        "SLUICE_TOPIC": settings.topic, "SLUICE_NAMESPACE": settings.namespace,
        "SLUICE_BROKER_URL": settings.broker_url, "SLUICE_MIN_BACKOFF_MS": "200",
        "SLUICE_SIGNING_KEY": settings.signing_key or "",
        "SLUICE_LEASE_TTL_S": str(LEASE_TTL_S), "SLUICE_BROKER_HEARTBEAT_TIMEOUT_MS": "3000",
        "SLUICE_BROKER_MAINTENANCE_CHANCE": "1000000", "SLUICE_RECONCILE_INTERVAL_S": "0",
        **extra,
    })
    return env


class Workers:
    """`sluice worker` processes, each logging to its own file."""

    def __init__(self, settings: Settings, tmp: Path):
        self.settings = settings
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, **extra: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "sluice.cli", "worker", "--threads", "2"],
                                env=worker_env(self.settings, **extra), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted(self.tmp.glob("worker-*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def cli(settings: Settings, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "sluice.cli", *args], env=worker_env(settings),
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture
def deployment(moto_endpoint: str, redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[Settings, Workers]]:
    # Worker processes and this one share a signing key, as a deployment's workers do (core/provenance.py).
    settings = replace(unique_settings(moto_endpoint), broker_url=redis_server.url, signing_key=SIGNING_KEY)
    prepare(settings, sample_contract(budget_s=2.0))
    # A killed worker's bridge may leave a long poll open that takes a notification with it: SQS hands it out
    # again after the visibility timeout (60 s as provisioned; 5 s here, so the bound below stays short).
    sqs = client("sqs", settings)
    sqs.set_queue_attributes(QueueUrl=sqs.get_queue_url(QueueName=settings.events_queue)["QueueUrl"],
                             Attributes={"VisibilityTimeout": str(VISIBILITY_S)})
    workers = Workers(settings, tmp_path)
    yield settings, workers
    workers.stop_all()


def lease_of(settings: Settings, stage: str) -> str | None:
    """The key of an in-progress claim of `stage`, if one is held."""
    import json

    import redis

    client = redis.Redis.from_url(settings.broker_url)
    for key in client.scan_iter(f"{settings.namespace}:idem:{stage}#*"):
        raw = client.get(key)
        if raw and json.loads(raw)["status"] == "in_progress":
            return key.decode()
    return None


def runs(store: S3Store) -> list[str]:
    return [k for k in store.keys(f"runs/{DATASET}/") if k.endswith("/run.json")]


def converged(store: S3Store, subscriber: TemporarySubscription, seen: list[dict[str, Any]]) -> bool:
    seen += subscriber.receive(wait_s=1)
    return bool(seen) and len(versions(store)) == 1


def assert_exactly_once(store: S3Store, subscriber: TemporarySubscription, seen: list[dict[str, Any]],
                        key: str) -> None:
    time.sleep(2 * LEASE_TTL_S)  # anything left to redeliver would have run by now
    seen += subscriber.receive(wait_s=1)
    assert [e["type"] for e in seen] == ["sluice.model.promoted"]
    assert len(versions(store)) == 1 and len(runs(store)) == 1
    entry = ledger(store, key)
    assert entry is not None and entry["outcome"] == "validated"


STAGES = ["validate", "features", "train", "benchmark", "register"]


def test_a_worker_killed_in_each_stage_is_taken_over_by_the_next(deployment: tuple[Settings, Workers]) -> None:
    """One drop, five workers killed in turn: in validate, features, the middle of a fit, benchmark and register.

    Every worker but the one killed in train is held just after its claim of the stage it dies in; the next
    worker gets the unacknowledged message from Dramatiq once the dead one's heartbeat is stale, and runs the
    stage once the dead one's lease has lapsed.
    """
    settings, workers = deployment
    store = S3Store(settings)
    key = f"incoming/{DATASET}/cancer.csv"
    took: dict[str, float] = {}
    with TemporarySubscription(settings) as subscriber:
        t0 = time.monotonic()
        for n, stage in enumerate(STAGES):
            doomed = workers.start(**({} if stage == "train" else {"SLUICE_FAULT_DELAY": f"{stage}=60"}))
            if n == 0:
                store.put(key, sample_bytes())
            try:
                if stage == "train":
                    wait_for(lambda: any(k.endswith("/progress.json") for k in store.keys(f"runs/{DATASET}/")),
                             CONVERGE_S, "the fit to start")
                else:
                    # The claim, and the worker's word that it holds the stage there (logged just after the claim;
                    # a worker killed in between would never write it).
                    wait_for(lambda s=stage: lease_of(settings, s)  # type: ignore[misc]
                             and f"fault injection: holding {s}" in workers.logs(), CONVERGE_S, f"a {stage} claim")
            except AssertionError:
                raise AssertionError(workers.logs()) from None
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
            took[stage] = round(time.monotonic() - t0, 1)
            t0 = time.monotonic()
            assert not versions(store)
        workers.start()
        seen: list[dict[str, Any]] = []
        try:
            wait_for(lambda: converged(store, subscriber, seen), CONVERGE_S, "one version and its event")
        except AssertionError:
            raise AssertionError(workers.logs()) from None
        took["converged"] = round(time.monotonic() - t0, 1)
        print(f"seconds from each kill to the next (the last: to one version and its event): {took}")
        assert_exactly_once(store, subscriber, seen, key)
    logs = workers.logs()
    for stage in STAGES:
        if stage != "train":
            assert f"fault injection: holding {stage}" in logs


def began_count(settings: Settings, stage: str) -> int:
    """How many times a `stage` message began and did not end (core/runtime.py began_key), in the deployment's Redis."""
    import redis

    client = redis.Redis.from_url(settings.broker_url)
    counts = [int(client.get(k) or 0) for k in client.scan_iter(f"{settings.namespace}:began:{stage}#*")]
    return max(counts, default=0)


def test_a_message_that_kills_its_worker_three_times_is_dead_lettered_then_redriven(
        deployment: tuple[Settings, Workers]) -> None:
    """A fit killed with SIGKILL three times, each in a new worker: the fourth delivery is not run (it would kill
    that worker too) but dead-lettered as WorkerKilled; `sluice deadletter redrive` then runs it to one version."""
    from sluice.core import deadletters
    from sluice.core.runtime import MAX_KILLED_ATTEMPTS

    settings, workers = deployment
    store = S3Store(settings)
    key = f"incoming/{DATASET}/cancer.csv"
    store.put(key, sample_bytes())
    try:
        for n in range(1, MAX_KILLED_ATTEMPTS + 1):
            doomed = workers.start()
            wait_for(lambda n=n: began_count(settings, "train") >= n, CONVERGE_S,  # type: ignore[misc]
                     f"train to begin a {n}. time")
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
        workers.start()
        wait_for(lambda: any("train" in r["actor"] for r in deadletters.records(store)), CONVERGE_S,
                 "the train message dead-lettered")
    except AssertionError:
        raise AssertionError(workers.logs()) from None
    [record] = [r for r in deadletters.records(store) if "train" in r["actor"]]
    assert "WorkerKilled" in record["traceback"] and f"began {MAX_KILLED_ATTEMPTS} times before" in record["traceback"]
    assert not versions(store)
    cli(settings, "deadletter", "redrive", str(record["message_id"]))
    try:
        wait_for(lambda: len(versions(store)) == 1, CONVERGE_S, "one version after the redrive")
    except AssertionError:
        raise AssertionError(workers.logs()) from None


def test_redis_and_worker_lost_while_train_waits_then_reconcile_restores_the_chain(
        deployment: tuple[Settings, Workers], redis_server: RedisServer) -> None:
    settings, workers = deployment
    store = S3Store(settings)
    # The train message is held by the worker (as during a debounce, or before a fit): the machine goes down,
    # Redis comes back empty, a new worker starts. No queue holds the message any more.
    first = workers.start(SLUICE_FAULT_DELAY="train=60")
    key = f"incoming/{DATASET}/cancer.csv"
    with TemporarySubscription(settings) as subscriber:
        store.put(key, sample_bytes())
        wait_for(lambda: "fault injection: holding train" in workers.logs(), 60, "the train stage to be held")
        first.send_signal(signal.SIGKILL)
        redis_server.kill()
        redis_server.start()
        workers.start()
        time.sleep(2 * LEASE_TTL_S + 4)
        assert not runs(store), "the delayed train message should have been lost with Redis"
        assert "train" in cli(settings, "reconcile", "--dry-run", "--min-age", "0")
        out = cli(settings, "reconcile", "--min-age", "0")
        assert "re-driven train" in out, out
        seen: list[dict[str, Any]] = []
        try:
            wait_for(lambda: converged(store, subscriber, seen), CONVERGE_S, "one version and its event")
        except AssertionError:
            raise AssertionError(workers.logs()) from None
        assert_exactly_once(store, subscriber, seen, key)
    assert "0 gaps" in cli(settings, "reconcile", "--min-age", "0")


def test_a_redis_outage_longer_than_the_sqs_redrive_loses_nothing(deployment: tuple[Settings, Workers],
                                                                   redis_server: RedisServer) -> None:
    import json

    settings, workers = deployment
    store = S3Store(settings)
    sqs = client("sqs", settings)
    url = sqs.get_queue_url(QueueName=settings.events_queue)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=sqs.get_queue_url(QueueName=settings.dead_letter_queue)["QueueUrl"],
                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    # The redrive policy in seconds instead of minutes: one second of visibility, one receive.
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "1", "RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "1"})})
    workers.start()
    time.sleep(3)
    redis_server.kill()
    key = f"incoming/{DATASET}/cancer.csv"
    store.put(key, sample_bytes())
    wait_for(lambda: "1 in SQS" in cli(settings, "deadletter", "list"), 60,
             "the notification to reach the SQS dead-letter queue")
    redis_server.start()
    time.sleep(3)
    assert ledger(store, key) is None  # nobody will deliver it again by themselves
    assert "re-driven 0 records and 1 SQS dead letters" in cli(settings, "deadletter", "redrive")
    try:
        entry = wait_for(lambda: ledger(store, key), 60, "the drop's outcome")
    except AssertionError:
        raise AssertionError(workers.logs()) from None
    assert entry["outcome"] == "validated"
    assert "0 dead-letter records, 0 in SQS" in cli(settings, "deadletter", "list")
    logs = workers.logs()
    assert logs.count("bridge: cannot reach Redis") == 1 and "Traceback" not in logs  # one line per outage


def test_redis_restarted_empty_during_a_fit_then_the_chain_completes(deployment: tuple[Settings, Workers],
                                                                       redis_server: RedisServer) -> None:
    """The fit goes on without Redis (its lease is taken back when Redis returns); what the restart lost is
    re-driven by reconcile, run here by hand, so the chain ends with one version and one event either way."""
    settings, workers = deployment
    store = S3Store(settings)
    store.put(contract_key(DATASET), sample_contract(budget_s=4.0).to_yaml().encode())
    workers.start()
    key = f"incoming/{DATASET}/cancer.csv"
    with TemporarySubscription(settings) as subscriber:
        store.put(key, sample_bytes())
        wait_for(lambda: any(k.endswith("/progress.json") for k in store.keys(f"runs/{DATASET}/")), 60,
                 "the fit to start")
        redis_server.kill()
        redis_server.start()
        wait_for(lambda: runs(store), 60, "the run the fit was making")
        time.sleep(2 * LEASE_TTL_S)
        cli(settings, "reconcile", "--min-age", "0")
        seen: list[dict[str, Any]] = []
        try:
            wait_for(lambda: converged(store, subscriber, seen), CONVERGE_S, "one version and its event")
        except AssertionError:
            raise AssertionError(workers.logs()) from None
        assert_exactly_once(store, subscriber, seen, key)
