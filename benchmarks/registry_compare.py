"""Two trees of Sluice side by side on one moto server, interleaved: cold register, alias, show and `--at` at each
size, with the wall time and the CPU each one costs the client and the server.

On a shared 2-core machine the load changes from one minute to the next, so two runs back to back compare the load
as much as the code. Here one server process (benchmarks/registry_scale.py's, populated through the registry API on
moto's own backend) answers two client processes, one per tree (its code through PYTHONPATH), which take turns:
rounds of K operations each, the order reversed every round. Next to the wall time, each operation's CPU seconds
in its client (all threads) and in the server (measured around each batch, divided by K; it includes the two
reads each operation's setup makes, the same for both trees): CPU moves less with the load than wall time does.

    git worktree add --detach /tmp/before COMMIT
    .venv/bin/python benchmarks/registry_compare.py /tmp/before . [--sizes 10,10000] [--rounds 20] [--k 3]
        [--ops register,alias,show,at] [--redis redis://127.0.0.1:6379/0] [--own-models]

With `--own-models` each tree writes a model of its own, both populated the same way: needed when the trees differ
in what a write leaves for the next one (a tree would repair what the other tree's writes left).

The server is this tree's; the trees must read and write the same registry format.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


def cpu_s() -> float:
    """This process's CPU seconds, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serve() -> None:
    """registry_scale.py's server, which also answers `cpu` with its CPU seconds."""
    sys.path.insert(0, str(HERE.parent))
    import registry_scale

    stdin = sys.stdin

    class Commands:
        def __iter__(self) -> Iterator[str]:
            for line in stdin:
                if line.startswith("cpu"):
                    print(json.dumps({"cpu": cpu_s(), "threads": threading.active_count()}), flush=True)
                    continue
                yield line

    sys.stdin = Commands()  # type: ignore[assignment]
    registry_scale.serve()


def client(tree: str, host: str, port: str, tag: str, redis: str | None, model: str) -> None:
    """One tree's client: `OP K` on stdin, K cold operations on `model`, their (wall ms, CPU ms) on stdout."""
    sys.path.insert(0, str(HERE.parent))
    import registry_scale as rs

    from sluice.core.memory import MemoryState
    from sluice.core.settings import Settings
    from sluice.infra.store import S3Store
    from sluice.ml.registry import ModelRegistry

    settings = replace(Settings(), bucket=rs.BUCKET, broker_url="memory://", signing_key=rs.KEY,
                       endpoint_url=f"http://{host}:{port}")
    store = S3Store(settings)
    state: Any = MemoryState()
    if redis:
        from sluice.infra.state import RedisState

        state = RedisState(redis, f"compare-{tag}-{os.getpid()}")
    rng = random.Random(0)
    n = 0
    import sluice.ml.registry

    print(f"ready {Path(sluice.ml.registry.__file__).parent.parent}", flush=True)
    for line in sys.stdin:
        op, k = line.split()[:2]
        out = []
        for _ in range(int(k)):
            n += 1
            champion = ModelRegistry(store, state).alias(model)
            total = ModelRegistry(store, state).current(model).head["versions"]
            run = {"run_id": f"{tag}-{os.getpid()}-{n}", "metric": "roc_auc",
                   "scores": {"candidate": 0.9, "baseline": 0.5}}
            when = (rs.T0 + timedelta(hours=rng.uniform(0, total))).replace(tzinfo=UTC)
            ops: dict[str, Callable[[], Any]] = {
                "register": lambda: ModelRegistry(store, state).register(
                    model, run, outcome="promote", compared_with=champion and champion["version"],  # noqa: B023
                    at=rs.at(total + 1)),  # noqa: B023
                "alias": lambda: ModelRegistry(store, state).alias(model),
                "show": lambda: ModelRegistry(store, state).page(model, 1, 20),
                "at": lambda: ModelRegistry(store, state).champion_at(model, when),  # noqa: B023
            }
            c, t = cpu_s(), time.perf_counter()
            ops[op]()
            out.append(((time.perf_counter() - t) * 1000, (cpu_s() - c) * 1000))
        print(json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", help="two trees: the baseline, then the one to compare")
    parser.add_argument("--sizes", default="10,10000")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--k", type=int, default=3, help="operations per turn")
    parser.add_argument("--ops", default="register,alias,show,at")
    parser.add_argument("--redis", default=None, metavar="URL", help="the registry's lock in Redis")
    parser.add_argument("--own-models", action="store_true",
                        help="each tree writes a model of its own (populated twice): for a change in what a write "
                             "leaves for the next writer, whose repairs the other tree's writes would otherwise cause")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import registry_scale

    registry_scale.local_credentials()
    if args.serve:
        serve()
        return
    if args.client:
        tree, host, port, tag, model = args.client
        client(tree, host, port, tag, args.redis, model)
        return
    trees = [str(Path(t).resolve()) for t in args.trees]
    if len(trees) != 2:
        parser.error("give two trees: the baseline, then the one to compare")

    def start(*extra: str, tree: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, str(HERE), *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, cwd=tree, env={**os.environ, "PYTHONPATH": tree})

    def ask(proc: subprocess.Popen[str], line: str) -> Any:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    server = start("--serve", tree=str(HERE.parent.parent))
    assert server.stdout is not None
    _, host, port = server.stdout.readline().split()
    clients, loaded = [], []
    for i, tree in enumerate(trees):
        extra = ["--redis", args.redis] if args.redis else []
        model = f"{registry_scale.MODEL}-t{i}" if args.own_models else registry_scale.MODEL
        proc = start("--client", tree, host, port, f"t{i}", model, *extra, tree=tree)
        assert proc.stdout is not None
        loaded.append(proc.stdout.readline().split()[1])  # the registry module that client imported
        clients.append(proc)
    commits = [subprocess.run(["git", "-C", t, "rev-parse", "--short", "HEAD"], text=True, capture_output=True,
                              check=False).stdout.strip() for t in trees]
    print(f"baseline: {loaded[0]} ({commits[0]}); compared: {loaded[1]} ({commits[1]}); moto at {host}:{port}")
    print("| versions | operation | baseline: wall, client CPU, server CPU (ms) | compared | wall ratio | load |")
    print("|---|---|---|---|---|---|")
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            for model in ([f"{registry_scale.MODEL}-t{i}" for i in range(2)] if args.own_models
                          else [registry_scale.MODEL]):
                ask(server, f"populate {size} {model}")
            for op in args.ops.split(","):
                for proc in clients:
                    ask(proc, f"{op} 2")  # warm
                got: list[dict[str, list[float]]] = [{"wall": [], "cpu": [], "server": []} for _ in clients]
                for r in range(args.rounds):
                    order = list(range(len(clients)))
                    for i in order if r % 2 == 0 else order[::-1]:
                        before = ask(server, "cpu")["cpu"]
                        out = ask(clients[i], f"{op} {args.k}")
                        after = ask(server, "cpu")["cpu"]
                        got[i]["wall"] += [w for w, _ in out]
                        got[i]["cpu"] += [c for _, c in out]
                        got[i]["server"].append((after - before) * 1000 / args.k)
                med = [{k: statistics.median(v) for k, v in g.items()} for g in got]
                cells = [f"{m['wall']:.1f}, {m['cpu']:.1f}, {m['server']:.1f}" for m in med]
                print(f"| {size:,} | {op} | {cells[0]} | {cells[1]} | {med[1]['wall'] / med[0]['wall']:.2f} | "
                      f"{os.getloadavg()[0]:.1f} |", flush=True)
    finally:
        for proc in clients:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=60)
        assert server.stdin is not None
        server.stdin.write("quit\n")
        server.stdin.flush()
        server.wait(timeout=60)
    print(f"medians of {args.rounds * args.k} operations each ({args.rounds} turns of {args.k}, alternating); "
          "server CPU per operation includes its setup's two reads; load average (1, 5, 15 min): "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    sys.exit(main())
