"""Soak under faults: N `sluice worker` processes, M drops over T seconds, random `kill -9`s and one Redis restart.

Runs on moto's server and a redis-server of its own (no persistence, so the restart comes back empty). Each drop
is a different sample of the bundled dataset, every fifth is a copy of an earlier one under a new name (a
duplicate) and one is not a table (quarantined). Killed workers are replaced at once. Workers re-drive missing
steps every few seconds (reconcile), as a deployment does every minute. When the drops are done it waits for
the chain to settle, then prints:

    drops, outcomes, versions, events, duplicated (versions of one run, events sent twice), lost (drops with no
    outcome, gaps reconcile still finds). The goal: 0 lost, 0 duplicated, every arrival with one outcome.

    .venv/bin/python benchmarks/soak.py [--workers 2] [--drops 12] [--seconds 60] [--kills 3] [--seed 1]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--drops", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=60.0, help="spread the drops over this long")
    parser.add_argument("--kills", type=int, default=3, help="random kill -9s while dropping")
    parser.add_argument("--budget", type=float, default=1.0, help="FLAML budget, seconds")
    parser.add_argument("--settle", type=float, default=240.0, help="how long to wait for the chain to settle")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    from moto.server import ThreadedMotoServer

    from sluice.core.settings import Settings
    from sluice.handlers import build_pipeline
    from sluice.infra.aws import client
    from sluice.infra.provision import provision
    from sluice.infra.state import MemoryState
    from sluice.infra.store import S3Store
    from sluice.infra.subscribe import TemporarySubscription
    from sluice.ml.contract import contract_key, infer_contract
    from sluice.ml.reconcile import find_gaps
    from sluice.ml.registry import ModelRegistry

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="sluice-soak-"))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="soak", AWS_SECRET_ACCESS_KEY="soak", AWS_DEFAULT_REGION="us-east-1")
    redis_port = free_port()
    redis_bin = shutil.which("redis-server") or "/usr/bin/redis-server"
    tag = uuid.uuid4().hex[:8]
    settings = replace(Settings(), bucket=f"soak-{tag}", events_queue=f"soak-events-{tag}", topic=f"soak-{tag}",
                       namespace=f"soak-{tag}", endpoint_url=f"http://{host}:{port}",
                       broker_url=f"redis://127.0.0.1:{redis_port}/0", signing_key=uuid.uuid4().hex * 2)
    redis_proc: list[subprocess.Popen[bytes]] = []

    def start_redis() -> None:
        redis_proc.append(subprocess.Popen([redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                            "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL))
        time.sleep(0.5)

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
           "AWS_ENDPOINT_URL": settings.endpoint_url or "", "SLUICE_BUCKET": settings.bucket,
           "SLUICE_EVENTS_QUEUE": settings.events_queue, "SLUICE_TOPIC": settings.topic,
           "SLUICE_NAMESPACE": settings.namespace, "SLUICE_BROKER_URL": settings.broker_url,
           "SLUICE_SIGNING_KEY": settings.signing_key or "",
           "SLUICE_MIN_BACKOFF_MS": "500", "SLUICE_LEASE_TTL_S": "5", "SLUICE_BROKER_HEARTBEAT_TIMEOUT_MS": "5000",
           "SLUICE_BROKER_MAINTENANCE_CHANCE": "1000000", "SLUICE_RECONCILE_INTERVAL_S": "10"}
    workers: list[subprocess.Popen[bytes]] = []

    def start_worker() -> None:
        log = open(tmp / f"worker-{len(workers)}.log", "wb")  # noqa: SIM115 - lives as long as the process
        workers.append(subprocess.Popen([sys.executable, "-m", "sluice.cli", "worker"], env=env, stdout=log,
                                        stderr=subprocess.STDOUT))

    start_redis()
    provision(settings, build_pipeline().routes)
    sqs = client("sqs", settings)
    sqs.set_queue_attributes(QueueUrl=sqs.get_queue_url(QueueName=settings.events_queue)["QueueUrl"],
                             Attributes={"VisibilityTimeout": "10"})
    store = S3Store(settings)
    sample = pl.read_csv(ROOT / "sluice" / "data" / "breast_cancer.csv")
    contract = infer_contract(sample, "soak", "diagnosis", args.budget, debounce_s=3)
    store.put(contract_key("soak"), contract.to_yaml().encode())
    for _ in range(args.workers):
        start_worker()

    kill_at = sorted(rng.uniform(0.1, 0.9) * args.seconds for _ in range(args.kills))
    redis_at = args.seconds / 2
    dropped: dict[str, bytes] = {}
    good: list[bytes] = []
    kills = 0
    t0 = time.monotonic()
    with TemporarySubscription(settings) as subscriber:
        events: list[dict[str, Any]] = []
        for i in range(args.drops):
            due = t0 + i * args.seconds / max(1, args.drops)
            while time.monotonic() < due:
                now = time.monotonic() - t0
                if kill_at and now >= kill_at[0]:
                    kill_at.pop(0)
                    victim = rng.choice([w for w in workers if w.poll() is None])
                    victim.kill()
                    victim.wait()
                    kills += 1
                    print(f"{now:6.1f}s kill -9 worker pid {victim.pid}; starting another", flush=True)
                    start_worker()
                if redis_at is not None and now >= redis_at:
                    redis_at = None  # type: ignore[assignment]
                    redis_proc[-1].kill()
                    redis_proc[-1].wait()
                    print(f"{now:6.1f}s Redis killed, restarted empty", flush=True)
                    start_redis()
                events += subscriber.receive(wait_s=0)
                time.sleep(0.2)
            if i == args.drops // 2:
                data = b"this is not, a table\x00\x01"
            elif i % 5 == 4 and good:
                data = rng.choice(good)  # the same bytes as an earlier drop, under a new name
            else:
                buf = io.BytesIO()
                sample.sample(fraction=0.8, seed=rng.randrange(1 << 30)).write_csv(buf)
                data = buf.getvalue()
                good.append(data)
            key = f"incoming/soak/drop-{i:03d}.csv"
            store.put(key, data)
            dropped[key] = data
        print(f"{time.monotonic() - t0:6.1f}s {args.drops} drops done; waiting for the chain to settle", flush=True)

        def outcomes() -> dict[str, list[str]]:
            seen: dict[str, list[str]] = {}
            for k in store.keys("ledger/soak/"):
                entry = store.get_json(k)
                seen.setdefault(entry["key"], []).append(entry["outcome"])
            return seen

        deadline = time.monotonic() + args.settle
        while time.monotonic() < deadline:
            events += subscriber.receive(wait_s=1)
            if len(outcomes()) == len(dropped) and not find_gaps(store, None, min_age_s=0):
                time.sleep(10)  # anything still queued (a duplicate, an event) lands now
                events += subscriber.receive(wait_s=2)
                break
        settled = time.monotonic() - t0

    final = outcomes()
    versions = ModelRegistry(store, MemoryState()).versions("soak")
    runs = Counter(v["run_id"] for v in versions)
    sent = Counter(e["id"] for e in events)
    gaps = find_gaps(store, None, min_age_s=0)
    summary = {
        "workers": args.workers, "drops": len(dropped), "kills": kills, "redis_restarts": 1,
        "outcomes": dict(Counter(o for os_ in final.values() for o in os_)),
        "arrivals_with_one_outcome": sum(1 for os_ in final.values() if len(os_) == 1),
        "versions": len(versions), "events": len(events), "versions_without_event": max(0, len(versions) - len(sent)),
        "duplicated": {"versions_of_one_run": sum(n - 1 for n in runs.values()),
                       "events_sent_twice": sum(n - 1 for n in sent.values())},
        "lost": {"drops_without_outcome": sorted(set(dropped) - set(final)), "gaps": [g.to_dict() for g in gaps]},
        "seconds": round(settled, 1), "logs": str(tmp),
    }
    print(json.dumps(summary, indent=2))
    for w in workers:
        if w.poll() is None:
            w.kill()
    redis_proc[-1].kill()
    server.stop()


if __name__ == "__main__":
    main()
