"""The generated IAM policies (`sluice iam`), enforced by moto's server: each role can do its job and no more."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from sluice.core.iam import policies
from sluice.core.settings import Settings
from sluice.handlers import build_pipeline
from tests.chain import DATASET, prepare, sample_bytes
from tests.conftest import unique_settings


@pytest.fixture
def enforcing() -> Iterator[tuple[Settings, dict[str, tuple[str, str]]]]:
    """A moto server of our own, provisioned, with one IAM user per role; IAM is enforced from then on."""
    from moto import settings as moto_settings
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = unique_settings(f"http://{host}:{port}")
    previous = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT
    try:
        prepare(settings)
        iam = boto3.client("iam", endpoint_url=settings.endpoint_url, region_name=settings.region)
        keys = {}
        for role, doc in policies(settings, build_pipeline().routes).items():
            for statement in doc["Statement"]:
                # moto authorizes SNS and SQS actions against the resource "*" only (S3 against the object's ARN),
                # so there the test can hold the actions to account, not the topic and queue ARNs.
                if not any(a.startswith("s3:") for a in statement["Action"]):
                    statement["Resource"] = "*"
            user = f"{settings.namespace}-{role}"
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="sluice", PolicyDocument=json.dumps(doc))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[role] = (key["AccessKeyId"], key["SecretAccessKey"])
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # every request from here on is checked against IAM
        yield settings, keys
    finally:
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = previous
        server.stop()


def as_role(settings: Settings, keys: dict[str, tuple[str, str]], role: str, service: str = "s3") -> Any:
    key_id, secret = keys[role]
    return boto3.client(service, endpoint_url=settings.endpoint_url, region_name=settings.region,
                        aws_access_key_id=key_id, aws_secret_access_key=secret)


def denied(call: Any, **kwargs: Any) -> bool:
    try:
        call(**kwargs)
    except ClientError as exc:
        return exc.response["Error"]["Code"] in ("AccessDenied", "403", "AccessDeniedException")
    return False


def run_stages(rt: Any, key: str) -> dict[str, Any]:
    """Every stage in order on what the previous one wrote, as the bridge would; returns the run."""
    from sluice.events.s3 import ObjectCreated

    stages = [("validate", lambda k: k == key),
              ("features", lambda k: k.startswith("validated/") and k.endswith("manifest.json")),
              ("train", lambda k: k.startswith("features/") and k.endswith("manifest.json")),
              ("benchmark", lambda k: k.endswith("run.json")), ("register", lambda k: k.endswith(".candidate.json"))]
    for stage, wanted in stages:
        for k in sorted(rt.store.keys("")):
            if wanted(k):
                info = rt.store.head(k)
                result = rt.execute(stage, ObjectCreated(rt.settings.bucket, k, info.size, info.etag).to_dict())
                assert result["outcome"] == "done", (stage, result)
    [run_key] = [k for k in rt.store.keys("runs/") if k.endswith("run.json")]
    run: dict[str, Any] = rt.store.get_json(run_key)
    return run


def test_each_role_can_do_its_job_and_no_more(enforcing: tuple[Settings, dict[str, tuple[str, str]]],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from dramatiq.brokers.stub import StubBroker

    from sluice.infra.online import MemoryOnline
    from sluice.infra.state import MemoryState
    from sluice.ml.registry import ModelRegistry
    from sluice.service import build_runtime

    settings, keys = enforcing
    bucket = settings.bucket
    # Nobody without a key gets anywhere.
    anonymous = boto3.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region,
                             aws_access_key_id="AKIAUNKNOWN000000000", aws_secret_access_key="x")
    with pytest.raises(ClientError):
        anonymous.put_object(Bucket=bucket, Key=f"incoming/{DATASET}/a.csv", Body=b"x")

    producer = as_role(settings, keys, "producer")
    producer.put_object(Bucket=bucket, Key=f"labels/{DATASET}/l.csv", Body=b"x")
    for key in (f"runs/{DATASET}/run-x/run.json", f"validated/{DATASET}/{'f' * 64}/manifest.json",
                f"registry/{DATASET}/candidates/run-x.candidate.json", f"registry/{DATASET}/aliases/champion.json",
                f"features/{DATASET}/fs-x/manifest.json", f"contracts/{DATASET}.yaml", f"ledger/{DATASET}/x.json"):
        assert denied(producer.put_object, Bucket=bucket, Key=key, Body=b"{}"), key
    assert denied(producer.get_object, Bucket=bucket, Key=f"contracts/{DATASET}.yaml")

    owner = as_role(settings, keys, "contract-owner")
    owner.put_object(Bucket=bucket, Key=f"contract-versions/{DATASET}/x.yaml", Body=b"x")
    assert denied(owner.put_object, Bucket=bucket, Key=f"registry/{DATASET}/versions/000001.json", Body=b"{}")

    # The worker runs the whole chain (S3, SNS) with nothing but its own policy.
    worker_id, worker_secret = keys["worker"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", worker_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", worker_secret)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # its credentials are cached from the first client
    rt = build_runtime(settings, build_pipeline(), broker=StubBroker(), state=MemoryState(),
                       online=MemoryOnline())
    published: list[str] = []
    rt.on_event = lambda kind, detail: published.append(kind)
    producer.put_object(Bucket=bucket, Key=f"incoming/{DATASET}/a.csv", Body=sample_bytes())
    run = run_stages(rt, f"incoming/{DATASET}/a.csv")
    assert run["run_id"] and "published" in published
    [version] = ModelRegistry(rt.store, MemoryState()).versions(DATASET)
    worker = as_role(settings, keys, "worker")
    assert denied(worker.put_object, Bucket=bucket, Key=f"incoming/{DATASET}/b.csv", Body=b"x")
    assert denied(worker.put_object, Bucket=bucket, Key=f"contracts/{DATASET}.yaml", Body=b"x")

    reader = as_role(settings, keys, "model-reader")
    bundle_key = version["bundle"]["key"]
    assert reader.get_object(Bucket=bucket, Key=bundle_key)["Body"].read()
    assert denied(reader.put_object, Bucket=bucket, Key=f"registry/{DATASET}/aliases/champion.json", Body=b"{}")
    assert denied(reader.get_object, Bucket=bucket, Key=f"incoming/{DATASET}/a.csv")

    operator = as_role(settings, keys, "operator")
    operator.put_object(Bucket=bucket, Key=f"runs/{DATASET}/{run['run_id']}/cancel.json", Body=b"{}")
    operator.put_object(Bucket=bucket, Key=f"registry/{DATASET}/index/probe.json", Body=b"{}")  # lifecycle commands
    operator.put_object(Bucket=bucket, Key=f"published/{DATASET}/probe.json", Body=b"{}")  # its event went out
    assert denied(operator.put_object, Bucket=bucket, Key=f"validated/{DATASET}/{'f' * 64}/data.parquet", Body=b"x")
    assert denied(operator.put_object, Bucket=bucket, Key=f"registry/{DATASET}/versions/000002.json", Body=b"{}")


def test_sluice_iam_prints_the_producer_policy_from_the_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from sluice.cli import main

    monkeypatch.setenv("SLUICE_BUCKET", "acme-ml")
    result = CliRunner().invoke(main, ["iam", "--role", "producer"])
    assert result.exit_code == 0, result.output
    [statement] = json.loads(result.output)["Statement"]
    assert statement["Action"] == ["s3:PutObject"]
    assert statement["Resource"] == ["arn:aws:s3:::acme-ml/incoming/*", "arn:aws:s3:::acme-ml/labels/*"]


def test_a_worker_running_stages_of_the_users_own_may_hand_objects_to_the_arrival_prefixes() -> None:
    """A user's stage returns NewObject("incoming/...") to wake the chain; the built-in chain alone never writes
    there, so only an app with stages of its own widens the worker's policy, to the routes' arrival prefixes."""
    from sluice.core.app import App
    from sluice.handlers import blueprint

    settings = Settings(bucket="acme-ml")

    def writes(routes: Any) -> list[str]:
        [doc] = [policies(settings, routes)["worker"]]
        return [r for s in doc["Statement"] if s["Sid"] == "WriteNewObjects" for r in s["Resource"]]

    assert writes(build_pipeline().routes) == []
    app = App("shop").include(blueprint)

    @app.on_object_created(prefix="exports/", suffix=".jsonl")
    def export_to_csv(event: Any, ctx: Any) -> None:
        return None

    assert writes(app.routes) == ["arn:aws:s3:::acme-ml/exports/*", "arn:aws:s3:::acme-ml/incoming/*",
                                  "arn:aws:s3:::acme-ml/labels/*"]
    assert [r.blueprint for r in app.routes if r.name in ("validate", "export_to_csv")] == ["sluice.builtin", None]
