"""A bucket with something to look at: two chain runs (the second with rows quarantined) and an unreadable drop."""

from __future__ import annotations

from typing import Any

from sluice.core.runtime import Runtime
from sluice.events.s3 import ObjectCreated
from tests.chain import DATASET, run_chain, sample_contract
from tests.test_training import parts

BAD_KEY = f"incoming/{DATASET}/bad.csv"


def with_a_bad_row(data: bytes) -> bytes:
    """The CSV with `mean_texture` of its first row set below the contract's minimum."""
    lines = data.decode().splitlines()
    column = lines[0].split(",").index("mean_texture")
    first = lines[1].split(",")
    first[column] = "-5"
    lines[1] = ",".join(first)
    return ("\n".join(lines) + "\n").encode()


def populate(rt: Runtime) -> dict[str, Any]:
    """Run the chain twice and drop an unreadable file; returns both runs."""
    lenient = sample_contract().model_copy(update={"max_invalid_fraction": 0.2})
    rt.store.put(f"contracts/{DATASET}.yaml", lenient.to_yaml().encode())
    a, b = parts(2)
    first = run_chain(rt, f"incoming/{DATASET}/a.csv", a)
    second = run_chain(rt, f"incoming/{DATASET}/b.csv", with_a_bad_row(b))
    rt.store.put(BAD_KEY, b"mean_radius;diagnosis\n1;benign\n")
    info = rt.store.head(BAD_KEY)
    assert info is not None
    rt.execute("validate", ObjectCreated(rt.settings.bucket, BAD_KEY, info.size, info.etag).to_dict())
    return {"runs": [first, second]}
