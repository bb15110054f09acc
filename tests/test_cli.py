"""The `sluice` command, as a user runs it, against moto's server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sluice.cli import main
from sluice.core.settings import Settings
from tests.chain import DATASET, sample_bytes


@pytest.fixture
def env(moto_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_settings.endpoint_url or "")
    monkeypatch.setenv("SLUICE_BUCKET", moto_settings.bucket)
    monkeypatch.setenv("SLUICE_EVENTS_QUEUE", moto_settings.events_queue)
    monkeypatch.setenv("SLUICE_TOPIC", moto_settings.topic)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    return moto_settings


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_up_twice_changes_nothing_the_second_time(env: Settings) -> None:
    first = run("up")
    assert "created bucket" in first and "set 8 object-created notifications" in first
    assert run("up").strip().startswith("up to date")


def test_contract_infer_put_drop_and_status(env: Settings, tmp_path: Path) -> None:
    run("up")
    sample = tmp_path / "cancer.csv"
    sample.write_bytes(sample_bytes())
    text = run("contract", "infer", str(sample), "--dataset", DATASET, "--target", "diagnosis", "--budget", "1")
    assert "task: binary" in text and "metric: roc_auc" in text and "- malignant" in text
    contract_file = tmp_path / "cancer.yaml"
    contract_file.write_text(text)
    assert f"contracts/{DATASET}.yaml" in run("contract", "put", str(contract_file))
    out = run("drop", str(sample), "--dataset", DATASET)
    assert f"s3://{env.bucket}/incoming/{DATASET}/cancer.csv" in out
    # No worker runs here, so the drop is visible as arrived but not yet processed.
    status = json.loads(run("status", "--json"))
    assert [d["dataset"] for d in status["datasets"]] == [DATASET]
    assert [(a["key"], a["stage"]) for a in status["datasets"][0]["arrivals"]] == [
        (f"incoming/{DATASET}/cancer.csv", "arrived")]
    assert status["dead_letters"] == [] and status["sqs_dead_letters"] == 0


def test_a_bad_contract_is_refused_with_the_field(env: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: x\ntarget: y\ntask: binary\nmetric: rmse\ncolumns: {y: {dtype: str}}\n")
    result = CliRunner().invoke(main, ["contract", "put", str(bad)])
    assert result.exit_code == 1
    assert "metric 'rmse' does not fit task 'binary'" in result.output
    assert "Traceback" not in result.output


def test_models_show_names_the_known_models(env: Settings) -> None:
    run("up")
    result = CliRunner().invoke(main, ["models", "show", "nope"])
    assert result.exit_code == 1 and "no model 'nope'" in result.output


def test_an_unreachable_emulator_or_missing_bucket_says_what_to_do(env: Settings,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(main, ["status"])  # nothing provisioned yet
    assert result.exit_code == 1 and "run `sluice up` first" in result.output
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1 and "cannot reach S3/SQS/SNS at http://127.0.0.1:9" in result.output
    assert "Traceback" not in result.output
