"""Sluice: a file dropped into a bucket becomes a validated, trained, benchmarked and promoted model.

    import sluice
    model = sluice.load_model("cancer@champion")      # or "cancer:3", a promotion CloudEvent, a bundle folder
    result = model.predict("new_rows.csv")            # a polars/pandas frame, a list of dicts, CSV or Parquet
    result.to_polars()                                # row, prediction, probability_<class>, unscored_reason

Your own stages, checks, feature functions and learners (run with `sluice worker --app app:app`):

    from sluice import App, NewObject
    import sluice

    app = App("shop")
    app.include(sluice.builtin)                       # the built-in chain: validate, features, train, ...

    @app.on_object_created(prefix="exports/", suffix=".csv")
    def export(event, ctx):
        return [NewObject(f"incoming/orders/{event.key.rsplit('/', 1)[-1]}", ctx.store.get(event.key))]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["App", "Blueprint", "NewObject", "__version__", "builtin", "load_model"]

if TYPE_CHECKING:
    from sluice.core.app import App, Blueprint, NewObject
    from sluice.ml.bundle import Model

    builtin: Blueprint


def load_model(ref: Any, **kwargs: Any) -> Model:
    """A registered model, verified and ready to score: see `sluice.ml.bundle.load_model`. The bucket comes from
    `settings` (default: the environment's).

    A model whose contract names custom feature functions or a custom learner needs the app that registers them:
    `load_model(ref, app=app)`."""
    from dataclasses import replace

    from sluice.core.settings import Settings
    from sluice.infra.store import S3Store
    from sluice.ml.bundle import load_model as _load

    settings = kwargs.pop("settings", None) or Settings.from_env()
    return _load(ref, settings=settings, open_bucket=lambda bucket: S3Store(replace(settings, bucket=bucket)),
                 **kwargs)


def __getattr__(name: str) -> Any:
    # Lazy: `sluice --help` and `import sluice` stay light; the chain's handlers import polars, pandera, FLAML.
    if name in ("App", "Blueprint", "NewObject"):
        from sluice.core import app

        return getattr(app, name)
    if name == "builtin":
        from sluice.handlers import blueprint

        return blueprint
    raise AttributeError(f"module 'sluice' has no attribute {name!r}")
