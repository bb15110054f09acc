"""Stage 1: a dropped file is checked against its dataset's contract and becomes a content-addressed data version.

    incoming/<dataset>/<file>  ->  validated/<dataset>/<data version>/{data.parquet, manifest.json}
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import polars as pl
from sluice.core.context import Context
from sluice.core.contract import load_contract
from sluice.core.errors import Failure, TransientError, UnreadableFile, ValidationFailed
from sluice.core.runtime import dataset_of, object_id
from sluice.core.tabular import validate
from sluice.events.s3 import ObjectCreated


def handle(event: ObjectCreated, ctx: Context) -> list[Any]:
    """Validate one dropped object; write the data version, or raise InputError to quarantine it."""
    parts = event.key.split("/")
    if len(parts) < 3 or not parts[1]:
        raise UnreadableFile(f"{event.key} is not under a dataset folder.",
                             hint="Drop files at incoming/<dataset>/<file>, e.g. `sluice drop FILE --dataset NAME`.")
    dataset = dataset_of(event.key)
    contract = load_contract(ctx.store, dataset)
    info = ctx.store.head(event.key)
    if info is None:
        raise UnreadableFile(f"{event.key} was deleted before it could be read.", hint="Drop it again.")
    data = ctx.store.get(event.key, event.version_id)
    data_version = hashlib.sha256(data).hexdigest()
    if info.sha256 and event.version_id in (None, info.version_id) and info.sha256 != data_version:
        raise TransientError(f"{event.key}: read bytes do not match the stored SHA-256; reading again")

    base = f"validated/{dataset}/{data_version}"
    ledger = {"key": event.key, "etag": event.etag, "version_id": event.version_id or info.version_id,
              "sha256": data_version, "size": len(data), "data_version": data_version, "at": ctx.timestamp()}
    if ctx.store.exists(f"{base}/manifest.json"):
        # Same bytes as an earlier drop: same data version, nothing downstream runs again.
        ctx.store.put_json(f"ledger/{dataset}/{object_id(event)}.json", {**ledger, "outcome": "duplicate"})
        ctx.log.info("same  validate   %s is data version %s (already validated)", event.key, data_version[:12])
        return []

    frame = validate(event.key, data, contract)
    check_target(event.key, frame, contract)
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    ctx.store.put(f"{base}/data.parquet", buffer.getvalue())
    manifest = {
        "dataset": dataset,
        "data_version": data_version,
        "rows": frame.height,
        "columns": frame.columns,
        "contract_version": contract.fingerprint(),
        "source": {"bucket": event.bucket, "key": event.key, "etag": event.etag,
                   "version_id": event.version_id or info.version_id, "sha256": data_version, "size": len(data)},
        "validated_at": ctx.timestamp(),
    }
    # The manifest is written last and only once: its creation is what wakes feature materialization.
    ctx.store.put_json(f"{base}/manifest.json", manifest, if_absent=True)
    ctx.store.put_json(f"ledger/{dataset}/{object_id(event)}.json", {**ledger, "outcome": "validated"})
    ctx.log.info("wrote validate   %s -> data version %s (%d rows)", event.key, data_version[:12], frame.height)
    return []


def check_target(key: str, frame: pl.DataFrame, contract: Any) -> None:
    """A table whose target cannot teach anything is bad input, not a training failure."""
    y = frame[contract.target].drop_nulls()
    if y.len() == 0:
        raise ValidationFailed(f"{key}: target column {contract.target!r} is entirely null.",
                               hint="Fill in the target values and drop the file again.",
                               failures=[Failure(contract.target, "target has values")])
    if contract.task != "regression" and y.n_unique() < 2:
        raise ValidationFailed(
            f"{key}: target column {contract.target!r} has a single class ({y[0]!r}); a classifier needs two.",
            hint="Drop a file that contains examples of every class.",
            failures=[Failure(contract.target, "at least two classes", value=y[0])])
