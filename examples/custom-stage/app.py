"""custom-stage: the built-in Sluice chain, plus a stage and a check of our own.

    sluice up --app app:app          # provisions one bucket notification per stage, ours included
    sluice worker --app app:app      # runs them all (pyproject.toml's [tool.sluice] app makes --app optional)
"""

from __future__ import annotations

import io

import polars as pl

import sluice
from sluice import App, NewObject
from sluice.core.context import Context
from sluice.core.errors import UnreadableFile
from sluice.events.s3 import ObjectCreated

app = App("custom-stage")
app.include(sluice.builtin)  # validate, features, train, benchmark, register: woken by incoming/<dataset>/...


@app.on_object_created(prefix="exports/", suffix=".jsonl")
def export_to_csv(event: ObjectCreated, ctx: Context) -> list[NewObject]:
    """A partner system writes JSON lines to exports/<dataset>/; each file becomes a CSV under incoming/<dataset>/,
    which the built-in chain then validates, trains on and promotes."""
    _, dataset, name = event.key.split("/", 2)
    try:
        frame = pl.read_ndjson(io.BytesIO(ctx.store.get(event.key, event.version_id)))
    except pl.exceptions.PolarsError as exc:  # bad input: quarantined with this message, never retried
        raise UnreadableFile(f"{event.key}: not JSON lines ({exc})", hint="Fix the export and write it again.") from exc
    out = io.BytesIO()
    frame.write_csv(out)
    # Returned, not written: the runtime writes it (recorded as this stage's output, so a redelivery is a no-op).
    return [NewObject(f"incoming/{dataset}/{name.removesuffix('.jsonl')}.csv", out.getvalue())]


@app.check()
def positive(col: pl.Expr) -> pl.Expr:
    """Strictly above zero (a contract's `min` is inclusive). In contract.yaml: `checks: [positive]`."""
    return col > 0
