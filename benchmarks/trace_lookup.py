"""What tracing costs: the span record each stage attempt writes, and how long `sluice trace` takes as the ledger grows.

    .venv/bin/python benchmarks/trace_lookup.py [--ledger 0 50 200] [--repeats 5]

Against moto's server over HTTP (as a worker and the CLI reach S3): provision, upload the sample contract, run the
real chain once on the bundled breast-cancer sample (FLAML budget 1 s) with the runtime's own stages, then add
quarantined drops (a file with a wrong delimiter, validated by the real `validate` stage) until the ledger holds each
`--ledger` size. At each size it times `ml.trace.trace` (what `sluice trace` runs) for the promoted drop (by key and
by trace id) and for the newest quarantined drop, median of `--repeats`. It also prints each stage's duration
beside the time its span record took to write (the span's PUT, timed separately on the same server), and the S3
requests a lookup makes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", type=int, nargs="+", default=[0, 50, 200])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import logging
    import os

    from dramatiq.brokers.stub import StubBroker
    from moto.server import ThreadedMotoServer

    from sluice.core import keys
    from sluice.core.memory import MemoryOnline, MemoryState
    from sluice.events.s3 import ObjectCreated
    from sluice.handlers import build_pipeline
    from sluice.ml.trace import trace
    from sluice.service import build_runtime
    from tests.chain import prepare, run_chain, sample_bytes
    from tests.conftest import unique_settings

    logging.basicConfig(level=logging.ERROR)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        settings = unique_settings(f"http://{host}:{port}")
        prepare(settings)
        rt = build_runtime(settings, build_pipeline(), broker=StubBroker(), state=MemoryState(),
                           online=MemoryOnline())
        calls = {"n": 0}
        store: Any = rt.store
        for method in ("get", "get_json", "get_json_or_none", "keys", "head"):
            original = getattr(store, method)

            def counted(*a: Any, _original: Any = original, **kw: Any) -> Any:
                calls["n"] += 1
                return _original(*a, **kw)

            setattr(store, method, counted)
        key = "incoming/cancer/cancer.csv"
        run_chain(rt, key, sample_bytes())
        entry = next(store.get_json(k) for k in store.keys("ledger/cancer/"))
        tid = entry["trace_id"]
        spans = [store.get_json(k) for k in store.keys(f"traces/{tid}/")]
        put_ms = []
        for i in range(20):
            t0 = time.perf_counter()
            store.put_json(f"traces/{'f' * 32}/bench-{i}.json", spans[0])
            put_ms.append((time.perf_counter() - t0) * 1000)
        print(f"one span record PUT on moto over HTTP: median {statistics.median(put_ms):.1f} ms "
              f"(p95 {sorted(put_ms)[int(len(put_ms) * 0.95) - 1]:.1f} ms, {len(put_ms)} PUTs)")
        for span in spans:
            print(f"  {span['stage']:<10} stage attempt {span['duration_s'] * 1000:8.1f} ms  (+1 span PUT, "
                  f"{statistics.median(put_ms) / max(span['duration_s'] * 1000, 1e-9):.1%} of it)")
        bad = b"mean_radius;diagnosis\n1;benign\n"
        made, last_bad = 1, key
        for size in sorted(args.ledger):
            while made < size + 1:
                last_bad = f"incoming/cancer/bad-{made:04d}.csv"
                store.put(last_bad, bad + str(made).encode())
                info = store.head(last_bad)
                rt.execute("validate", ObjectCreated(settings.bucket, last_bad, info.size, info.etag).to_dict())
                made += 1
            n_ledger = len(list(store.keys(keys.Ledger.prefix("cancer"))))
            for label, ref in (("promoted, by key", key), ("promoted, by trace id", tid),
                               ("quarantined, by key", last_bad))[:3 if last_bad != key else 2]:
                times = []
                for _ in range(args.repeats):
                    calls["n"] = 0
                    t0 = time.perf_counter()
                    path = trace(store, MemoryState(), ref)
                    times.append(time.perf_counter() - t0)
                assert path.steps, ref
                print(f"ledger {n_ledger:4d} entries  {label:<24} {statistics.median(times) * 1000:8.1f} ms  "
                      f"({calls['n']} store calls, {len(path.steps)} steps)")
        print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
