"""Scoring speed through the public loader, side by side with raw LightGBM, and `sluice serve` under load.

    .venv/bin/python benchmarks/predict.py [--rows 100000] [--rate 500] [--seconds 10] [--bag]

Trains one model on mixed-type data (three categorical columns, a date, nulls, declared features), stores it as a
bundle, loads it with `sluice.load_model`, then prints, in one run:
- batch rows/s: `Model.predict(frame)` against `Booster.predict` on the already-encoded numpy matrix (goal >= 0.8x);
- single-row latency p50/p99: `Model.predict({...})` against `Booster.predict` on one numpy row;
- `sluice serve` (uvicorn, one worker process) at a fixed request rate from a separate load process: achieved
  rate, p50/p99 latency, errors (goal: p99 < 10 ms at 500 requests/s).
The machine's load average is printed with the figures. With --bag, the model is what a train stage ships for a
single tree model: a bag of 5 LightGBM fits, their predictions averaged (ml/modeling.BAG_FOLDS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_bundle(folder: Path, bag: bool = False) -> None:
    from sluice.ml import bundle
    from tests import mixed

    manifest, files = bagged_bundle(20_000, 5) if bag else mixed.trained_bundle(20_000, 5)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"manifest-{bundle.sha256(manifest)[:12]}.json").write_bytes(manifest)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def bagged_bundle(rows: int, budget_s: float) -> tuple[bytes, dict[str, bytes]]:
    """What a train stage ships for a single tree model: the search's LightGBM winner as a bag of 5 fits, each on all
    rows but one fold (ml/modeling.BAG_FOLDS), stored as a blend of them."""
    from sluice.ml import bundle, modeling
    from sluice.ml.transforms import apply_transforms, frequency_tables
    from tests import mixed

    shop = mixed.contract(budget_s)
    train = apply_transforms(mixed.frame(rows, 0), shop)
    encoding = modeling.Encoding.fit(train, shop)
    trained = modeling.train(train, encoding, shop)
    done = modeling.refit(trained, train, encoding, shop, bag=modeling.BAG_FOLDS)
    print(f"bag: {trained.best_estimator} x {done.bag} fits = {len(done.members or {})} models")
    return bundle.bundle_files(contract=shop, encoding=encoding, model_bytes=done.model_bytes,
                               model_format=done.model_format, frequencies=frequency_tables(train, shop),
                               run_id="in-process", members=done.members)


def best_of(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def latencies(fn, n: int = 500) -> tuple[float, float]:
    for _ in range(20):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    p50, p99 = np.percentile(out, [50, 99])
    return float(p50), float(p99)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load(port: int, rate: float, seconds: float, body: bytes, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """Open-loop load over 16 keep-alive connections: request i is due at i/rate s whatever the answers do, and
    its latency counts from when it was due (so queueing behind a slow server is measured, not hidden). A small
    asyncio HTTP/1.1 client, because httpx itself would take most of a core at this rate."""
    request = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    async def run() -> None:
        queue: asyncio.Queue[float] = asyncio.Queue()
        results: list[tuple[float, int]] = []

        async def connection() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            while True:
                due = await queue.get()
                if due < 0:
                    writer.close()
                    return
                try:
                    writer.write(request)
                    status = int((await reader.readline()).split()[1])
                    length = 0
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    await reader.readexactly(length)
                except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                    status = 0
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                results.append(((time.perf_counter() - due) * 1000, status))

        workers = [asyncio.create_task(connection()) for _ in range(16)]
        start = time.perf_counter()
        i = 0
        while (due := start + i / rate) - start < seconds:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait(due)
            i += 1
        for _ in workers:
            queue.put_nowait(-1.0)
        await asyncio.gather(*workers)
        out.put((results, time.perf_counter() - start))

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--bag", action="store_true",
                        help="score a bag of 5 LightGBM fits (what a stage ships for a single tree model)")
    args = parser.parse_args()

    import sluice
    from tests import mixed

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bundle"
        build_bundle(folder, args.bag)
        model = sluice.load_model(str(folder))
        frame = mixed.frame(args.rows, 1, unseen=True)
        from sluice.ml.transforms import transforms_for_scoring

        featured, _ = transforms_for_scoring(frame, model.contract, model.frequencies)
        X = np.ascontiguousarray(model.encoding.matrix(featured))
        print(f"load average {os.getloadavg()[0]:.2f} (2-core machine)")
        if args.bag:  # no single booster to compare with: the blend of bags against one of its boosters
            booster = model.predictor.parts[0][1].booster
            X = X[:, model.predictor.parts[0][2]]
            ours_s = best_of(lambda: model.predict(frame))
            print(f"batch of {args.rows:,} rows (best of 5): {args.rows / ours_s:>12,.0f} rows/s")
        else:
            booster = model.predictor.booster
            assert np.array_equal(model.predict(frame).scores, booster.predict(X))
            raw_s = best_of(lambda: booster.predict(X))
            ours_s = best_of(lambda: model.predict(frame))
            print(f"batch of {args.rows:,} rows (best of 5):")
            print(f"  raw Booster.predict(numpy)   {args.rows / raw_s:>12,.0f} rows/s")
            print(f"  sluice Model.predict(frame)  {args.rows / ours_s:>12,.0f} rows/s   ratio {raw_s / ours_s:.2f} "
                  "(goal >= 0.80)")
        row = json.loads(json.dumps(frame.head(1).to_dicts(), default=str))
        x1 = X[:1]
        p50, p99 = latencies(lambda: booster.predict(x1))
        print(f"single row (500 calls): raw Booster.predict p50 {p50:.3f} ms  p99 {p99:.3f} ms"
              + (" (one of the bag's boosters)" if args.bag else ""))
        p50, p99 = latencies(lambda: model.predict(row))
        print(f"                        Model.predict(dict) p50 {p50:.3f} ms  p99 {p99:.3f} ms")

        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "sluice.cli", "serve", "bench", "--bundle", str(folder),
                                   "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Warm the service up before measuring (first requests pay for imports and lazy initialisation).
        try:
            import httpx

            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"sluice serve did not become ready: {server.stderr.read().decode()[-2000:]}"
                                     if server.stderr else "sluice serve did not become ready")
                time.sleep(0.2)
            body = json.dumps({"rows": row}).encode()
            for _ in range(50):
                httpx.post(f"http://127.0.0.1:{port}/predict", content=body)
            out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
            proc = mp.Process(target=load, args=(port, args.rate, args.seconds, body, out))
            proc.start()
            results, elapsed = out.get()
            proc.join()
        finally:
            server.terminate()
            server.wait(timeout=10)
        lat = sorted(ms for ms, _ in results)
        errors = sum(1 for _, code in results if code != 200)
        p50, p99 = np.percentile(lat, [50, 99])
        print(f"sluice serve, one process, open loop at {args.rate:.0f} req/s for {args.seconds:.0f} s "
              f"(16 keep-alive connections from a load process on the same 2 cores):")
        print(f"  achieved {len(results) / elapsed:,.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
              f"mean {statistics.fmean(lat):.2f} ms, errors {errors}  (goal: p99 < 10 ms at 500 req/s)")
        print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
