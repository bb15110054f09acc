"""Subscribing an SQS queue or an HTTP(S) endpoint to the model-event topic, with SNS filter policies."""

from __future__ import annotations

import json
import uuid
from types import TracebackType
from typing import Any

from sluice.core.settings import Settings
from sluice.infra.aws import client
from sluice.infra.notify import unwrap_sns


def subscribe_queue(
    settings: Settings, queue_name: str, filter_policy: dict[str, Any] | None = None
) -> tuple[str, str]:
    """Create (or find) `queue_name`, allow the topic to send to it, subscribe it; returns (queue url, sub arn)."""
    sqs, sns = client("sqs", settings), client("sns", settings)
    topic_arn = sns.create_topic(Name=settings.topic)["TopicArn"]
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "sns.amazonaws.com"}, "Action": "sqs:SendMessage",
        "Resource": arn, "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}}}]}
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
    attributes = {"RawMessageDelivery": "true"}
    if filter_policy:
        attributes["FilterPolicy"] = json.dumps(filter_policy)
    sub = sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn, Attributes=attributes,
                        ReturnSubscriptionArn=True)
    return url, sub["SubscriptionArn"]


def filter_policy(*, models: tuple[str, ...] | list[str] = (), datasets: tuple[str, ...] | list[str] = (),
                  types: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """An SNS filter policy on the message attributes every model event carries; {} matches everything."""
    policy = {"model": list(models), "dataset": list(datasets), "type": list(types)}
    return {k: v for k, v in policy.items() if v}


def subscribe_http(settings: Settings, url: str, filter_policy: dict[str, Any] | None = None) -> str:
    """Subscribe an HTTP(S) endpoint (raw CloudEvents as the POST body); returns the subscription ARN.

    SNS first POSTs a SubscriptionConfirmation the endpoint must confirm (GET its SubscribeURL).
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r}: an HTTP subscription needs an http:// or https:// URL")
    sns = client("sns", settings)
    topic_arn = sns.create_topic(Name=settings.topic)["TopicArn"]
    attributes = {"RawMessageDelivery": "true"}
    if filter_policy:
        attributes["FilterPolicy"] = json.dumps(filter_policy)
    sub = sns.subscribe(TopicArn=topic_arn, Protocol="https" if url.startswith("https://") else "http",
                        Endpoint=url, Attributes=attributes, ReturnSubscriptionArn=True)
    return str(sub["SubscriptionArn"])


class TemporarySubscription:
    """A fresh queue subscribed to the topic for as long as the `with` block runs."""

    def __init__(self, settings: Settings, filter_policy: dict[str, Any] | None = None,
                 queue_name: str | None = None):
        self.settings = settings
        self.queue_name = queue_name or f"sluice-tail-{uuid.uuid4().hex[:8]}"
        self.filter_policy = filter_policy
        self.sqs = client("sqs", settings)

    def __enter__(self) -> TemporarySubscription:
        self.url, self.subscription_arn = subscribe_queue(self.settings, self.queue_name, self.filter_policy)
        return self

    def receive(self, wait_s: int = 2) -> list[dict[str, Any]]:
        """CloudEvents received within `wait_s` seconds."""
        out = []
        resp = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s)
        for m in resp.get("Messages", []):
            out.append(unwrap_sns(m["Body"]))
            self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=m["ReceiptHandle"])
        return out

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        client("sns", self.settings).unsubscribe(SubscriptionArn=self.subscription_arn)
        self.sqs.delete_queue(QueueUrl=self.url)
