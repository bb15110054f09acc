"""Least privilege, generated: the IAM policy of each role a deployment needs, from its routes and bucket layout.

    producer        writes what wakes the first stages (incoming/<ds>/, labels/<ds>/) and nothing else
    contract-owner  writes contracts/ and contract-versions/
    worker          reads the bucket, writes the stages' outputs and records, takes the queue, publishes events;
                    with stages of the user's own (which may return `NewObject`s that wake other stages), also
                    writes under the routes' arrival prefixes
    model-reader    reads registry/ and the runs' bundles (the loader, `serve`)
    operator        lifecycle commands: registry history, index and aliases, run cancellation, quarantine replay

Everything the stages act on is also signed (core/provenance.py), so these policies are a second fence: a role
that may write a prefix still cannot make a stage act on what it wrote there without the signing key.
"""

from __future__ import annotations

from typing import Any

from sluice.core.app import Route
from sluice.core.provenance import SIGNED_PREFIXES
from sluice.core.settings import Settings

ROLES = ("producer", "contract-owner", "worker", "model-reader", "operator")
RECORDS = ("quarantine/", "refused/", "deadletter/", "traces/")  # reports on input it did not take; spans
PUBLISHED = ("published/",)  # the worker's record of each model event it sent (core/runtime.py)
CONTRACTS = ("contracts/", "contract-versions/")
READ = ["s3:GetObject", "s3:GetObjectVersion"]
BUILTIN = "sluice.builtin"  # the blueprint of the built-in chain (handlers/__init__.py)


def _objects(settings: Settings, prefixes: list[str] | tuple[str, ...]) -> list[str]:
    return [f"arn:aws:s3:::{settings.bucket}/{p}*" for p in prefixes]


def _statement(sid: str, actions: list[str], resources: list[str]) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources}


def policies(settings: Settings, routes: list[Route]) -> dict[str, dict[str, Any]]:
    """Role name -> IAM policy document."""
    bucket = f"arn:aws:s3:::{settings.bucket}"
    queue = f"arn:aws:sqs:{settings.region}:*:{settings.events_queue}"
    dlq = f"arn:aws:sqs:{settings.region}:*:{settings.dead_letter_queue}"
    topic = f"arn:aws:sns:{settings.region}:*:{settings.topic}"
    # What a person may drop: the prefixes of routes that no stage writes (everything else is a stage's output).
    arrivals = sorted({r.prefix for r in routes if not r.prefix.startswith(SIGNED_PREFIXES)})
    # Stages of the user's own may hand objects to other stages (NewObject under an arrival prefix); the built-in
    # chain never writes there, so a worker running only it keeps the narrower policy.
    own_stages = any(r.blueprint != BUILTIN for r in routes)
    lst = _statement("List", ["s3:ListBucket", "s3:ListBucketVersions"], [bucket])
    docs: dict[str, list[dict[str, Any]]] = {
        "producer": [_statement("Drop", ["s3:PutObject"], _objects(settings, arrivals))],
        "contract-owner": [lst, _statement("Contracts", [*READ, "s3:PutObject"], _objects(settings, CONTRACTS))],
        "worker": [
            lst,
            _statement("ReadAll", READ, [f"{bucket}/*"]),
            _statement("WriteOutputs", ["s3:PutObject"],
                       _objects(settings, (*SIGNED_PREFIXES, *RECORDS, *PUBLISHED))),
            *([_statement("WriteNewObjects", ["s3:PutObject"], _objects(settings, arrivals))] if own_stages else []),
            # Alias objects are removed when a role empties (no challenger): nothing else is ever deleted.
            _statement("DropAliases", ["s3:DeleteObject"], [f"{bucket}/registry/*/aliases/*"]),
            _statement("Queue", ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueUrl",
                                 "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"], [queue, dlq]),
            # CreateTopic is how the publisher finds the topic's ARN (idempotent; it creates nothing new).
            _statement("Publish", ["sns:Publish", "sns:CreateTopic"], [topic]),
        ],
        "model-reader": [lst, _statement("Models", READ, _objects(settings, ("registry/", "runs/",
                                                                           "contract-versions/")))],
        "operator": [
            lst,
            _statement("ReadAll", READ, [f"{bucket}/*"]),
            _statement("Lifecycle", ["s3:PutObject"], [f"{bucket}/registry/*/history/*",
                                                       f"{bucket}/registry/*/index/*",
                                                       f"{bucket}/registry/*/aliases/*",
                                                       f"{bucket}/runs/*/cancel.json",
                                                       # the record that a command's model event went out (without
                                                       # it, every worker's reconcile sends it again)
                                                       f"{bucket}/published/*",
                                                       *_objects(settings, arrivals)]),  # quarantine replay
            _statement("DropAliases", ["s3:DeleteObject"], [f"{bucket}/registry/*/aliases/*"]),
            _statement("Publish", ["sns:Publish", "sns:CreateTopic"], [topic]),
            _statement("QueueDepth", ["sqs:GetQueueUrl", "sqs:GetQueueAttributes"], [queue, dlq]),
            # `sluice deadletter redrive`: records move to redriven/, SQS dead letters back to the events queue.
            _statement("RedriveRecords", ["s3:PutObject"], _objects(settings, ("redriven/",))),
            _statement("ClearRedriven", ["s3:DeleteObject"], _objects(settings, ("deadletter/",))),
            _statement("RedriveQueue", ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:SendMessage"], [queue, dlq]),
        ],
    }
    return {role: {"Version": "2012-10-17", "Statement": statements} for role, statements in docs.items()}
