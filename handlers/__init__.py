"""What reacts: one plain function per stage, `(ObjectCreated, Context) -> [events to publish]`.

`blueprint` below is the whole chain (`sluice.builtin`); each stage is woken by the object the previous one wrote,
under the bucket layout of core/keys.py.
An app includes it exactly as it includes a blueprint of its own: `app.include(sluice.builtin)`.
"""

from __future__ import annotations

from sluice.core import keys
from sluice.core.app import App, Blueprint
from sluice.handlers import backtest, benchmark, materialize, register, train, validate

TRAINING_TIME_LIMIT_S = 3600  # the default; each message carries its contract's own (time_limit_from_contract)

blueprint = Blueprint("sluice.builtin")
blueprint.on_object_created("validate", prefix=keys.INCOMING, time_limit_s=600)(validate.handle)
blueprint.on_object_created("labels", prefix=keys.LABELS, time_limit_s=600)(validate.handle_labels)
blueprint.on_object_created("features", prefix=keys.VALIDATED, suffix=f"/{keys.MANIFEST}",
                            time_limit_s=600)(materialize.handle)
blueprint.on_object_created("train", prefix=keys.FEATURES, suffix=f"/{keys.MANIFEST}",
                            time_limit_s=TRAINING_TIME_LIMIT_S, time_limit_from_contract=True)(train.handle)
blueprint.on_object_created("train-labels", prefix=keys.VALIDATED_LABELS, suffix=f"/{keys.MANIFEST}",
                            time_limit_s=TRAINING_TIME_LIMIT_S, time_limit_from_contract=True)(train.handle)
blueprint.on_object_created("backtest", prefix=keys.VALIDATED_LABELS, suffix=f"/{keys.DATA}",
                            time_limit_s=600)(backtest.handle)
blueprint.on_object_created("benchmark", prefix=keys.RUNS, suffix=f"/{keys.RUN}", time_limit_s=600)(benchmark.handle)
blueprint.on_object_created("register", prefix=keys.REGISTRY, suffix=keys.CANDIDATE_SUFFIX,
                            time_limit_s=120)(register.handle)


def build_pipeline() -> App:
    """An app with the built-in chain and nothing else: what runs when no `--app` is given."""
    return App("sluice").include(blueprint)
