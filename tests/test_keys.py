"""Every key kind of the bucket layout (core/keys.py) reads back what built it, for any name the contract allows."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.core import keys
from sluice.ml.contract import NAME

# Dataset and model names exactly as the contract allows them (ml/contract.py's NAME), awkward ones included.
names = st.from_regex(NAME, fullmatch=True)
# Versions and ids: no slash, anything else (hashes, timestamps, dots, dashes, unicode).
segments = st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1, max_size=40)
# A dropped file's name may hold folders.
dropped = st.lists(segments, min_size=1, max_size=3).map("/".join)
files = st.one_of(st.sampled_from([keys.MANIFEST, keys.DATA, keys.RUN, "progress.json", "report.json"]), dropped)

KINDS = {
    "contract": st.builds(keys.Contract, names),
    "drop": st.builds(keys.Drop, names, dropped, st.booleans()),
    "ledger": st.builds(keys.Ledger, names, segments),
    "validated": st.builds(keys.Validated, names, segments, files, labels=st.booleans()),
    "features": st.builds(keys.FeatureSet, names, segments, files),
    "run": st.builds(keys.Run, names, segments, files),
    "candidate": st.builds(keys.Candidate, names, segments),
    "backtest": st.builds(keys.Backtest, names, segments),
    "quarantine": st.builds(keys.Quarantine, names, segments, files),
    "refused": st.builds(keys.Refused, names, segments),
    "published": st.builds(keys.Published, names, segments),
    "deadletter": st.builds(keys.DeadLetter, st.from_regex(r"[a-z0-9_-]+\.[a-z0-9_-]+", fullmatch=True), segments),
    "span": st.builds(keys.Span, st.from_regex(r"[0-9a-f]{32}", fullmatch=True), segments),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_build_then_parse_round_trips(kind: str) -> None:
    @given(KINDS[kind])
    def check(value: object) -> None:
        key = value.key  # type: ignore[attr-defined]
        assert type(value).parse(key) == value  # type: ignore[attr-defined]
        assert keys.dataset_of(key) == (key.split("/")[1] if kind != "contract" else "_unknown")

    check()


@given(names, segments, files)
def test_a_key_is_listed_under_its_prefix(dataset: str, version: str, file: str) -> None:
    assert keys.Run(dataset, version, file).key.startswith(keys.Run.prefix(dataset, version))
    assert keys.Run.prefix(dataset, version).startswith(keys.Run.prefix(dataset))
    assert keys.FeatureSet(dataset, version, file).key.startswith(keys.FeatureSet.prefix(dataset))
    labels = keys.Validated(dataset, version, file, labels=True)
    assert labels.key.startswith(keys.VALIDATED_LABELS) and not labels.key.startswith(keys.VALIDATED)


def test_a_key_of_another_kind_or_shape_is_refused() -> None:
    for parse, key in [(keys.Run.parse, "features/shop/fs1/manifest.json"),
                       (keys.Run.parse, "runs/shop/"),
                       (keys.Run.parse, "runs//r1/run.json"),
                       (keys.Candidate.parse, "registry/shop/versions/3.json"),
                       (keys.Ledger.parse, "ledger/shop/a/b.json"),
                       (keys.Contract.parse, "contracts/shop.yml"),
                       (keys.Drop.parse, "incoming/shop/")]:
        with pytest.raises(ValueError, match=re.escape(repr(key))):
            parse(key)


def test_a_name_with_a_slash_cannot_build_a_key() -> None:
    with pytest.raises(ValueError, match="without '/'"):
        _ = keys.Run("shop/evil", "r1").key
