"""Stage 1: a dropped file is checked against its dataset's contract and becomes a content-addressed data version.

    incoming/<dataset>/<file>  ->  validated/<dataset>/<data version>/{data.parquet, profile.json, manifest.json}
                                   quarantine/<dataset>/<data version>/{rows.parquet, report.json}  (invalid rows)

The data version is the sha256 of the dropped bytes. When S3 holds a full-object SHA-256 checksum (`sluice drop`
uploads with one), a duplicate is recognised without reading the object; otherwise the object is hashed while
it streams to disk for validation, so it is read once.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from sluice.core import keys, tracing
from sluice.core.context import Context
from sluice.core.errors import (
    Failure,
    InputError,
    IntegrityError,
    TransientError,
    UnreadableFile,
    ValidationFailed,
    clip,
)
from sluice.core.runtime import object_id
from sluice.events.pipeline import DataValidated
from sluice.events.s3 import ObjectCreated
from sluice.ml import drift, validation
from sluice.ml.contract import Contract, load_contract
from sluice.ml.features import label_contract
from sluice.ml.quarantine import REPLAY_KEY, REPLAY_OF
from sluice.ml.registry import ModelRegistry


def handle(event: ObjectCreated, ctx: Context) -> list[Any]:
    """Validate one dropped object: write the data version and split out invalid rows, or quarantine it whole."""
    contract = load_contract(ctx.store, _dataset(event), ctx.extensions)
    return validate_object(event, ctx, contract, "validated")


def handle_labels(event: ObjectCreated, ctx: Context) -> list[Any]:
    """Validate a label file (entity key, label time, target) of a dataset whose labels arrive separately."""
    contract = load_contract(ctx.store, _dataset(event), ctx.extensions)
    if contract.labels is None:
        raise UnreadableFile(
            f"{event.key}: dataset {contract.dataset!r} takes its target with the data, not as separate labels.",
            hint=f"Drop the file under incoming/{contract.dataset}/, or add `entity` and `labels` to its contract.")
    return validate_object(event, ctx, label_contract(contract), "validated-labels")


def _dataset(event: ObjectCreated) -> str:
    dataset = keys.dataset_of(event.key)
    if dataset == "_unknown":
        root = event.key.split("/", 1)[0]
        raise UnreadableFile(f"{event.key} is not under a dataset folder.",
                             hint=f"Drop files at {root}/<dataset>/<file>, e.g. `sluice drop FILE --dataset NAME`.")
    return dataset


def validate_object(event: ObjectCreated, ctx: Context, contract: Contract, prefix: str) -> list[Any]:
    """Validate a dropped object against `contract`; the outcome goes under `prefix/<dataset>/<data version>/`."""
    dataset = contract.dataset
    info = ctx.store.head(event.key)
    if info is None:
        raise UnreadableFile(f"{event.key} was deleted before it could be read.", hint="Drop it again.")
    ledger = {"key": event.key, "etag": event.etag, "version_id": event.version_id or info.version_id,
              "size": info.size}
    if trace_id := tracing.current().get("trace_id"):
        ledger["trace_id"] = trace_id  # absent in entries written before correlation ids
    if info.sha256 and _already_done(ctx, prefix, dataset, info.sha256, event, ledger):
        return []
    validation.check_size(event.key, info.size, contract)  # before a byte is downloaded

    with tempfile.TemporaryDirectory(prefix="sluice-validate-") as tmp:
        path = Path(tmp) / "object"
        data_version, size = ctx.store.download(event.key, path, event.version_id)
        if info.sha256 and data_version != info.sha256 and event.version_id in (None, info.version_id):
            raise TransientError(f"{event.key}: read bytes do not match the stored SHA-256; reading again")
        ledger.update(sha256=data_version, data_version=data_version, size=size)
        if not info.sha256 and _already_done(ctx, prefix, dataset, data_version, event, ledger):
            return []
        try:
            split = validation.validate_file(path, event.key, contract, Path(tmp), extensions=ctx.extensions)
            # One class is fine in a later drop (a quiet day) or a replay, not in the data a first model learns from.
            earlier = keys.Validated.prefix(dataset, labels=prefix == keys.VALIDATED_LABELS.rstrip("/"))
            first = REPLAY_OF not in info.metadata and not any(
                k.endswith("/manifest.json") for k in ctx.store.keys(earlier))
            if contract.labels is None:  # with separate labels, the data has no target to check
                _check_target(event.key, split, contract, require_classes=first)
            if split.invalid_fraction > contract.max_invalid_fraction:
                raise ValidationFailed(
                    f"{event.key}: {split.rows_invalid} of {split.rows_total} rows "
                    f"({split.invalid_fraction:.1%}) break the contract of {dataset!r}, more than its "
                    f"max_invalid_fraction of {contract.max_invalid_fraction:.1%}: "
                    + "; ".join(f.describe() for f in split.summary()[:5]) + ".",
                    hint=validation.FIX_ROWS.format(dataset=dataset)
                    + " To let valid rows through while bad ones are split out, raise max_invalid_fraction.",
                    failures=split.examples,
                    details={"rows": _counts(split), "rules": _rules(split), "example_rows": split.example_rows})
        except InputError as err:
            err.data_version = data_version
            raise
        return _publish(ctx, event, info.metadata, contract, split, data_version, ledger, prefix)


def _already_done(ctx: Context, prefix: str, dataset: str, data_version: str, event: ObjectCreated,
                  ledger: dict[str, Any]) -> bool:
    """Same bytes as an earlier drop: record the arrival, run nothing downstream."""
    # Read, not just seen: a manifest no stage wrote must not pass a new drop off as a duplicate.
    labels = prefix == keys.VALIDATED_LABELS.rstrip("/")
    if ctx.store.get_json_or_none(keys.Validated(dataset, data_version, labels=labels).key) is None:
        return False
    mine = ctx.store.get_json_or_none(keys.Ledger(dataset, object_id(event)).key)
    if mine and mine.get("outcome") == "validated" and mine.get("data_version") == data_version:
        return True  # a redelivery of the drop that made this data version: its outcome stands
    ctx.store.put_json(keys.Ledger(dataset, object_id(event)).key, {
        **ledger, "sha256": data_version, "data_version": data_version, "outcome": "duplicate", "at": ctx.timestamp()})
    ctx.log.info("same  validate   %s is data version %s (already validated)", event.key, data_version[:12])
    return True


def _publish(ctx: Context, event: ObjectCreated, metadata: dict[str, str], contract: Contract,
             split: validation.Split, data_version: str, ledger: dict[str, Any], prefix: str) -> list[Any]:
    dataset = contract.dataset
    kind = "labels" if prefix == "validated-labels" else "data"
    base = keys.Validated.prefix(dataset, data_version, labels=prefix == keys.VALIDATED_LABELS.rstrip("/"))
    assert split.valid_path is not None and split.sample is not None
    ctx.store.put_file(f"{base}data.parquet", split.valid_path)
    ctx.store.put_json(f"{base}profile.json", drift.data_profile(split.sample, split.rows_valid,
                                                                  dict(split.null_counts)))
    if split.rows_invalid:
        _quarantine_rows(ctx, event, contract, split, data_version)
    summary = _drift(ctx, contract, split.sample) if kind == "data" else None
    retrain = _should_retrain(contract, summary)
    replay_of = None
    source = {"bucket": event.bucket, "key": event.key, "etag": event.etag, "version_id": ledger["version_id"],
              "sha256": data_version, "size": ledger["size"]}
    if REPLAY_OF in metadata:
        replay_of = {"data_version": metadata[REPLAY_OF], "key": metadata.get(REPLAY_KEY)}
        source["replay_of"] = replay_of  # lineage: the replayed rows came from this original drop
    manifest = DataValidated(
        dataset=dataset, data_version=data_version, contract_version=contract.fingerprint(), source=source,
        rows=split.rows_valid, rows_total=split.rows_total, rows_quarantined=split.rows_invalid,
        columns=split.columns, validated_at=ctx.timestamp(), retrain=retrain, drift=summary, replay_of=replay_of,
        kind=kind, trace_id=tracing.current().get("trace_id"),
    )
    # The manifest is written last and only once: its creation is what wakes feature materialization.
    ctx.store.put_json(f"{base}manifest.json", manifest.to_dict(), if_absent=True)
    ctx.store.put_json(keys.Ledger(dataset, object_id(event)).key, {
        **ledger, "outcome": "validated", "kind": kind, "rows": split.rows_valid,
        "rows_quarantined": split.rows_invalid, "drifted": bool(summary and summary["drifted"]), "at": ctx.timestamp(),
        **({"rows_empty": split.rows_empty} if split.rows_empty else {})})
    ctx.log.info("wrote validate   %s -> data version %s (%d rows valid, %d quarantined%s%s)", event.key,
                 data_version[:12], split.rows_valid, split.rows_invalid,
                 f", {split.rows_empty} empty lines left out" if split.rows_empty else "",
                 "" if summary is None else f", drift share {summary['drifted_share']:.0%}")
    return []


def _quarantine_rows(ctx: Context, event: ObjectCreated, contract: Contract, split: validation.Split,
                     data_version: str) -> None:
    base = keys.Quarantine.prefix(contract.dataset, data_version)
    assert split.invalid_path is not None
    ctx.store.put_file(f"{base}rows.parquet", split.invalid_path)
    ctx.store.put_json(f"{base}report.json", {
        "dataset": contract.dataset,
        "data_version": data_version,
        "stage": "validate",
        "scope": "rows",
        "source": {"bucket": event.bucket, "key": event.key, "etag": event.etag, "version_id": event.version_id},
        "reason": "contract-violation",
        "message": (f"{split.rows_invalid} of {split.rows_total} rows of {event.key} broke the contract and were "
                    f"split out; the other {split.rows_valid} went on."),
        "what_to_do": (f"Inspect them with `sluice quarantine show {contract.dataset} {data_version[:12]}`. Fix the "
                       "contract and run `sluice quarantine replay` to validate them again, or fix the data "
                       "and drop it again."),
        "rows": _counts(split),
        "summary_text": [f.describe() for f in split.summary()],
        "summary": _rules(split),
        "examples": validation.examples(split.examples),
        "example_rows": {str(k): v for k, v in split.example_rows.items()},
        "contract_version": contract.fingerprint(),
        "rows_file": f"{base}rows.parquet",
        "quarantined_at": ctx.timestamp(),
    })


def _drift(ctx: Context, contract: Contract, sample: pl.DataFrame) -> dict[str, Any] | None:
    champion = ModelRegistry(ctx.store, ctx.state).champion(contract.model)
    if champion is None:
        return None
    try:
        run = ctx.store.get_json(champion["run_key"])
        meta = run.get("artifacts", {}).get("profile")
        if meta is None:
            return None
        reference = ctx.store.get_json(meta["key"])
    except IntegrityError as exc:
        # The reference is information, not input: a run document or profile no stage wrote must not refuse
        # every later drop of the dataset. Drift goes unmeasured, so the drop trains and the gate decides.
        ctx.log.error("drift unmeasured %s: the champion's training record cannot be trusted (%s) Run `sluice "
                      "models verify %s`.", contract.dataset, exc, contract.model)
        return None
    return drift.summarize(reference, sample, contract.drift, run["run_id"])


def _should_retrain(contract: Contract, summary: dict[str, Any] | None) -> bool:
    if summary is None:  # no champion yet: nothing to keep, so train whatever the policy
        return True
    if contract.drift.retrain == "always":
        return True
    if contract.drift.retrain == "on_drift":
        return bool(summary["drifted"])
    return False


def _check_target(key: str, split: validation.Split, contract: Contract, *, require_classes: bool) -> None:
    """A table whose target cannot teach anything is bad input, not a training failure."""
    if split.valid_path is None:
        return  # every row is invalid: the invalid-fraction rule reports it
    target = pl.scan_parquet(split.valid_path).select(contract.target)
    stats = target.select(pl.col(contract.target).count().alias("n"),
                          pl.col(contract.target).n_unique().alias("k"),
                          pl.col(contract.target).drop_nulls().first().alias("v")).collect()
    n, k, v = stats["n"][0], stats["k"][0], stats["v"][0]
    if n == 0:
        raise ValidationFailed(f"{key}: target column {contract.target!r} is entirely null.",
                               hint="Fill in the target values and drop the file again.",
                               failures=[Failure(contract.target, "target has values")])
    if require_classes and contract.task != "regression" and k - (1 if n < split.rows_valid else 0) < 2:
        raise ValidationFailed(
            f"{key}: target column {contract.target!r} has a single class ({v!r}); a classifier needs two.",
            hint="Drop a file that contains examples of every class.",
            failures=[Failure(contract.target, "at least two classes", value=v)])


def _counts(split: validation.Split) -> dict[str, int]:
    return {"total": split.rows_total, "valid": split.rows_valid, "quarantined": split.rows_invalid}


def _rules(split: validation.Split) -> list[dict[str, Any]]:
    return [{"column": f.column, "check": f.check, "rows": f.count, "example_row": f.row,
             "example_value": None if f.value is None else clip(f.value)} for f in split.summary()]

