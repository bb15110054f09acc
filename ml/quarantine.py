"""The quarantine: listing, showing and replaying what validation split out.

    quarantine/<dataset>/<data version>/report.json   why, with counts, top failures and example rows
    quarantine/<dataset>/<data version>/rows.parquet  the invalid rows (raw values, row number, reasons)
    quarantine/<dataset>/<data version>/<file>        a whole file that was refused
    quarantine/<dataset>/<data version>/replays/      one record per replay

A replay drops the quarantined data again under `incoming/<dataset>/replay-…` with object metadata naming the
original data version, so it is validated by the normal chain against the current contract, and the new data
version's lineage points back to the original drop.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import polars as pl

from sluice.core import keys as layout
from sluice.core.errors import SluiceError
from sluice.core.ports import ObjectStore
from sluice.ml.contract import load_contract
from sluice.ml.validation import REASONS, ROW

REPLAY_OF = "sluice-replay-of"
REPLAY_KEY = "sluice-replay-key"


@dataclass(frozen=True)
class Entry:
    """One quarantined file or set of rows."""

    dataset: str
    id: str
    report: dict[str, Any]
    replays: list[dict[str, Any]]

    @property
    def scope(self) -> str:
        """`file` (the whole file was refused) or `rows` (invalid rows were split out)."""
        return str(self.report.get("scope", "file"))


def entries(store: ObjectStore, dataset: str | None = None) -> list[Entry]:
    """Every quarantine entry, oldest first."""
    out = []
    for key in store.keys(layout.Quarantine.prefix(dataset) if dataset else layout.QUARANTINE):
        if key.endswith("/report.json"):
            _, ds, ident, _ = key.split("/", 3)
            replays = [store.get_json(k) for k in store.keys(layout.Quarantine(ds, ident, "replays/").key)]
            out.append(Entry(ds, ident, store.get_json(key), replays))
    return sorted(out, key=lambda e: e.report.get("quarantined_at", ""))


def find(store: ObjectStore, dataset: str, ident: str) -> Entry:
    """The entry whose id starts with `ident` (a data version prefix is enough)."""
    matches = [e for e in entries(store, dataset) if e.id.startswith(ident)]
    if len(matches) != 1:
        known = ", ".join(e.id[:12] for e in entries(store, dataset)) or "none"
        what = "no" if not matches else "more than one"
        raise SluiceError(f"{what} quarantine entry of {dataset!r} starts with {ident!r}; known: {known}")
    return matches[0]


def rows(store: ObjectStore, entry: Entry) -> pl.DataFrame | None:
    """The quarantined rows with their reasons (row-scoped entries only)."""
    key = entry.report.get("rows_file")
    return pl.read_parquet(io.BytesIO(store.get(key))) if key else None


def replay(store: ObjectStore, dataset: str, ident: str | None, at: str) -> list[str]:
    """Drop quarantined data again for validation under the current contract; returns the new incoming keys."""
    contract = load_contract(store, dataset)
    version = contract.fingerprint()[:12]
    targets = [find(store, dataset, ident)] if ident else entries(store, dataset)
    keys = []
    for entry in targets:
        if entry.report.get("stage") != "validate":
            continue
        if any(r["contract_version"] == version for r in entry.replays):
            continue  # already replayed under this contract; the outcome is in the ledger
        original = entry.report["source"]["key"]
        metadata = {REPLAY_OF: entry.id, REPLAY_KEY: original}
        base = layout.Drop(dataset, f"replay-{entry.id[:12]}-{version}").key
        if entry.scope == "rows":
            frame = rows(store, entry)
            assert frame is not None
            buffer = io.BytesIO()
            frame.sort(ROW).drop(ROW, REASONS).write_csv(buffer)
            key = f"{base}.csv"
            store.put(key, buffer.getvalue(), metadata=metadata)
        elif entry.report.get("file"):
            key = f"{base}-{original.rsplit('/', 1)[-1]}"
            store.copy(entry.report["file"], key, metadata=metadata)
        else:
            continue
        store.put_json(layout.Quarantine(dataset, entry.id, f"replays/{version}.json").key,
                       {"contract_version": version, "key": key, "at": at})
        keys.append(key)
    return keys
