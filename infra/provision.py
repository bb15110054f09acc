"""Provision the bucket, queues, topic and notifications. Idempotent: a second run changes nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from sluice.core.app import Route
from sluice.core.settings import Settings
from sluice.infra.aws import client

DLQ_MAX_RECEIVES = 5
VISIBILITY_TIMEOUT_S = 60


@dataclass
class Resources:
    """What `provision` made or found."""

    bucket: str
    events_queue_url: str
    dead_letter_queue_url: str
    topic_arn: str
    changes: list[str]


def provision(settings: Settings, routes: list[Route]) -> Resources:
    """Create what is missing and correct what differs; report each change made."""
    s3, sqs, sns = client("s3", settings), client("sqs", settings), client("sns", settings)
    changes: list[str] = []

    try:
        s3.head_bucket(Bucket=settings.bucket)
    except ClientError:
        kwargs: dict[str, Any] = {"Bucket": settings.bucket}
        if settings.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": settings.region}
        s3.create_bucket(**kwargs)
        changes.append(f"created bucket {settings.bucket}")
    # Versioning gives every drop an S3 version id for lineage, and keeps overwritten drops recoverable.
    if s3.get_bucket_versioning(Bucket=settings.bucket).get("Status") != "Enabled":
        s3.put_bucket_versioning(Bucket=settings.bucket, VersioningConfiguration={"Status": "Enabled"})
        changes.append(f"enabled versioning on {settings.bucket}")

    _trace_expiry(s3, settings, changes)

    dlq_url, dlq_arn = _queue(sqs, settings.dead_letter_queue, {}, changes)
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(DLQ_MAX_RECEIVES)})
    queue_url, queue_arn = _queue(
        sqs,
        settings.events_queue,
        {"RedrivePolicy": redrive, "VisibilityTimeout": str(VISIBILITY_TIMEOUT_S)},
        changes,
    )
    # Emulators do not enforce it, but AWS requires the queue to allow the bucket to send to it.
    policy = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "sluice-bucket-notifications",
                    "Effect": "Allow",
                    "Principal": {"Service": "s3.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{settings.bucket}"}},
                }
            ],
        },
        sort_keys=True,
    )
    _set_queue_attributes(sqs, queue_url, {"Policy": policy}, changes, settings.events_queue)

    existing_topics = _topic_arns(sns)
    topic_arn = sns.create_topic(Name=settings.topic)["TopicArn"]  # CreateTopic is idempotent
    if topic_arn not in existing_topics:
        changes.append(f"created topic {settings.topic}")

    wanted = [
        {
            "Id": f"sluice-{route.name}",
            "QueueArn": queue_arn,
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": route.filter_rules()}},
        }
        for route in routes
    ]
    current = s3.get_bucket_notification_configuration(Bucket=settings.bucket).get("QueueConfigurations", [])
    if _normalise(current) != _normalise(wanted):
        s3.put_bucket_notification_configuration(
            Bucket=settings.bucket, NotificationConfiguration={"QueueConfigurations": wanted}
        )
        changes.append(
            f"set {len(wanted)} object-created notifications on {settings.bucket} -> {settings.events_queue}"
        )
    return Resources(settings.bucket, queue_url, dlq_url, topic_arn, changes)


def _queue(sqs: Any, name: str, attributes: dict[str, str], changes: list[str]) -> tuple[str, str]:
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError:
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        changes.append(f"created queue {name}")
    else:
        _set_queue_attributes(sqs, url, attributes, changes, name)
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def _set_queue_attributes(sqs: Any, url: str, wanted: dict[str, str], changes: list[str], name: str) -> None:
    if not wanted:
        return
    have = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(wanted)).get("Attributes", {})
    differing = {k: v for k, v in wanted.items() if not _same_attribute(have.get(k), v)}
    if differing:
        sqs.set_queue_attributes(QueueUrl=url, Attributes=differing)
        changes.append(f"set {', '.join(sorted(differing))} on queue {name}")


def _same_attribute(have: str | None, want: str) -> bool:
    if have is None:
        return False
    try:  # JSON attributes come back re-serialised, numbers as numbers or strings, depending on the service
        return bool(_canonical(json.loads(have)) == _canonical(json.loads(want)))
    except ValueError:
        return have == want


def _canonical(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _canonical(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_canonical(v) for v in doc]
    return str(doc)


def _topic_arns(sns: Any) -> set[str]:
    arns: set[str] = set()
    for page in sns.get_paginator("list_topics").paginate():
        arns.update(t["TopicArn"] for t in page.get("Topics", []))
    return arns


def _normalise(configs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    out = []
    for c in configs:
        filter_rules = c.get("Filter", {}).get("Key", {}).get("FilterRules", [])
        rules = tuple(sorted((r["Name"].lower(), r["Value"]) for r in filter_rules))
        out.append((c.get("Id"), c["QueueArn"], tuple(sorted(c["Events"])), rules))
    return sorted(out)


TRACE_RULE_ID = "sluice-traces-expiry"


def _trace_expiry(s3: Any, settings: Settings, changes: list[str]) -> None:
    """Keep the bucket's lifecycle rule that expires spans under traces/ after `trace_retention_days` (and their
    old versions a day later). Any other rule on the bucket is kept as it is: S3 replaces the whole configuration
    on every put, so the wanted one is merged into what is there."""
    from sluice.core.keys import TRACES

    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=settings.bucket).get("Rules", [])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            raise
        rules = []
    others = [r for r in rules if r.get("ID") != TRACE_RULE_ID]
    current = next((r for r in rules if r.get("ID") == TRACE_RULE_ID), None)
    days = settings.trace_retention_days
    wanted = None if days <= 0 else {
        "ID": TRACE_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": TRACES},
        "Expiration": {"Days": days}, "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
    }
    if wanted is None and current is None:
        return
    if wanted is not None and current is not None and _same_rule(current, wanted):
        return
    if wanted is None and not others:
        s3.delete_bucket_lifecycle(Bucket=settings.bucket)
    else:
        keep = [*others, *([wanted] if wanted else [])]
        s3.put_bucket_lifecycle_configuration(Bucket=settings.bucket, LifecycleConfiguration={"Rules": keep})
    changes.append(f"traces/ on {settings.bucket} expire after {days} days" if wanted
                   else f"traces/ on {settings.bucket} no longer expire")


def _same_rule(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(current.get(k) == v for k, v in wanted.items())
