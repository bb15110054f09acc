"""Sluice: a file dropped into a bucket becomes a validated, trained, benchmarked and promoted model.

    import sluice
    model = sluice.load_model("cancer@champion")      # or "cancer:3", a promotion CloudEvent, a bundle folder
    result = model.predict("new_rows.csv")            # a polars/pandas frame, a list of dicts, CSV or Parquet
    result.to_polars()                                # row, prediction, probability_<class>, unscored_reason
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_model"]

if TYPE_CHECKING:
    from sluice.ml.bundle import Model


def load_model(ref: Any, **kwargs: Any) -> Model:
    """A registered model, verified and ready to score: see `sluice.ml.bundle.load_model`. The bucket comes from
    `settings` (default: the environment's)."""
    from dataclasses import replace

    from sluice.core.settings import Settings
    from sluice.infra.store import S3Store
    from sluice.ml.bundle import load_model as _load

    settings = kwargs.pop("settings", None) or Settings.from_env()
    return _load(ref, settings=settings, open_bucket=lambda bucket: S3Store(replace(settings, bucket=bucket)),
                 **kwargs)
