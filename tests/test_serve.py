"""Downstream systems: a subscriber loads the model from the promotion event alone; `sluice serve` swaps versions
under a stream of requests without a failed or mixed answer."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest

from sluice import load_model
from sluice.core.runtime import Runtime
from sluice.core.settings import Settings
from sluice.events.model import PROMOTED
from sluice.infra.subscribe import TemporarySubscription, filter_policy
from sluice.ml.registry import ModelRegistry
from tests import mixed
from tests.chain import run_chain


@pytest.mark.slow
def test_a_subscriber_loads_the_promoted_model_from_the_event_alone_and_scores_new_rows(runtime: Runtime) -> None:
    runtime.store.put(f"contracts/{mixed.DATASET}.yaml", mixed.contract(1).to_yaml().encode())
    policy = filter_policy(models=[mixed.DATASET], types=[PROMOTED])
    with TemporarySubscription(runtime.settings, policy) as subscriber:
        run_chain(runtime, f"incoming/{mixed.DATASET}/a.csv", mixed.csv_bytes(mixed.frame(400, 0)))
        [event] = subscriber.receive(wait_s=1)
    assert event["type"] == PROMOTED and event["data"]["bundle"]["uri"].startswith("s3://")
    # The consumer knows nothing but the event (and credentials for the bucket).
    model = load_model(event, settings=runtime.settings)
    new = mixed.frame(50, 9, unseen=True)
    result = model.predict(new.to_dicts())
    assert result.version == event["data"]["version"] and len(result.scored) == 50
    champion = load_model(f"{mixed.DATASET}@champion", settings=runtime.settings, store=runtime.store)
    assert np.array_equal(result.scores, champion.predict(new).scores)
    # `sluice serve NAME` hands the server no store: it opens the settings' bucket, as `load_model` does.
    from sluice.serve import ModelServer

    server = ModelServer(mixed.DATASET, settings=runtime.settings, watch=False)
    assert server.refresh() and server.model is not None
    assert np.array_equal(server.model.predict(new).scores, result.scores)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_serve_swaps_versions_under_a_stream_of_requests_without_errors(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from click.testing import CliRunner

    from sluice.cli import main
    from sluice.serve import ModelServer

    runtime.store.put(f"contracts/{mixed.DATASET}.yaml", mixed.contract(1).to_yaml().encode())
    run_chain(runtime, f"incoming/{mixed.DATASET}/a.csv", mixed.csv_bytes(mixed.frame(400, 0)))
    run_chain(runtime, f"incoming/{mixed.DATASET}/b.csv", mixed.csv_bytes(mixed.frame(400, 1)))
    registry = ModelRegistry(runtime.store, runtime.state)
    assert registry.version_numbers(mixed.DATASET) == [1, 2]
    rows = json.loads(json.dumps(mixed.frame(5, 3).to_dicts(), default=str))  # what a client sends: dates as text
    expected = {v: load_model(f"{mixed.DATASET}:{v}", settings=runtime.settings, store=runtime.store)
                .predict(rows).scores.tolist() for v in (1, 2)}
    assert expected[1] != expected[2]

    server = ModelServer(mixed.DATASET, settings=runtime.settings, store=runtime.store, recheck_s=120)
    server.refresh()
    server.start()
    port = _free_port()
    http = uvicorn.Server(uvicorn.Config(server.app(), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=http.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while not http.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(f"{base}/ready").json()["ready"] is True

    answers: list[tuple[float, float, int, Any]] = []
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(base_url=base, timeout=10) as client:
            while not stop.is_set():
                t0 = time.monotonic()
                r = client.post("/predict", json={"rows": rows})
                answers.append((t0, time.monotonic(), r.status_code, r.json()))

    streams = [threading.Thread(target=stream) for _ in range(2)]
    for t in streams:
        t.start()
    monkeypatch.setenv("SLUICE_BUCKET", runtime.settings.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    cli = CliRunner()
    try:
        # Two transitions by hand, each announced on the topic as the CLI does.
        for _ in range(2):
            snap = registry.snapshot(mixed.DATASET)
            before = snap.champion
            if len(snap.champions) > 1:
                args = ["models", "rollback", mixed.DATASET, "--reason", "test"]
            else:
                other = 2 if before == 1 else 1
                args = ["models", "promote", mixed.DATASET, str(other), "--reason", "test", "--force"]
            got = cli.invoke(main, args)
            assert got.exit_code == 0, got.output
            now = registry.snapshot(mixed.DATASET).champion
            assert now != before
            deadline = time.monotonic() + 15
            while (server.model is None or server.model.version != now) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.model is not None and server.model.version == now, "serve did not follow the champion"
            time.sleep(0.5)  # requests answered by the new version
    finally:
        stop.set()
        for t in streams:
            t.join()
        http.should_exit = True
        server.stop()

    assert len(answers) > 20 and len(server.swaps) == 3
    assert [a for a in answers if a[2] != 200] == []
    swaps = [(s["at_monotonic"], s["version"]) for s in server.swaps]

    def serving(t: float) -> int:
        return [v for at, v in swaps if at <= t][-1]

    for t0, t1, _, body in answers:
        version = body["version"]
        assert [p["prediction"] for p in body["predictions"]] == expected[version], "a mixed answer"
        assert version in (serving(t0), serving(t1)), "answered by a version that was not serving"
    assert {body["version"] for *_, body in answers} == {1, 2}


def test_bad_requests_get_a_4xx_that_says_what_is_wrong() -> None:
    from starlette.testclient import TestClient

    from sluice.ml import bundle
    from sluice.serve import MAX_ROWS, ModelServer

    manifest, files = mixed.trained_bundle(300, 0.5)
    server = ModelServer(mixed.DATASET, watch=False)
    client = TestClient(server.app())
    assert client.get("/ready").status_code == 503  # nothing loaded yet
    server.model = bundle.model_from_files(manifest, files)
    assert client.get("/health").json() == {"status": "ok"}
    row = json.loads(json.dumps(mixed.frame(1, 5).to_dicts()[0], default=str))

    ok = client.post("/predict", json={"rows": [row, {**row, "zone": "mars"}]})
    assert ok.status_code == 200 and ok.json()["scored"] == 1
    assert "not one of the contract's categories" in ok.json()["predictions"][1]["unscored"]
    two_problems = client.post("/predict", json={"rows": [row, {**row, "zone": "mars", "color": "plaid"}]}).json()
    assert (two_problems["scored"], two_problems["unscored"]) == (1, 1)  # rows, not reasons
    assert client.post("/predict", json=row).status_code == 200  # one bare object is one row
    cases = {
        b"{not json": (400, "not JSON"),
        b"[]": (400, "non-empty list of row objects"),
        b'{"rows": [1, 2]}': (400, "non-empty list of row objects"),
        json.dumps({"rows": [{"zone": "west"}]}).encode(): (422, "no row could be scored"),
        json.dumps({"rows": [row] * (MAX_ROWS + 1)}).encode(): (413, "the limit is"),
    }
    for body, (status, text) in cases.items():
        r = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status and text in r.text, (body[:40], r.status_code, r.text[:200])
    info = client.get("/model").json()
    assert info["model"] == mixed.DATASET and info["signature"]["feature_order"] == server.model.encoding.columns


def test_serve_says_what_it_serves(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import sluice.serve
    from sluice.cli import main

    calls: list[tuple[Any, ...]] = []

    def fake_serve(*args: Any, **kwargs: Any) -> None:
        calls.append((*args, kwargs["bundle"]))
        kwargs["on_ready"](type("Loaded", (), {"version": 4})())

    monkeypatch.setattr(sluice.serve, "serve", fake_serve)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    got = CliRunner().invoke(main, ["serve", "shop", "--bundle", str(tmp_path), "--port", "8123"])
    assert got.exit_code == 0, got.output
    assert f"the bundle in {tmp_path} (v4;" in got.output and "@champion" not in got.output  # was "shop@champion"
    assert calls and calls[0][-1] == str(tmp_path)
    got = CliRunner().invoke(main, ["serve", "shop", "--alias", "challenger"])
    assert "sluice serve: shop@challenger (v4) on" in got.output


def test_serve_of_a_model_without_the_alias_prints_only_the_error(moto_settings: Settings,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from sluice.cli import main
    from tests.chain import prepare

    prepare(moto_settings)
    for name, value in (("AWS_ENDPOINT_URL", moto_settings.endpoint_url or ""), ("SLUICE_BUCKET", moto_settings.bucket),
                        ("SLUICE_TOPIC", moto_settings.topic), ("SLUICE_BROKER_URL", "memory://")):
        monkeypatch.setenv(name, value)
    got = CliRunner().invoke(main, ["serve", "nosuch", "--port", str(_free_port())])
    assert got.exit_code == 1, got.output
    [line] = got.output.strip().splitlines()  # it was "sluice serve: nosuch@champion on ...", then the error
    assert line.startswith("Error: nosuch has no champion"), line


def test_hostile_requests_get_a_4xx_and_a_huge_body_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deep JSON, integers beyond 64 bits and bodies over the limit used to answer 500 or to be read whole into
    memory before the limit was checked (a client declaring a terabyte made the server wait for it)."""
    import uvicorn
    from starlette.testclient import TestClient

    import sluice.serve
    from sluice.ml import bundle
    from sluice.serve import ModelServer

    manifest, files = mixed.trained_bundle(300, 0.5)
    server = ModelServer(mixed.DATASET, watch=False)
    server.model = bundle.model_from_files(manifest, files)
    client = TestClient(server.app(), raise_server_exceptions=False)
    row = json.loads(json.dumps(mixed.frame(1, 5).to_dicts()[0], default=str))
    deep = client.post("/predict", content=b'{"rows": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}")
    assert deep.status_code == 400 and "nests arrays or objects deeper" in deep.text, deep.text
    for name in ("visits", "zone"):  # an int and a text column of the contract
        huge = client.post("/predict", json={"rows": [{**row, name: 10**400}, row]})
        assert huge.status_code == 200, huge.text
        [bad, good] = huge.json()["predictions"]
        assert bad["unscored"].startswith(f"{name}:") and "prediction" in good

    monkeypatch.setattr(sluice.serve, "MAX_BODY_BYTES", 1000)
    port = _free_port()
    http = uvicorn.Server(uvicorn.Config(server.app(), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=http.run, daemon=True).start()
    try:
        for _ in range(200):
            if http.started:
                break
            time.sleep(0.05)
        head = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        for request in (f"{head}Content-Length: {10**12}\r\n\r\n".encode(),  # declared, and never sent
                        f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + b"400\r\n" + b" " * 1024 + b"\r\n"
                        + b"400\r\n" + b" " * 1024 + b"\r\n"):  # streamed past the limit, never finished
            with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
                conn.sendall(request)
                answer = ""
                while "}" not in answer and (chunk := conn.recv(65536)):  # the headers, then the JSON body
                    answer += chunk.decode()
            assert answer.startswith("HTTP/1.1 413") and "the limit" in answer, answer[:300]
    finally:
        http.should_exit = True


def test_a_long_request_does_not_hold_up_health_probes_or_other_requests() -> None:
    """Scoring ran on the event loop: while a 10,000-row request was scored, `/health` and `/ready` waited behind it,
    so an orchestrator's probe could time out and restart a healthy server."""
    import asyncio

    from sluice.ml import bundle
    from sluice.serve import ModelServer

    manifest, files = mixed.trained_bundle(300, 0.5)
    server = ModelServer(mixed.DATASET, watch=False)
    server.model = bundle.model_from_files(manifest, files)
    scoring, release = threading.Event(), threading.Event()
    real_predict = server.model.predict

    def slow_predict(rows: Any) -> Any:  # a scoring that holds its thread until the probes are answered
        scoring.set()
        release.wait(timeout=20)
        return real_predict(rows)

    server.model.predict = slow_predict  # type: ignore[method-assign]
    row = json.loads(json.dumps(mixed.frame(1, 5).to_dicts()[0], default=str))
    order: list[str] = []

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=server.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            async def score() -> None:
                r = await client.post("/predict", json={"rows": [row]})
                order.append(f"predict {r.status_code}")

            async def probe() -> None:
                while not scoring.is_set():
                    await asyncio.sleep(0.01)
                for path in ("/health", "/ready"):
                    r = await client.get(path)
                    order.append(f"{path} {r.status_code}")
                release.set()

            await asyncio.wait_for(asyncio.gather(score(), probe()), timeout=30)

    try:
        asyncio.run(scenario())
    finally:
        release.set()
    assert order == ["/health 200", "/ready 200", "predict 200"], order


@pytest.mark.slow
def test_sluice_serve_stopped_with_sigterm_removes_its_queue_and_subscription(moto_settings: Settings,
                                                                              tmp_path: Any) -> None:
    """uvicorn raises SIGTERM again after its graceful shutdown; with Python's default handler the process died
    there, and each `sluice serve` stopped by its supervisor left its queue and topic subscription behind."""
    import os
    import signal
    import subprocess
    import sys
    from dataclasses import replace

    import boto3

    from sluice.handlers import build_pipeline
    from sluice.service import build_runtime
    from tests.chain import DATASET, prepare, sample_bytes
    from tests.test_faults import worker_env

    settings = replace(moto_settings, signing_key="serve-sigterm-test-key-" + "0" * 32)
    prepare(settings)
    run_chain(build_runtime(settings, build_pipeline()), f"incoming/{DATASET}/a.csv", sample_bytes())
    sqs = boto3.client("sqs", endpoint_url=settings.endpoint_url, region_name=settings.region)

    def serving_queues() -> list[str]:
        return [u for u in sqs.list_queues(QueueNamePrefix="sluice-serve-").get("QueueUrls", [])
                if f"sluice-serve-{DATASET}-" in u]

    before = serving_queues()
    port = _free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "sluice.cli", "serve", DATASET, "--port", str(port)],
                            env=worker_env(settings), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError((tmp_path / "serve.log").read_text())
        assert len(serving_queues()) == len(before) + 1
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert serving_queues() == before, (tmp_path / "serve.log").read_text()
