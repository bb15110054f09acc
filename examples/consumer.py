"""A downstream consumer of Sluice model events: deploy a model when it is promoted or rolled back.

    AWS_ENDPOINT_URL=http://127.0.0.1:4566 python examples/consumer.py --model breast-cancer [--score rows.csv]

It subscribes its own durable queue to the topic with a filter policy, so it only receives promotions of
its model, and de-duplicates on the CloudEvent `id` (delivery is at least once). Both event types mean "serve
`data.version` now": a promotion names the new champion, a rollback the restored one.
"""

from __future__ import annotations

import argparse

import sluice
from sluice.core.settings import Settings
from sluice.infra.aws import client
from sluice.infra.notify import unwrap_sns
from sluice.infra.subscribe import filter_policy, subscribe_queue


def main() -> None:
    """Subscribe, then handle promotions until interrupted."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--queue", default="deployer")
    parser.add_argument("--score", default=None, help="A CSV or Parquet file to score with each new champion.")
    args = parser.parse_args()
    settings = Settings.from_env()
    policy = filter_policy(models=[args.model], types=["sluice.model.promoted", "sluice.model.rolled_back"])
    url, _ = subscribe_queue(settings, args.queue, policy)
    sqs = client("sqs", settings)
    seen: set[str] = set()  # use a durable store in production
    print(f"waiting for promotions and rollbacks of {args.model} on queue {args.queue}")
    while True:
        for message in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=10).get("Messages", []):
            event = unwrap_sns(message["Body"])
            if event["id"] not in seen:
                seen.add(event["id"])
                data = event["data"]
                # The event alone is enough: the bundle it names is verified against the registry's record.
                model = sluice.load_model(event, settings=settings)
                print(f"{event['type']}: now serving {data['model']} v{model.version} (model sha256 "
                      f"{model.model_sha256[:12]}); replaces {_v(data['previous_version'])} "
                      f"({data['transition']['by']}: {data['transition']['reason']})")
                if args.score:
                    result = model.predict(args.score)
                    print(f"  scored {len(result.scored)} of {result.rows} rows of {args.score}")
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def _v(version: int | None) -> str:
    return "nothing" if version is None else f"v{version}"


if __name__ == "__main__":
    main()
