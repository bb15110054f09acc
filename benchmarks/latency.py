"""Drop -> first handler latency, and the worker's CPU when idle, at several Redis poll intervals in one run.

    .venv/bin/python benchmarks/latency.py [--poll-ms 100 20 10] [--drops 60] [--idle-s 10] [--rounds 2]

Each poll interval (`SLUICE_POLL_INTERVAL_MS`, Dramatiq's `worker_timeout`) gets a real worker process: the Sluice
service (Dramatiq worker on the real Redis at 127.0.0.1:6379/15 under a namespace of this run, and the SQS bridge)
against moto's server over HTTP, provisioned as `sluice up` does it. Then, per interval:
- idle CPU: the worker process's user + system CPU over `--idle-s` seconds with nothing to do, in % of one core;
- drop -> handler: a small CSV put under incoming/ (S3 notification -> SQS -> bridge -> Redis -> worker), one at a
  time, at a random moment; the latency is from just before the PUT to the `validate` stage starting in the worker
  (its first handler; the dataset has no contract, so it ends quarantined in a few S3 calls).
The intervals alternate in `--rounds` rounds so the machine's load falls on each alike. Prints p50/p95/max, the
ratio to the first interval, the idle CPU and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REDIS_URL = "redis://127.0.0.1:6379/15"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def child() -> None:
    """The worker process: the service as `sluice worker` starts it, reporting each stage start on stdout."""
    import logging

    from sluice.core.settings import Settings
    from sluice.handlers import build_pipeline
    from sluice.service import build_runtime, start

    logging.basicConfig(level=logging.ERROR)  # the quarantine warnings would drown the figures
    settings = Settings.from_env()
    lock = threading.Lock()

    def on_event(kind: str, detail: dict[str, Any]) -> None:
        if kind in ("start", "done", "quarantined"):
            with lock:
                print(json.dumps({"t": time.time(), "kind": kind, "stage": detail.get("stage"),
                                  "key": detail.get("key", (detail.get("source") or {}).get("key"))}), flush=True)

    service = start(settings, runtime=build_runtime(settings, build_pipeline(), on_event=on_event), bridge_wait_s=10)
    print(json.dumps({"kind": "ready"}), flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    service.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Worker:
    """A worker process at one poll interval, and the times its stages started."""

    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, __file__, "--child"], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.seen: dict[tuple[str, str], float] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.wait(("ready", ""), 120)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.startswith("{"):
                continue
            doc = json.loads(line)
            with self.cond:
                self.seen[(doc["kind"], doc.get("key") or "")] = doc.get("t", 0.0)
                self.cond.notify_all()

    def wait(self, what: tuple[str, str], timeout: float) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: what in self.seen, timeout):
                raise SystemExit(f"the worker did not report {what} within {timeout} s")
            return self.seen[what]

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(60)


def measure(env: dict[str, str], s3: Any, bucket: str, drops: int, idle_s: float,
            tag: str) -> tuple[list[float], float]:
    """Latencies (ms) of `drops` drops, and the idle CPU (% of a core), of one worker process."""
    worker = Worker(env)
    try:
        time.sleep(2)  # let the threads settle into idle polling
        before, t = cpu_seconds(worker.proc.pid), time.monotonic()
        time.sleep(idle_s)
        idle = (cpu_seconds(worker.proc.pid) - before) / (time.monotonic() - t) * 100
        latencies = []
        for i in range(drops):
            key = f"incoming/latency/{tag}-{i}.csv"
            time.sleep(random.uniform(0.05, 0.3))  # a random moment in the poll cycle
            t0 = time.time()
            s3.put_object(Bucket=bucket, Key=key, Body=b"a,b\n1,2\n")
            started = worker.wait(("start", key), 60)
            latencies.append((started - t0) * 1000)
            worker.wait(("quarantined", key), 60)  # idle again before the next drop
        return latencies, idle
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poll-ms", type=int, nargs="+", default=[100, 20, 10],
                        help="Poll intervals to compare; the first is the reference for the ratios.")
    parser.add_argument("--drops", type=int, default=60, help="Drops per interval (over all rounds).")
    parser.add_argument("--idle-s", type=float, default=10.0, help="Seconds of idle CPU per interval and round.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return

    import logging

    import boto3
    import redis
    from moto.server import ThreadedMotoServer

    from sluice.core.settings import Settings
    from sluice.handlers import build_pipeline
    from sluice.infra.provision import provision

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.exceptions.RedisError as exc:
        raise SystemExit(f"needs Redis at {REDIS_URL}: {exc}") from exc
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    tag = uuid.uuid4().hex[:8]
    namespace = f"sluice-bench-latency-{tag}"
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "SLUICE_BUCKET": f"latency-{tag}", "SLUICE_EVENTS_QUEUE": f"latency-events-{tag}",
           "SLUICE_TOPIC": f"latency-models-{tag}", "SLUICE_NAMESPACE": namespace, "SLUICE_BROKER_URL": REDIS_URL}
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
    settings = Settings.from_env(env)
    provision(settings, build_pipeline().routes)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    latencies: dict[int, list[float]] = {ms: [] for ms in args.poll_ms}
    idle: dict[int, list[float]] = {ms: [] for ms in args.poll_ms}
    per_round = max(1, args.drops // args.rounds)
    try:
        for r in range(args.rounds):
            for ms in args.poll_ms:
                lat, cpu = measure({**env, "SLUICE_POLL_INTERVAL_MS": str(ms)}, s3, settings.bucket, per_round,
                                   args.idle_s, f"{ms}-{r}")
                latencies[ms] += lat
                idle[ms].append(cpu)
                print(f"  round {r + 1}: {ms:>4} ms poll: p50 {statistics.median(lat):6.1f} ms, "
                      f"idle CPU {cpu:5.1f} %", flush=True)
    finally:
        server.stop()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{namespace}*"):
            client.delete(key)

    ref = statistics.median(latencies[args.poll_ms[0]])
    print(f"\ndrop -> first handler (validate starts), {per_round * args.rounds} drops per poll interval, "
          f"moto server + Redis; idle CPU of the worker process ({args.rounds} x {args.idle_s:g} s)")
    print(f"{'poll ms':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'p50 ratio':>10} {'idle CPU %':>11}")
    for ms in args.poll_ms:
        lat = np.array(latencies[ms])
        p50, p95 = np.percentile(lat, [50, 95])
        print(f"{ms:>8} {p50:>8.1f} {p95:>8.1f} {lat.max():>8.1f} {ref / p50:>9.1f}x "
              f"{statistics.mean(idle[ms]):>11.1f}")
    print(f"load average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
