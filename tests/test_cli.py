"""The `sluice` command, as a user runs it, against moto's server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    # No worker runs here, so the drop is waiting: no outcome, and no worker holds it.
    status = json.loads(run("status", "--json"))
    assert [d["dataset"] for d in status["datasets"]] == [DATASET]
    assert [(a["key"], a["stage"]) for a in status["datasets"][0]["arrivals"]] == [
        (f"incoming/{DATASET}/cancer.csv", "waiting")]
    assert status["dead_letters"] == [] and status["sqs_dead_letters"] == 0
    # Reconcile sees it as a gap once it is old enough (here: at once), and does nothing in a dry run.
    gaps = json.loads(run("reconcile", "--dry-run", "--min-age", "0", "--json"))["gaps"]
    assert [(g["stage"], g["key"]) for g in gaps] == [("validate", f"incoming/{DATASET}/cancer.csv")]
    assert json.loads(run("reconcile", "--dry-run", "--json"))["gaps"] == []  # too young for the default
    assert "0 dead-letter records, 0 in SQS" in run("deadletter", "list")


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


def test_a_short_signing_key_is_one_error_line_in_every_command(env: Settings, monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    run("up")
    sample = tmp_path / "cancer.csv"
    sample.write_bytes(sample_bytes())
    contract_file = tmp_path / "cancer.yaml"
    contract_file.write_text(run("contract", "infer", str(sample), "--dataset", DATASET, "--target", "diagnosis"))
    monkeypatch.setenv("SLUICE_SIGNING_KEY", "abc")
    for args in (["models", "show", "cars"], ["contract", "put", str(contract_file)], ["worker"], ["status"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, (args, result.output, result.exception)
        assert result.output.strip().splitlines() == [
            "Error: SLUICE_SIGNING_KEY is 3 bytes; use at least 32 random bytes, e.g. `export SLUICE_SIGNING_KEY="
            "$(python -c 'import secrets; print(secrets.token_hex(32))')` (the same key for every worker and "
            "operator)"], args


@pytest.mark.slow
def test_data_quarantine_and_runs_commands_on_a_trained_model(runtime: Any, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    from tests.test_training import parts, run_chain

    monkeypatch.setenv("SLUICE_BUCKET", runtime.settings.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    a, b = parts(2)
    first = run_chain(runtime, f"incoming/{DATASET}/a.csv", a)
    second = run_chain(runtime, f"incoming/{DATASET}/b.csv", b)
    runtime.store.put(f"incoming/{DATASET}/bad.csv", b"mean_radius;diagnosis\n1;benign\n")
    info = runtime.store.head(f"incoming/{DATASET}/bad.csv")
    from sluice.events.s3 import ObjectCreated

    runtime.execute("validate", ObjectCreated(runtime.settings.bucket, f"incoming/{DATASET}/bad.csv", info.size,
                                              info.etag).to_dict())
    runtime.store.put(f"incoming/{DATASET}/bad2.csv", b"mean_radius;diagnosis\n2;benign\n")
    info2 = runtime.store.head(f"incoming/{DATASET}/bad2.csv")
    runtime.execute("validate", ObjectCreated(runtime.settings.bucket, f"incoming/{DATASET}/bad2.csv", info2.size,
                                              info2.etag).to_dict())

    listing = run("data", "list", DATASET).strip().splitlines()
    assert len(listing) == 2 and {line[:12] for line in listing} == {v[:12] for v in second["data_versions"]}
    quarantined = run("quarantine", "list", DATASET)
    assert "bad.csv" in quarantined and "unreadable" in quarantined
    ident = json.loads(run("quarantine", "list", "--json"))[0]["id"][:10]
    shown = run("quarantine", "show", DATASET, ident)
    assert "separated by ';'" in shown and "what to do:" in shown
    runs_out = run("runs", "list", DATASET)
    assert first["run_id"] in runs_out and second["run_id"] in runs_out
    shown = run("runs", "show", second["run_id"][:10])
    assert "warm start used" in shown
    assert f"ships: refitted on all {second['refit']['rows']} labelled rows" in shown
    top = [item.split()[0] for item in shown.split("top features: ")[1].splitlines()[0].split(", ")]
    gain = second["feature_importance"]
    assert top == sorted(gain, key=lambda f: (-gain[f], f))[:5]  # the most important first, not alphabetical
    listed = run("runs", "artifacts", second["run_id"], "--download", str(tmp_path / "art"))
    import hashlib

    for name, meta in second["artifacts"].items():
        assert name in listed
        written = tmp_path / "art" / meta["key"].rsplit("/", 1)[-1]
        assert hashlib.sha256(written.read_bytes()).hexdigest() == meta["sha256"]
    compared = run("runs", "compare", first["run_id"], second["run_id"])
    assert "roc_auc" in compared and "1 shared" in compared
    assert "MATCH" in run("runs", "reproduce", second["run_id"])
    text = run("status")
    assert text.count("separated by ';'") == 1  # the second file with the same problem is not told again
    assert "the same problem as incoming/cancer/bad" in text
    status = json.loads(run("status", "--json"))
    stages = {a["key"].rsplit("/", 1)[-1]: a["stage"] for a in status["datasets"][0]["arrivals"]}
    assert stages["bad.csv"] == "quarantined" and stages["a.csv"] == "registered"


def test_every_command_has_help() -> None:
    def walk(group: Any, path: list[str]) -> None:
        for name, command in group.commands.items():
            result = CliRunner().invoke(main, [*path, name, "--help"])
            assert result.exit_code == 0 and "Usage:" in result.output, (path, name, result.output)
            if hasattr(command, "commands"):
                walk(command, [*path, name])

    walk(main, [])


HEAVY = {"polars", "pandas", "pandera", "pyarrow", "numpy", "flaml", "lightgbm", "sklearn", "scipy", "boto3",
         "botocore", "dramatiq", "redis"}


@pytest.mark.parametrize("args", [["--help"], ["models", "--help"], ["contract", "infer", "--help"]])
def test_the_command_starts_without_the_heavy_libraries(args: list[str]) -> None:
    """`sluice --help` (and a group's) imports none of the data, ML, AWS or queue libraries: each costs the start
    tenths of a second, and every command imports what it needs when it runs. Read from `-X importtime`, which
    lists every module a fresh interpreter imports, so this counts imports rather than timing them."""
    code = f"import sys; from sluice.cli import main; sys.argv = ['sluice', *{args!r}]; main()"
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and "Usage:" in done.stdout, done.stderr[-2000:]
    imported = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert {"click", "sluice.cli", "sluice.commands.models"} <= imported  # the listing is read correctly
    assert not sorted({name.partition(".")[0] for name in imported} & HEAVY)


def test_up_expires_traces_and_keeps_the_buckets_own_lifecycle_rules(env: Settings,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans under traces/ expire by a lifecycle rule `sluice up` keeps; a rule the user set on the bucket is kept
    beside it (S3 replaces the whole configuration on every put); 0 days removes only Sluice's rule."""
    import boto3

    run("up")
    s3 = boto3.client("s3", endpoint_url=env.endpoint_url, region_name=env.region)
    [rule] = s3.get_bucket_lifecycle_configuration(Bucket=env.bucket)["Rules"]
    assert rule["Filter"] == {"Prefix": "traces/"} and rule["Expiration"] == {"Days": 90}
    mine = {"ID": "users-own", "Status": "Enabled", "Filter": {"Prefix": "exports/"}, "Expiration": {"Days": 7}}
    s3.put_bucket_lifecycle_configuration(Bucket=env.bucket, LifecycleConfiguration={"Rules": [mine, rule]})
    assert run("up").strip().startswith("up to date")  # nothing to change
    monkeypatch.setenv("SLUICE_TRACE_RETENTION_DAYS", "14")
    assert "traces/ on" in (out := run("up")) and "expire after 14 days" in out
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=env.bucket)["Rules"]}
    assert rules["users-own"]["Expiration"] == {"Days": 7} and rules["sluice-traces-expiry"]["Expiration"] == {
        "Days": 14}
    monkeypatch.setenv("SLUICE_TRACE_RETENTION_DAYS", "0")
    run("up")
    assert [r["ID"] for r in s3.get_bucket_lifecycle_configuration(Bucket=env.bucket)["Rules"]] == ["users-own"]


def test_drop_refuses_a_file_the_worker_would_quarantine_for_its_format(env: Settings, tmp_path: Path) -> None:
    """`sluice drop model.pkl` says at once what Sluice reads (nothing is uploaded); `--as` names a file for its
    content."""
    run("up")
    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(b"\x80\x04K\x01.")
    result = CliRunner().invoke(main, ["drop", str(pickled), "--dataset", DATASET])
    assert result.exit_code == 1 and "Sluice reads .csv, .csv.gz, .parquet files" in result.output
    assert "Traceback" not in result.output
    export = tmp_path / "export.txt"
    export.write_bytes(sample_bytes())
    assert f"incoming/{DATASET}/export.csv" in run("drop", str(export), "--dataset", DATASET, "--as", "export.csv")
    upper = tmp_path / "DATA.CSV"
    upper.write_bytes(sample_bytes())
    assert f"incoming/{DATASET}/DATA.CSV" in run("drop", str(upper), "--dataset", DATASET)


def test_status_reads_the_bucket_while_redis_is_down(env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The day Redis is down is the day an operator runs `sluice status`: it used to stop at "cannot reach Redis";
    the bucket says where every drop is, and the line says what Redis alone would have added."""
    run("up")
    from tests.chain import prepare

    _, store = prepare(env)
    store.put(f"incoming/{DATASET}/a.csv", sample_bytes())
    monkeypatch.setenv("SLUICE_BROKER_URL", "redis://127.0.0.1:9/0")  # nothing listens on port 9
    out = run("status")
    assert "Redis is unreachable at redis://127.0.0.1:9/0" in out and "work in progress shows as waiting" in out
    assert f"waiting     incoming/{DATASET}/a.csv" in out
    assert json.loads(run("status", "--json"))["redis"].startswith("Redis is unreachable")
    result = CliRunner().invoke(main, ["reconcile", "--min-age", "0"])  # re-driving needs Redis: one line
    assert result.exit_code == 1 and "cannot reach Redis at redis://127.0.0.1:9/0" in result.output


def test_a_redrive_of_an_unknown_dead_letter_says_so(env: Settings) -> None:
    """`sluice deadletter redrive ID` with a mistyped or already re-driven id printed "re-driven 0 records" and
    exited 0, as if it had worked."""
    run("up")
    result = CliRunner().invoke(main, ["deadletter", "redrive", "--no-sqs", "0123abcd"])
    assert result.exit_code == 1 and "no dead letter matches '0123abcd'" in result.output, result.output
    assert "sluice deadletter list" in result.output


def test_drop_refuses_a_file_too_big_for_one_upload_and_names_a_denied_request(
        env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file over S3's 5 GiB for one PUT was hashed, then failed with a botocore traceback; so did any S3 error
    other than a missing bucket (a producer's AccessDenied)."""
    from botocore.exceptions import ClientError

    from sluice.infra.store import S3Store

    run("up")
    huge = tmp_path / "huge.csv"
    with open(huge, "wb") as f:  # sparse: no disk used, nothing read
        f.truncate(6 * 2**30)
    result = CliRunner().invoke(main, ["drop", str(huge), "--dataset", DATASET])
    assert result.exit_code == 1 and "6.0 GiB: S3 takes at most 5 GiB in one upload" in result.output
    assert "Split it into several files" in result.output

    def denied(*args: Any, **kwargs: Any) -> str:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not yours"}}, "PutObject")

    monkeypatch.setattr(S3Store, "put_file", denied)
    small = tmp_path / "a.csv"
    small.write_bytes(sample_bytes())
    result = CliRunner().invoke(main, ["drop", str(small), "--dataset", DATASET])
    assert result.exit_code == 1 and "PutObject was denied" in result.output and "sluice iam" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_models_show_and_runs_read_a_holdout_where_roc_auc_is_undefined(runtime: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # vega's la-riots (50 rows, gender): the holdout's few rows were all of one class, roc_auc was None, and
    # `sluice models show`, `runs list` and `runs show` died on a TypeError.
    import polars as pl

    from sluice.ml.contract import contract_key, infer_contract
    from tests.chain import run_chain

    monkeypatch.setenv("SLUICE_BUCKET", runtime.settings.bucket)
    monkeypatch.setenv("SLUICE_BROKER_URL", "memory://")
    from sluice.ml.modeling import holdout_mask

    ages = [float(20 + i) for i in range(50)]
    # A row's side of the split depends on its content alone: three Female rows that all land in training.
    as_female = holdout_mask(pl.DataFrame({"age": ages, "gender": ["Female"] * 50}), 0.2, 42)
    female = [i for i in range(50) if not as_female[i]][:3]
    frame = pl.DataFrame({"age": ages, "gender": ["Female" if i in female else "Male" for i in range(50)]})
    contract = infer_contract(frame, DATASET, "gender", time_budget_s=1, debounce_s=0)
    runtime.store.put(contract_key(DATASET), contract.to_yaml().encode())
    done = run_chain(runtime, f"incoming/{DATASET}/riots.csv", frame.write_csv().encode())
    assert done["holdout"]["metrics"]["roc_auc"] is None  # the case itself: one class in the holdout
    assert "roc_auc=n/a (baseline n/a" in run("models", "show", DATASET)
    assert "roc_auc=n/a (baseline n/a)" in run("runs", "list", DATASET)
    assert "roc_auc=n/a (baseline n/a)" in run("runs", "show", done["run_id"])


def test_runs_reproduce_prints_a_blended_run_whose_other_metrics_were_not_recorded(
        env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # A blend records its search winner's score on the run's metric only (ml/runs.reproduce); the command printed
    # every reproduced metric against the recorded ones and raised KeyError on the first it lacked.
    from sluice.ml import runs as r

    result = {"run_id": "run-x", "recorded": {"roc_auc": 0.99}, "reproduced": {"roc_auc": 0.99, "log_loss": 0.1},
              "max_abs_difference": 0.0, "match": True, "train_rows": 10, "holdout_rows": 5, "estimator": "lgbm",
              "config": {}}
    monkeypatch.setattr(r, "find_run", lambda store, run_id: {"run_id": run_id})
    monkeypatch.setattr(r, "reproduce", lambda store, run: result)
    out = run("runs", "reproduce", "run-x")
    assert "log_loss   recorded (not recorded)  reproduced 0.100000" in out and "MATCH" in out
