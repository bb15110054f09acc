"""The registry at 10, 100, 1,000 and 10,000 versions of one model: cold register, alias resolve, `models show`
(one page) and `--at`, on moto's server, with the S3 requests each one makes.

The server runs in a process of its own. The versions are registered there through the registry API
(`ModelRegistry.register`, a rollback every 100 versions, a quarter rejected), its S3 calls answered by the
server's own moto backend (`MotoBackend` below: no botocore, no HTTP), because 10,000 registrations through
botocore on a loaded 2-core machine take longer than the benchmark may run (about 150 ms each). Every timed
operation goes over HTTP to `ThreadedMotoServer`, through a new `ModelRegistry` each time (no cache: what a new CLI
process or worker sees; the boto3 client and its connection pool are reused, as a worker's are). `show` is
`registry.page(model, 1, 20)`, what `sluice models show` prints; `--at` is `champion_at` at a random time.
The bucket's versioning is suspended (see below: a quirk of moto's versioned store, not of S3).

`--mlflow PYTHON` runs benchmarks/registry_scale_mlflow.py with that interpreter (a venv with `mlflow`) in the same
run, on SQLite, at `--mlflow-sizes` (10, 100, 1,000 by default).

    .venv/bin/python benchmarks/registry_scale.py [--sizes 10,100,1000,10000] [--reps 15]
        [--mlflow /tmp/registry-mlflow-venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

KEY = "5e" * 32
MODEL = "scale"
BUCKET = "sluice-scale"
T0 = datetime(2024, 1, 1)


def at(i: int) -> str:
    """One registration an hour."""
    return (T0 + timedelta(hours=i)).isoformat() + "Z"


class MotoBackend:
    """The few S3 calls S3Store makes, answered by moto's own S3 backend in this process, without botocore or
    HTTP: only for populating (same storage, same signed bytes and metadata; conditional writes honoured)."""

    def __init__(self) -> None:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        self.backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]

    @staticmethod
    def _missing(operation: str, code: str = "NoSuchKey") -> Exception:
        from botocore.exceptions import ClientError

        return ClientError({"Error": {"Code": code, "Message": code}}, operation)

    def get_object(self, Bucket: str, Key: str, **_: Any) -> dict[str, Any]:
        import io

        key = self.backend.get_object(Bucket, Key)
        if key is None:
            raise self._missing("GetObject")
        meta = {k[len("x-amz-meta-"):]: v for k, v in key.metadata.items() if k.lower().startswith("x-amz-meta-")}
        return {"Body": io.BytesIO(key.value), "Metadata": meta}

    def head_object(self, Bucket: str, Key: str, **_: Any) -> dict[str, Any]:
        key = self.backend.get_object(Bucket, Key)
        if key is None:
            raise self._missing("HeadObject", "404")
        return {"ContentLength": key.size, "ETag": key.etag, "VersionId": key.version_id, "Metadata": {}}

    def put_object(self, Bucket: str, Key: str, Body: bytes, Metadata: dict[str, str] | None = None,
                   IfNoneMatch: str | None = None, ContentType: str | None = None, **_: Any) -> dict[str, Any]:
        if IfNoneMatch == "*" and self.backend.get_object(Bucket, Key) is not None:
            raise self._missing("PutObject", "PreconditionFailed")
        key = self.backend.put_object(Bucket, Key, Body, disable_notification=True)
        meta = {f"x-amz-meta-{k}": v for k, v in (Metadata or {}).items()}
        if ContentType:
            meta["Content-Type"] = ContentType
        key.set_metadata(meta)
        return {}

    def delete_object(self, Bucket: str, Key: str, **_: Any) -> dict[str, Any]:
        self.backend.delete_object(Bucket, Key)
        return {}

    def get_paginator(self, _: str) -> Any:
        backend = self.backend

        class Pages:
            def paginate(self, Bucket: str, Prefix: str) -> list[dict[str, Any]]:
                bucket = backend.get_bucket(Bucket)
                names = sorted(k for k in bucket.keys if k.startswith(Prefix)
                               and backend.get_object(Bucket, k) is not None)
                return [{"Contents": [{"Key": k} for k in names]}]

        return Pages()


def requests_made(store: Any, fn: Callable[[], Any]) -> int:
    """How many S3 requests `fn` makes."""
    count = [0]

    def hook(**_: Any) -> None:
        count[0] += 1

    store.s3.meta.events.register("before-call.s3", hook)
    try:
        fn()
    finally:
        store.s3.meta.events.unregister("before-call.s3", hook)
    return count[0]


def serve() -> None:
    """The moto server, and the populating writer on its backend, in a process of their own: the timed client
    then does not share a GIL with the server. Commands on stdin: `populate N`, `quit`."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto import mock_aws
    from moto.server import ThreadedMotoServer

    from sluice.core.memory import MemoryState
    from sluice.core.settings import Settings
    from sluice.infra.provision import provision
    from sluice.infra.store import S3Store
    from sluice.ml.registry import ModelRegistry

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    mock = mock_aws()
    mock.start()  # the server's backend, in this process; requests to the server's endpoint still go over HTTP
    local = replace(Settings(), bucket=BUCKET, broker_url="memory://", signing_key=KEY)
    provision(local, [])
    # Sluice's bucket is versioned; moto's versioned key store compares every older version of a key on each PUT
    # to it (quadratic in the number of overwrites: ~3 ms a PUT of the index head after 1,000 writes), which real
    # S3 does not. The registry never reads old versions, so this bucket keeps none.
    S3Store(local).s3.put_bucket_versioning(Bucket=local.bucket, VersioningConfiguration={"Status": "Suspended"})
    writer = ModelRegistry(S3Store(local, s3=MotoBackend()), MemoryState())
    print(f"ready {host} {port}", flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        size = int(command[1])
        t = time.perf_counter()
        count = int(writer.current(MODEL).head["versions"])
        while count < size:
            count += 1
            champion = writer.current(MODEL).champion
            outcome = "reject" if count % 4 == 0 else "promote"
            writer.register(MODEL, {"run_id": f"run-{count:06d}", "metric": "roc_auc",
                                    "scores": {"candidate": 0.9, "baseline": 0.5}},
                            outcome=outcome, compared_with=champion, at=at(count))
            if count % 100 == 0:
                writer.rollback(MODEL, reason="p99 alarms", by="bench", at=at(count))
        print(json.dumps({"populate_s": round(time.perf_counter() - t, 1),
                          "records": writer.current(MODEL).sequence}), flush=True)
    mock.stop()
    server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--mlflow", default=None, metavar="PYTHON", help="an interpreter with mlflow installed")
    parser.add_argument("--mlflow-sizes", default="10,100,1000",
                        help="MLflow's populate is ~30 ms a version here: 10,000 would take minutes")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        os.environ.pop(name, None)
    if args.serve:
        serve()
        return
    sizes = [int(s) for s in args.sizes.split(",")]

    from sluice.core.memory import MemoryState
    from sluice.core.settings import Settings
    from sluice.infra.store import S3Store
    from sluice.ml.registry import ModelRegistry
    from sluice.ml.registry_index import PAGE

    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert server.stdin is not None and server.stdout is not None
    rows: list[dict[str, Any]] = []
    try:
        _, host, port = server.stdout.readline().split()
        settings = replace(Settings(), bucket=BUCKET, broker_url="memory://", signing_key=KEY,
                           endpoint_url=f"http://{host}:{port}")
        over_http = S3Store(settings)
        state = MemoryState()
        rng = random.Random(0)
        print(f"moto {__import__('moto').__version__} server at {host}:{port} (its own process); index pages: {PAGE}")
        for size in sizes:
            server.stdin.write(f"populate {size}\n")
            server.stdin.flush()
            populated = json.loads(server.stdout.readline())

            def cold() -> ModelRegistry:
                return ModelRegistry(over_http, state)

            timings: dict[str, list[float]] = {"register": [], "alias": [], "show": [], "at": []}
            requests: dict[str, int] = {}
            for rep in range(args.reps):
                champion = cold().alias(MODEL)
                total = cold().current(MODEL).head["versions"]
                run = {"run_id": f"bench-{size}-{rep}", "metric": "roc_auc",
                       "scores": {"candidate": 0.9, "baseline": 0.5}}
                when = (T0 + timedelta(hours=rng.uniform(0, total))).replace(tzinfo=UTC)
                ops: dict[str, Callable[[], Any]] = {
                    "register": lambda: cold().register(MODEL, run, outcome="promote",  # noqa: B023
                                                        compared_with=champion and champion["version"],  # noqa: B023
                                                        at=at(total + 1)),  # noqa: B023
                    "alias": lambda: cold().alias(MODEL),
                    "show": lambda: cold().page(MODEL, 1, 20),
                    "at": lambda: cold().champion_at(MODEL, when),  # noqa: B023
                }
                for name, op in ops.items():
                    if rep == 0:
                        requests[name] = requests_made(over_http, op)
                        continue  # the first round counts requests (and warms the connection pool)
                    t = time.perf_counter()
                    op()
                    timings[name].append(time.perf_counter() - t)
            row = {"versions": size, "history_records": populated["records"], "populate_s": populated["populate_s"],
                   **{f"{k}_ms": round(statistics.median(v) * 1000, 1) for k, v in timings.items()},
                   **{f"{k}_requests": v for k, v in requests.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        server.stdin.write("quit\n")
        server.stdin.flush()
        server.wait(timeout=60)

    print()
    print(f"Sluice registry on moto's server (medians of {args.reps - 1} cold calls; requests = S3 calls each makes)")
    print("| versions | history records | populate (server process) | register | alias | show (one page) | --at |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['versions']:,} | {r['history_records']:,} | {r['populate_s']} s | {r['register_ms']} ms "
              f"({r['register_requests']} req) | {r['alias_ms']} ms ({r['alias_requests']} req) | {r['show_ms']} ms "
              f"({r['show_requests']} req) | {r['at_ms']} ms ({r['at_requests']} req) |")
    if args.mlflow:
        script = Path(__file__).with_name("registry_scale_mlflow.py")
        print()
        subprocess.run([args.mlflow, str(script), "--sizes", args.mlflow_sizes, "--reps", str(args.reps)], check=False)
    print()
    print(f"load average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    sys.exit(main())
