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

Next to the figures, the floor, on the same server in the same run: one GET, one PUT and one conditional PUT of a
small signed document, 8 GETs at once, and the registry's lock taken and released (`--redis URL`: in Redis, as a
deployment takes it; in memory otherwise); and one cold register traced request by request, grouped into the
sequential rounds it makes (a request that starts after every request of the round ended opens the next); every
timed register is traced the same way, and the floor table gives the medians of its time in those rounds and
outside them (the lock, building, signing and parsing the documents, handing requests to threads). The
register column's second figure is the slowest of the timed calls (one in eight or so also moves the index head's
tail into its pages).

To compare with an older commit, run this script (it uses only the registry's public API) against that commit's
tree, back to back with this one:

    git worktree add --detach /tmp/before COMMIT && cp benchmarks/registry_scale.py /tmp/before/benchmarks/
    cd /tmp/before && PYTHONPATH=/tmp/before /path/to/.venv/bin/python benchmarks/registry_scale.py ...

`--mlflow PYTHON` runs benchmarks/registry_scale_mlflow.py with that interpreter (a venv with `mlflow`) in the same
run, on SQLite, at `--mlflow-sizes` (10, 100, 1,000 by default).

    .venv/bin/python benchmarks/registry_scale.py [--sizes 10,100,1000,10000] [--reps 15]
        [--redis redis://127.0.0.1:6379/0] [--mlflow /tmp/registry-mlflow-venv/bin/python]
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


def traced(store: Any, fn: Callable[[], Any]) -> list[tuple[float, float, str, str]]:
    """Every S3 request `fn` makes: (start ms, end ms, operation, key), in start order."""
    import threading

    t0 = time.perf_counter()
    starts: dict[int, tuple[float, str, str]] = {}
    calls: list[tuple[float, float, str, str]] = []
    lock = threading.Lock()

    def named(params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        context["bench_key"] = str(params.get("Key", params.get("Prefix", "")))

    def before(model: Any, context: dict[str, Any], **_: Any) -> None:
        with lock:
            starts[id(context)] = (time.perf_counter(), model.name, context.get("bench_key", ""))

    def after(model: Any, context: dict[str, Any], **_: Any) -> None:
        end = time.perf_counter()
        with lock:
            start, name, key = starts.pop(id(context))
            calls.append(((start - t0) * 1000, (end - t0) * 1000, name, key))

    events = store.s3.meta.events
    events.register("before-parameter-build.s3", named)
    events.register("before-call.s3", before)
    events.register("after-call.s3", after)
    try:
        fn()
    finally:
        events.unregister("before-parameter-build.s3", named)
        events.unregister("before-call.s3", before)
        events.unregister("after-call.s3", after)
    return sorted(calls)


def rounds(calls: list[tuple[float, float, str, str]]) -> list[list[tuple[float, float, str, str]]]:
    """Requests grouped into sequential rounds: a request starting after every request of the round ended opens
    the next round."""
    out: list[list[tuple[float, float, str, str]]] = []
    end = -1.0
    for call in calls:
        if not out or call[0] >= end:
            out.append([call])
        else:
            out[-1].append(call)
        end = max(c[1] for c in out[-1])
    return out


def show_trace(calls: list[tuple[float, float, str, str]], total_ms: float) -> str:
    """One line per round: when it started and ended, and its requests."""
    lines = []
    for i, group in enumerate(rounds(calls), 1):
        first, last = min(c[0] for c in group), max(c[1] for c in group)
        what = ", ".join(f"{c[2].replace('Object', '')} {c[3].split('/', 2)[-1]} {c[1] - c[0]:.1f}" for c in group)
        lines.append(f"  round {i}: {first:6.1f}-{last:6.1f} ms ({len(group)}): {what}")
    lines.append(f"  total {total_ms:.1f} ms, of which in S3 rounds "
                 f"{sum(max(c[1] for c in g) - min(c[0] for c in g) for g in rounds(calls)):.1f} ms")
    return "\n".join(lines)


def floor_costs(store: Any, state: Any, size: int, reps: int) -> dict[str, list[float]]:
    """The floor: one GET, one PUT and one conditional PUT of a small signed document, and one round of 8 GETs in
    parallel, on the same server in the same run; and what the registry's lock costs, taken and released."""
    from sluice.ml.registry import _pool

    floor_key = f"registry/{MODEL}/bench/floor.json"
    alias_key = f"registry/{MODEL}/aliases/champion.json"
    eight = [f"registry/{MODEL}/versions/{n:06d}.json" for n in range(1, 9)]
    floor: dict[str, list[float]] = {"get": [], "put": [], "put_if_absent": [], "get_x8": [], "lock": []}
    for rep in range(reps):
        ops: dict[str, Callable[[], Any]] = {
            "get": lambda: store.get_json_or_none(alias_key),
            "put": lambda: store.put_json(floor_key, {"rep": rep}),  # noqa: B023
            "put_if_absent": lambda: store.put_json(f"{floor_key}.{size}.{rep}", {}, if_absent=True),  # noqa: B023
            "get_x8": lambda: list(_pool().map(store.get_json_or_none, eight)),
            "lock": lambda: take_lock(state),
        }
        for name, op in ops.items():
            t = time.perf_counter()
            op()
            floor[name].append(time.perf_counter() - t)
    return floor


def take_lock(state: Any) -> None:
    """Take the registry's lock and release it."""
    with state.lock(f"registry:{MODEL}", 60):
        pass


def serve() -> None:
    """The moto server, and the populating writer on its backend, in a process of their own: the timed client
    then does not share a GIL with the server. Commands on stdin: `populate N [MODEL]`, `quit`."""
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
        model = command[2] if len(command) > 2 else MODEL  # `populate N MODEL`: another model (registry_compare)
        t = time.perf_counter()
        count = int(writer.current(model).head["versions"])
        while count < size:
            count += 1
            champion = writer.current(model).champion
            outcome = "reject" if count % 4 == 0 else "promote"
            writer.register(model, {"run_id": f"run-{count:06d}", "metric": "roc_auc",
                                    "scores": {"candidate": 0.9, "baseline": 0.5}},
                            outcome=outcome, compared_with=champion, at=at(count))
            if count % 100 == 0:
                writer.rollback(model, reason="p99 alarms", by="bench", at=at(count))
        print(json.dumps({"populate_s": round(time.perf_counter() - t, 1),
                          "records": writer.current(model).sequence}), flush=True)
    mock.stop()
    server.stop()


def local_credentials() -> None:
    """Credentials for moto's server only: never a profile's, never another endpoint (registry_compare.py too)."""
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        os.environ.pop(name, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--mlflow", default=None, metavar="PYTHON", help="an interpreter with mlflow installed")
    parser.add_argument("--mlflow-sizes", default="10,100,1000",
                        help="MLflow's populate is ~30 ms a version here: 10,000 would take minutes")
    parser.add_argument("--redis", default=None, metavar="URL",
                        help="take the registry's lock in Redis (as a deployment does) rather than in memory")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    local_credentials()
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
    traces: list[str] = []
    try:
        _, host, port = server.stdout.readline().split()
        settings = replace(Settings(), bucket=BUCKET, broker_url="memory://", signing_key=KEY,
                           endpoint_url=f"http://{host}:{port}")
        over_http = S3Store(settings)
        state: Any = MemoryState()
        if args.redis:
            from sluice.infra.state import RedisState

            state = RedisState(args.redis, f"bench-{os.getpid()}")
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
            in_rounds: list[float] = []  # ms of each timed register spent in its rounds of S3 requests
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
                    if name == "register":  # traced too (three hooks: microseconds), to split its time
                        calls = traced(over_http, op)
                    else:
                        op()
                    timings[name].append(time.perf_counter() - t)
                    if name == "register":
                        in_rounds.append(sum(max(c[1] for c in g) - min(c[0] for c in g) for g in rounds(calls)))
            floor = floor_costs(over_http, state, size, args.reps)
            champion = cold().alias(MODEL)
            total = cold().current(MODEL).head["versions"]
            t = time.perf_counter()
            calls = traced(over_http, lambda: cold().register(
                MODEL, {"run_id": f"bench-{size}-traced", "metric": "roc_auc",  # noqa: B023
                        "scores": {"candidate": 0.9, "baseline": 0.5}},
                outcome="promote", compared_with=champion and champion["version"], at=at(total + 1)))  # noqa: B023
            elapsed = (time.perf_counter() - t) * 1000
            traces.append(f"one cold register at {size:,} versions (request durations in ms):\n"
                          f"{show_trace(calls, elapsed)}")
            row = {"versions": size, "history_records": populated["records"], "populate_s": populated["populate_s"],
                   **{f"{k}_ms": round(statistics.median(v) * 1000, 1) for k, v in timings.items()},
                   "register_max_ms": round(max(timings["register"]) * 1000, 1),
                   **{f"{k}_requests": v for k, v in requests.items()},
                   "register_rounds": len(rounds(calls)),
                   "register_in_rounds_ms": round(statistics.median(in_rounds), 1),
                   "register_outside_ms": round(statistics.median(
                       t * 1000 - r for t, r in zip(timings["register"], in_rounds, strict=True)), 1),
                   **{f"floor_{k}_ms": round(statistics.median(v) * 1000, 2) for k, v in floor.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        server.stdin.write("quit\n")
        server.stdin.flush()
        server.wait(timeout=60)

    print()
    print(f"Sluice registry on moto's server (medians of {args.reps - 1} cold calls; requests = S3 calls each makes)")
    print("| versions | history records | populate (server process) | register (slowest) | alias | show (one page) "
          "| --at |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['versions']:,} | {r['history_records']:,} | {r['populate_s']} s | {r['register_ms']} ms "
              f"({r['register_requests']} req; {r['register_max_ms']} ms) | {r['alias_ms']} ms "
              f"({r['alias_requests']} req) | {r['show_ms']} ms "
              f"({r['show_requests']} req) | {r['at_ms']} ms ({r['at_requests']} req) |")
    print()
    print(f"The floor, same server, same run (medians of {args.reps}): one GET, one PUT, one conditional PUT of a "
          f"small signed document, 8 GETs in parallel, the lock ({'Redis' if args.redis else 'in memory'}) taken "
          "and released")
    print("| versions | register rounds | register: in its rounds, outside them (medians) | GET | PUT | "
          "PUT If-None-Match | 8 GETs at once | lock |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['versions']:,} | {r['register_rounds']} | {r['register_in_rounds_ms']} ms, "
              f"{r['register_outside_ms']} ms | {r['floor_get_ms']} ms | {r['floor_put_ms']} ms | "
              f"{r['floor_put_if_absent_ms']} ms | {r['floor_get_x8_ms']} ms | {r['floor_lock_ms']} ms |")
    print()
    print("\n".join(traces))
    if args.mlflow:
        script = Path(__file__).with_name("registry_scale_mlflow.py")
        print()
        subprocess.run([args.mlflow, str(script), "--sizes", args.mlflow_sizes, "--reps", str(args.reps)], check=False)
    print()
    print(f"load average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    sys.exit(main())
