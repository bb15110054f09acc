"""`sluice new`: the committed examples/custom-stage is exactly its output, its own tests pass, and its app (a stage
of its own beside the built-in chain) runs under `sluice up/worker --app app:app` on moto + Redis and on
LocalStack + Redis, from a JSON-lines export to a promoted model."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
import yaml

from sluice.core.settings import Settings
from sluice.infra.store import S3Store
from sluice.infra.subscribe import TemporarySubscription
from sluice.scaffold import render, write
from tests.chain import sample_bytes, wait_for
from tests.conftest import unique_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom-stage"
SIGNING_KEY = "5ca7" * 16


def _files(folder: Path) -> dict[str, str]:
    skip = ("__pycache__", ".pytest_cache")
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part in skip for part in p.parts)}


def test_the_committed_example_is_what_sluice_new_writes(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sluice.cli import main

    result = CliRunner().invoke(main, ["new", "custom-stage", "--dir", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert _files(tmp_path / "p") == _files(EXAMPLE), (
        "examples/custom-stage differs from `sluice new custom-stage`: regenerate it with "
        "`rm -r examples/custom-stage && sluice new custom-stage --dir examples/custom-stage`")
    again = CliRunner().invoke(main, ["new", "custom-stage", "--dir", str(tmp_path / "p")])
    assert again.exit_code == 1 and "already exist; nothing was written" in again.output
    with pytest.raises(ValueError, match="a project name is lowercase"):
        write("Bad Name", tmp_path / "q")
    assert set(render("shop")) == {"app.py", "contract.yaml", "tests/test_app.py", "pyproject.toml", "README.md"}


def test_the_examples_own_tests_pass() -> None:
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=EXAMPLE,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 passed" in out.stdout


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update({
        "AWS_ENDPOINT_URL": settings.endpoint_url or "", "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "SLUICE_BUCKET": settings.bucket, "SLUICE_EVENTS_QUEUE": settings.events_queue,
        "SLUICE_TOPIC": settings.topic, "SLUICE_NAMESPACE": settings.namespace,
        "SLUICE_BROKER_URL": settings.broker_url, "SLUICE_MIN_BACKOFF_MS": "200",
        "SLUICE_SIGNING_KEY": SIGNING_KEY, "SLUICE_RECONCILE_INTERVAL_S": "0",
    })
    return env


@pytest.fixture(params=[pytest.param("moto", marks=pytest.mark.redis),
                        pytest.param("localstack", marks=pytest.mark.localstack)])
def deployment(request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings of one deployment on the emulator, with the real Redis broker; its Redis keys removed after."""
    import redis

    endpoint = request.getfixturevalue("moto_endpoint" if request.param == "moto" else "localstack_endpoint")
    s = replace(unique_settings(endpoint), broker_url=request.getfixturevalue("redis_url"), signing_key=SIGNING_KEY)
    yield s
    r = redis.Redis.from_url(s.broker_url)
    for key in r.scan_iter(f"{s.namespace}*"):
        r.delete(key)


@pytest.mark.slow
def test_the_example_app_runs_its_stage_beside_the_builtin_chain(deployment: Settings, tmp_path: Path) -> None:
    settings = deployment
    env = _env(settings)
    up = subprocess.run([sys.executable, "-m", "sluice.cli", "up", "--app", "app:app"], cwd=EXAMPLE, env=env,
                        capture_output=True, text=True, timeout=120, check=False)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "set 9 object-created notifications" in up.stdout and "export_to_csv <- exports/*.jsonl" in up.stdout, \
        up.stdout
    contract = yaml.safe_load((EXAMPLE / "contract.yaml").read_text())
    contract["training"] = {"time_budget_s": 1, "debounce_s": 0}
    (tmp_path / "contract.yaml").write_text(yaml.safe_dump(contract))
    put = subprocess.run([sys.executable, "-m", "sluice.cli", "contract", "put", str(tmp_path / "contract.yaml"),
                          "--app", "app:app"], cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert put.returncode == 0, put.stdout + put.stderr

    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed with the process
    worker = subprocess.Popen([sys.executable, "-m", "sluice.cli", "worker", "--app", "app:app", "--threads", "2"],
                              cwd=EXAMPLE, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        rows = io.BytesIO()
        pl.read_csv(io.BytesIO(sample_bytes())).write_ndjson(rows)
        store = S3Store(settings)
        with TemporarySubscription(settings) as subscriber:
            store.put("exports/cancer/day1.jsonl", rows.getvalue())
            received = wait_for(lambda: subscriber.receive(wait_s=1), 150, "the promotion event")
        [event] = received
        assert event["type"] == "sluice.model.promoted", event
        # The user's stage turned the export into the drop the built-in chain validated and trained on.
        assert event["data"]["lineage"]["sources"][0]["key"] == "incoming/cancer/day1.csv"
        assert store.exists("incoming/cancer/day1.csv")
    except BaseException:
        log.flush()
        print((tmp_path / "worker.log").read_text(errors="replace")[-5000:])
        raise
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
    assert "app custom-stage (validate, labels, features, train, train-labels, backtest, benchmark, register, " \
           "export_to_csv)" in (tmp_path / "worker.log").read_text()
