"""Bounded work for any input: bombs end quarantined with the limit they broke, and the worker goes on.

Small bombs, default limits (moto in-process). `benchmarks/bombs.py` runs big ones and prints the peak RSS.
"""

from __future__ import annotations

import gzip
import io
import json

import polars as pl
import pytest

from sluice.core.runtime import Runtime
from sluice.events.s3 import ObjectCreated
from tests.chain import DATASET, sample_bytes


def drop(rt: Runtime, name: str, data: bytes) -> dict[str, object]:
    key = f"incoming/{DATASET}/{name}"
    rt.store.put(key, data)
    info = rt.store.head(key)
    assert info is not None
    return rt.execute("validate", ObjectCreated(rt.settings.bucket, key, info.size, info.etag).to_dict())


def header_and_row() -> tuple[bytes, bytes]:
    lines = sample_bytes().split(b"\n")
    return lines[0], lines[1]


def gzip_bomb(decompressed_mb: int) -> bytes:
    header, row = header_and_row()
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6) as gz:
        gz.write(header + b"\n")
        block = (row + b"\n") * ((1 << 20) // (len(row) + 1))
        for _ in range(decompressed_mb):
            gz.write(block)
    return buffer.getvalue()


def assert_quarantined_for(rt: Runtime, result: dict[str, object], limit: str) -> dict[str, object]:
    assert result["outcome"] == "quarantined", result
    raw = rt.store.get(str(result["report"]))
    report: dict[str, object] = json.loads(raw)
    assert report["reason"] == "limit-exceeded", report
    assert f"limits.{limit}" in str(report["message"]) and f"limits.{limit}" in str(report["what_to_do"])
    assert len(raw) < 20_000  # nothing of the bomb is copied into the report
    [entry] = [json.loads(rt.store.get(k)) for k in rt.store.keys(f"ledger/{DATASET}/")
               if json.loads(rt.store.get(k))["report"] == result["report"]]
    assert entry["outcome"] == "quarantined" and len(json.dumps(entry)) < 5_000
    return report


def test_bombs_are_quarantined_with_the_limit_and_the_worker_goes_on(runtime: Runtime) -> None:
    header, row = header_and_row()
    # A gzip bomb: ~100 MB of rows in well under 1 MB; stopped by the ratio once 64 MiB are out.
    bomb = gzip_bomb(100)
    assert len(bomb) < 1 << 20
    report = assert_quarantined_for(runtime, drop(runtime, "bomb.csv.gz", bomb), "max_compression_ratio")
    assert report["limit"] == {"name": "max_compression_ratio", "value": 100.0,
                               "actual_at_least": report["limit"]["actual_at_least"]}  # type: ignore[index]

    wide = ",".join(f"c{i}" for i in range(5_000)).encode() + b"\n" + b",".join([b"1"] * 5_000) + b"\n"
    assert_quarantined_for(runtime, drop(runtime, "wide.csv", wide), "max_columns")

    cell = b"9" * (5 << 20)
    long_cell = header + b"\n" + row + b"\n" + cell + row[row.index(b","):] + b"\n"
    report = assert_quarantined_for(runtime, drop(runtime, "long-cell.csv", long_cell), "max_cell_bytes")
    assert "line 3 is" in str(report["message"])

    long_header = b"x" * (5 << 20) + b"," + header + b"\n" + row + b"\n"
    assert_quarantined_for(runtime, drop(runtime, "long-header.csv", long_header), "max_header_field_bytes")

    # A long cell the line and field-count checks cannot see: a quoted field of lines that look like rows.
    width = header.count(b",")
    quoted = b'"' + (b"," * width + b"\n") * 20_000 + b'"'
    lines = header + b"\n" + row + b"\n" + row[: row.rindex(b",") + 1] + quoted + b"\n"
    report = assert_quarantined_for(runtime, drop(runtime, "quoted.csv", lines), "max_cell_bytes")
    assert "column 'diagnosis'" in str(report["message"])

    # Parquet: a long string cell, seen in the batch before any rule runs.
    frame = pl.read_csv(io.BytesIO(sample_bytes())).head(3)
    frame = frame.with_columns(pl.Series("diagnosis", ["benign", "malignant", "z" * 300_000]))
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    assert_quarantined_for(runtime, drop(runtime, "long.parquet", buffer.getvalue()), "max_cell_bytes")

    # The same worker validates the next good file.
    assert drop(runtime, "good.csv", sample_bytes())["outcome"] == "done"


def test_a_parquet_bomb_of_dictionary_encoded_columns_is_judged_on_its_decoded_size(runtime: Runtime) -> None:
    """Constant columns encode to a few bytes per page, so the footer's uncompressed sizes are close to the file's:
    the ratio is measured on what the rows decode to (rows x each column's width), before any row is read."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    header, _ = header_and_row()
    names = header.decode().split(",")
    rows = 1_000_000
    constant = pa.array(np.full(rows, 1.5))  # one array for every column: the test holds 8 MB, not 250
    target = pa.array(np.where(np.arange(rows) % 2 == 0, "benign", "malignant"))
    table = pa.table({n: target if n == "diagnosis" else constant for n in names})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=1_000_000)
    bomb = buffer.getvalue()
    meta = pq.ParquetFile(io.BytesIO(bomb)).metadata
    footer = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    assert footer / len(bomb) < 100  # what the footer said: the old check let it through
    report = assert_quarantined_for(runtime, drop(runtime, "pqbomb.parquet", bomb), "max_compression_ratio")
    limit = report["limit"]
    assert isinstance(limit, dict) and limit["name"] == "max_compression_ratio" and limit["value"] == 100.0
    assert limit["decoded_bytes"] >= rows * len(names) * 8 and limit["file_bytes"] == len(bomb)
    assert limit["actual"] > limit["parquet_limit"] == 1_000
    message = str(report["message"])
    assert f"{len(bomb):,} bytes decode to {limit['decoded_bytes']:,}" in message and "1,000,000 rows" in message
    assert "raise `limits.max_compression_ratio`" in str(report["what_to_do"])

    # The same worker takes an ordinary Parquet export of the same columns.
    frame = pl.read_csv(io.BytesIO(sample_bytes()))
    buffer = io.BytesIO()
    frame.to_pandas().to_parquet(buffer, index=False)
    assert drop(runtime, "good.parquet", buffer.getvalue())["outcome"] == "done"


def test_a_contract_raises_a_limit_and_long_values_are_clipped_in_reports(runtime: Runtime) -> None:
    from sluice.ml.contract import contract_key, parse_contract

    contract = parse_contract(runtime.store.get(contract_key(DATASET)))
    _, row = header_and_row()
    bad_value = "q" * 50_000
    data = sample_bytes().rstrip(b"\n") + b"\n" + bad_value.encode() + row[row.index(b","):] + b"\n"
    assert drop(runtime, "a.csv", data)["outcome"] == "quarantined"  # 50 KB cell: under 64 KiB, a type error
    [key] = [k for k in runtime.store.keys("quarantine/") if k.endswith("report.json")]
    report = json.loads(runtime.store.get(key))
    assert report["reason"] == "contract-violation" and len(json.dumps(report)) < 20_000
    assert "(50000 bytes, sha256 " in json.dumps(report)

    tighter = contract.model_copy(update={"limits": contract.limits.model_copy(update={"max_cell_bytes": 1_000})})
    runtime.store.put(contract_key(DATASET), tighter.to_yaml().encode())
    result = drop(runtime, "b.csv", data.replace(b"q", b"r"))
    assert_quarantined_for(runtime, result, "max_cell_bytes")


@pytest.mark.slow
def test_training_learns_from_a_seeded_sample_above_the_training_row_limit(runtime: Runtime) -> None:
    from sluice.ml import runs
    from tests.chain import run_chain, sample_contract

    contract = sample_contract()
    capped = contract.model_copy(update={"limits": contract.limits.model_copy(update={"max_training_rows": 150})})
    runtime.store.put(f"contracts/{DATASET}.yaml", capped.to_yaml().encode())
    run = run_chain(runtime, f"incoming/{DATASET}/a.csv", sample_bytes())  # 569 labelled rows
    assert run["training_rows_limit"] == 150
    assert run["holdout"]["rows"] + run["holdout"]["train_rows"] == 150
    assert runs.reproduce(runtime.store, run)["match"]  # the same sample again


def test_a_drop_that_kills_its_worker_again_and_again_is_dead_lettered_not_run_forever() -> None:
    """Dramatiq redelivers a dead worker's messages without counting a retry: a file that kills its worker (out of
    memory, a native crash) would kill every worker that takes it, forever. Each delivery counts its beginning in
    the state backend and clears it at any end a process lives to see; after MAX_KILLED_ATTEMPTS deaths the
    message is dead-lettered, with the ledger's `failed` outcome saying why, and `sluice deadletter redrive` runs
    it again once fixed."""
    from dataclasses import replace

    import dramatiq
    from dramatiq.brokers.stub import StubBroker
    from moto import mock_aws

    from sluice.core import deadletters
    from sluice.core.runtime import MAX_KILLED_ATTEMPTS, began_key, claim_key
    from sluice.core.settings import Settings
    from sluice.handlers import build_pipeline
    from sluice.infra.online import MemoryOnline
    from sluice.infra.state import MemoryState
    from sluice.service import build_runtime
    from tests.chain import drain, ledger, prepare

    with mock_aws():
        settings = replace(Settings(), bucket="sluice-killer", broker_url="memory://", min_backoff_ms=10)
        prepare(settings)
        broker = StubBroker()
        broker.emit_after("process_boot")
        rt = build_runtime(settings, build_pipeline(), broker=broker, state=MemoryState(), online=MemoryOnline())
        key = f"incoming/{DATASET}/killer.csv"
        rt.store.put(key, sample_bytes())
        info = rt.store.head(key)
        assert info is not None
        event = ObjectCreated(settings.bucket, key, info.size, info.etag, info.version_id)
        rt.dispatch(event)
        [raw] = list(broker.queues[rt.queue_name].queue)
        message = dramatiq.Message.decode(raw)
        began = began_key(claim_key("validate", event), message)
        for _ in range(MAX_KILLED_ATTEMPTS):  # what three deliveries killed with kill -9 leave behind
            rt.state.began(began, 60)

        drain(broker, rt.queue_name)
        [record] = deadletters.records(rt.store)
        entry = ledger(rt.store, key)
        assert entry is not None and entry["outcome"] == "failed", entry
        assert f"began {MAX_KILLED_ATTEMPTS} times before and never finished" in entry["message"]
        assert "deadletter redrive" in entry["what_to_do"]
        assert not list(rt.store.keys("validated/"))  # not run: it would have killed this worker too
        deadletters.redrive(rt, [record["message_id"]])  # a new message: its own count
        drain(broker, rt.queue_name)
        entry = ledger(rt.store, key)
        assert entry is not None and entry["outcome"] == "validated", entry
