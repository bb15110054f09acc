"""Publishing model events to the SNS topic that downstream systems subscribe to."""

from __future__ import annotations

import json
from typing import Any

from sluice.core.settings import Settings
from sluice.events.model import ModelEvent
from sluice.infra.aws import client


class SnsPublisher:
    """Publishes CloudEvents with message attributes (type, model, dataset) for subscription filters."""

    def __init__(self, settings: Settings, sns: Any | None = None):
        self.sns = sns or client("sns", settings)
        self.topic = settings.topic
        self._arn: str | None = None

    @property
    def topic_arn(self) -> str:
        """The topic's ARN (CreateTopic is idempotent and returns it)."""
        if self._arn is None:
            self._arn = self.sns.create_topic(Name=self.topic)["TopicArn"]
        return self._arn

    def publish(self, event: ModelEvent) -> str:
        """Publish one event; returns the SNS message id."""
        attributes = {k: {"DataType": "String", "StringValue": v} for k, v in event.attributes().items()}
        response = self.sns.publish(TopicArn=self.topic_arn, Message=event.to_json(), MessageAttributes=attributes)
        return str(response["MessageId"])


def unwrap_sns(body: str) -> dict[str, Any]:
    """The CloudEvent inside an SQS message delivered by an SNS subscription (raw delivery or not)."""
    doc = json.loads(body)
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        doc = json.loads(doc["Message"])
    if not isinstance(doc, dict):
        raise ValueError("SNS message body is not a JSON object")
    return doc
