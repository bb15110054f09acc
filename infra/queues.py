"""The SQS side of dead letters and queue depth: what `sluice deadletter` and the worker's metrics read."""

from __future__ import annotations

import logging
from typing import Any

from sluice.core.settings import Settings
from sluice.infra.aws import client

log = logging.getLogger("sluice")


def _dlq_url(settings: Settings, sqs: Any) -> str | None:
    from botocore.exceptions import ClientError

    try:
        return str(sqs.get_queue_url(QueueName=settings.dead_letter_queue)["QueueUrl"])
    except ClientError:
        return None


def dead_letter_messages(settings: Settings, limit: int = 100) -> list[dict[str, Any]]:
    """Peek at the SQS dead-letter queue (received with no visibility timeout, so nothing is taken)."""
    sqs = client("sqs", settings)
    url = _dlq_url(settings, sqs)
    seen: dict[str, dict[str, Any]] = {}
    if url is None:
        return []
    for _ in range(max(1, limit // 10)):
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0,
                                  AttributeNames=["All"]).get("Messages", [])
        fresh = [m for m in got if m["MessageId"] not in seen]
        if not fresh:
            break
        for m in fresh:
            seen[m["MessageId"]] = {"message_id": m["MessageId"], "body": m["Body"],
                                    "receives": m.get("Attributes", {}).get("ApproximateReceiveCount")}
    return list(seen.values())[:limit]


def move_dead_letters_back(settings: Settings) -> int:
    """Move the SQS dead letters back to the events queue, where the bridge picks them up; returns how many."""
    sqs = client("sqs", settings)
    url = _dlq_url(settings, sqs)
    if url is None:
        return 0
    target = sqs.get_queue_url(QueueName=settings.events_queue)["QueueUrl"]
    moved = 0
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60,
                                  WaitTimeSeconds=0).get("Messages", [])
        if not got:
            return moved
        for m in got:
            # Send first, then delete: a crash in between leaves a duplicate, which the claims absorb.
            sqs.send_message(QueueUrl=target, MessageBody=m["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            moved += 1
            log.info("redriven SQS dead letter %s -> %s", m["MessageId"], settings.events_queue)
