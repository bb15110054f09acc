"""What reacts: one plain function per stage, `(ObjectCreated, Context) -> [events to publish]`.

The pipeline below is the whole chain; each stage is woken by the object the previous one wrote.
"""

from __future__ import annotations

from sluice.core.app import Pipeline
from sluice.handlers import backtest, benchmark, materialize, register, train, validate


def build_pipeline(training_time_limit_s: int = 3600) -> Pipeline:
    """The Sluice chain, from a dropped file to a published model event."""
    p = Pipeline()
    p.on_object_created("validate", prefix="incoming/", time_limit_s=600)(validate.handle)
    p.on_object_created("labels", prefix="labels/", time_limit_s=600)(validate.handle_labels)
    p.on_object_created("features", prefix="validated/", suffix="/manifest.json", time_limit_s=600)(materialize.handle)
    p.on_object_created("train", prefix="features/", suffix="/manifest.json",
                        time_limit_s=training_time_limit_s, time_limit_from_contract=True)(train.handle)
    p.on_object_created("train-labels", prefix="validated-labels/", suffix="/manifest.json",
                        time_limit_s=training_time_limit_s, time_limit_from_contract=True)(train.handle)
    p.on_object_created("backtest", prefix="validated-labels/", suffix="/data.parquet",
                        time_limit_s=600)(backtest.handle)
    p.on_object_created("benchmark", prefix="runs/", suffix="/run.json", time_limit_s=600)(benchmark.handle)
    p.on_object_created("register", prefix="registry/", suffix=".candidate.json", time_limit_s=120)(register.handle)
    return p
