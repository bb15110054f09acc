"""The S3 notification boundary and the model event format."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from sluice.events import ModelEvent, ObjectCreated, parse_s3_notification
from sluice.events.s3 import NotificationDecodeError


def _record(key: str, name: str = "ObjectCreated:Put") -> dict[str, object]:
    return {"eventName": name, "eventTime": "2026-01-01T00:00:00Z",
            "s3": {"bucket": {"name": "b"}, "object": {"key": key, "size": 3, "eTag": "abc", "sequencer": "01"}}}


@pytest.mark.parametrize("wire", [
    "in%2Fa+b%2Bc.txt",  # moto
    "in/a%20b%2Bc.txt",  # LocalStack
    "in/a+b%2Bc.txt",  # AWS (form encoding)
])
def test_key_is_decoded_exactly_once_for_every_emulator(wire: str) -> None:
    [event] = parse_s3_notification(json.dumps({"Records": [_record(wire)]}))
    assert event.key == "in/a b+c.txt"


def test_every_record_is_parsed_and_non_creations_are_skipped() -> None:
    body = {"Records": [_record("incoming/x/1.csv"), _record("incoming/x/2.csv", "ObjectRemoved:Delete"),
                        _record("incoming/x/3.csv")]}
    assert [e.key for e in parse_s3_notification(json.dumps(body))] == ["incoming/x/1.csv", "incoming/x/3.csv"]


def test_test_event_gives_nothing() -> None:
    assert parse_s3_notification('{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}') == []


def test_sns_envelope_is_unwrapped() -> None:
    inner = json.dumps({"Records": [_record("incoming/x/1.csv")]})
    assert parse_s3_notification(json.dumps({"Type": "Notification", "Message": inner}))[0].key == "incoming/x/1.csv"


@pytest.mark.parametrize("body", ["not json", "[1,2]", '{"Records": [{"eventName": "ObjectCreated:Put"}]}', "{}"])
def test_poison_messages_raise_with_the_raw_body(body: str) -> None:
    with pytest.raises(NotificationDecodeError) as info:
        parse_s3_notification(body)
    assert info.value.body == body


def test_object_created_round_trips() -> None:
    event = ObjectCreated("b", "incoming/x/a b.csv", 3, "e", "v1", "01", "t")
    again = ObjectCreated.from_dict(json.loads(json.dumps(event.to_dict())))
    assert again == event
    assert event.to_dict()["type"] == "s3.object.created"
    assert event.idempotency_key == "b/incoming/x/a b.csv@e"


@mock_aws
def test_a_real_moto_notification_parses() -> None:
    s3, sqs = boto3.client("s3", region_name="us-east-1"), boto3.client("sqs", region_name="us-east-1")
    s3.create_bucket(Bucket="bkt")
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket="bkt", NotificationConfiguration={"QueueConfigurations": [
        {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    s3.put_object(Bucket="bkt", Key="incoming/ds/a b+c.csv", Body=b"x")
    events = []
    for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        events += parse_s3_notification(m["Body"])
    assert [(e.bucket, e.key, e.size) for e in events] == [("bkt", "incoming/ds/a b+c.csv", 1)]


def test_model_event_is_a_cloudevent_with_a_stable_id() -> None:
    a = ModelEvent("sluice.model.promoted", "m", "d", 3, "2026-01-01T00:00:00Z", "sluice://b", {"x": 1})
    b = ModelEvent("sluice.model.promoted", "m", "d", 3, "2026-01-02T00:00:00Z", "sluice://b", {"x": 1})
    doc = json.loads(a.to_json())
    assert {"specversion", "id", "source", "type", "time", "subject", "data"} <= set(doc)
    assert doc["subject"] == "models/m/versions/3"
    assert a.id == b.id  # a redelivery carries the same id
    assert ModelEvent.from_cloudevent(doc) == a
    assert a.id != ModelEvent("sluice.model.promoted", "m", "d", 4, "t", "sluice://b").id
