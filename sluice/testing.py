"""Testing an app's stages without AWS or a broker, chalice-style: moto in-process, the runtime run stage by stage.

    from sluice.testing import local_runtime

    def test_my_stage():
        with local_runtime(app) as rt:
            rt.store.put("exports/shop/day1.jsonl", b'{"a": 1}\\n')
            result = rt.run("export_to_csv", "exports/shop/day1.jsonl")
            assert result["outputs"] == ["incoming/shop/day1.csv"]

`rt.run` does what the worker does for one message (claim, handler, quarantine, effects), with no threads: the
next stage runs when the test says so.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from sluice.core.app import App
from sluice.core.runtime import Runtime
from sluice.core.settings import Settings


class LocalRuntime(Runtime):
    """A runtime on moto in-process with Dramatiq's StubBroker and in-memory state."""

    def run(self, stage: str, key: str) -> dict[str, Any]:
        """Run `stage` on the object at `key` as if its notification had arrived; returns the stage's result."""
        from sluice.events.s3 import ObjectCreated

        if stage not in self.routes:
            raise KeyError(f"no stage {stage!r} in this app; its stages: {', '.join(sorted(self.routes))}")
        info = self.store.head(key)
        if info is None:
            raise KeyError(f"no object at {key!r} in bucket {self.settings.bucket!r}")
        event = ObjectCreated(self.settings.bucket, key, info.size, info.etag, info.version_id)
        return self.execute(stage, event.to_dict())


@contextmanager
def local_runtime(app: App, *, bucket: str = "sluice-test", **settings: Any) -> Iterator[LocalRuntime]:
    """`app` provisioned on moto (`mock_aws`): bucket, queues, topic, one notification per stage."""
    from dramatiq.brokers.stub import StubBroker
    from moto import mock_aws

    from sluice.core.memory import MemoryOnline, MemoryState
    from sluice.infra.notify import SnsPublisher
    from sluice.infra.provision import provision
    from sluice.infra.store import S3Store
    from sluice.ml.contract import training_time_limit_s

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)
    with mock_aws():
        s = replace(Settings(), bucket=bucket, broker_url="memory://", endpoint_url=None, **settings)
        provision(s, app.routes)
        yield LocalRuntime(s, app, StubBroker(), MemoryState(), store=S3Store(s), publisher=SnsPublisher(s),
                           online=MemoryOnline(), contract_time_limit=training_time_limit_s)
