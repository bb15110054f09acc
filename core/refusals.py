"""Refusals: events a stage would not act on (an IntegrityError), recorded under `refused/<dataset>/<id>.json`.

A refusal is never retried on its own. Once an operator has restored what was changed (or found the document
was the stage's own after all), `redrive` forgets the stage's completed claim and sends the event again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sluice.core import keys
from sluice.core.errors import SluiceError
from sluice.events.s3 import ObjectCreated

if TYPE_CHECKING:
    from sluice.core.ports import ObjectStore
    from sluice.core.runtime import Runtime


def refusals(store: ObjectStore) -> list[tuple[str, dict[str, Any]]]:
    """(key, record) of every refusal, oldest first."""
    out = [(k, store.get_json(k)) for k in store.keys(keys.REFUSED) if k.endswith(".json")]
    return sorted(out, key=lambda kv: str(kv[1].get("at")))


def find(store: ObjectStore, ident: str) -> tuple[str, dict[str, Any]]:
    """The refusal whose id starts with `ident`."""
    matches = [(k, r) for k, r in refusals(store) if str(r.get("id", "")).startswith(ident)]
    if len(matches) != 1:
        raise SluiceError(f"{'no' if not matches else 'more than one'} refusal matches {ident!r}; list them with "
                          "`sluice refused list`")
    return matches[0]


def redrive(runtime: Runtime, key: str, record: dict[str, Any], *, by: str, at: str) -> ObjectCreated:
    """Send a refused event to its stage again, and note on the record who did and when."""
    event = ObjectCreated.from_dict(record["event"])
    if record.get("stage") not in runtime.actors:
        raise SluiceError(f"refusal {record.get('id')} is of stage {record.get('stage')!r}, which this app does not "
                          f"run (stages: {', '.join(sorted(runtime.actors))}); pass the app that refused it (--app)")
    # Noted before sending: a worker that refuses it again rewrites the record, and that one must stay open.
    runtime.store.put_json(key, {**record, "redriven": [*record.get("redriven", []), {"by": by, "at": at}]})
    runtime.state.forget(f"{record['stage']}#{event.idempotency_key}")
    runtime.actors[record["stage"]].send(event.to_dict())
    return event
