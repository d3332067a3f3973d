"""The shuffle's duplicate rule: the row nearest the end of the file wins, whatever the
chunk plan, the order map tasks run in and how often they are redelivered; and a partition
holds every row of its buckets and no other. Real run files, no store
(tests/integration/test_shuffle.py runs the same through the store and Celery)."""

from __future__ import annotations

import io
import random
import tempfile
from pathlib import Path

import bson
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import bucket_layout
from shared.chunking import plan_chunks, read_range
from shared.promotion_rows import ChunkStats, parse_chunk_rows
from worker import shuffle_files
from worker.bucket_writer import insert_batches, merge

DATE = "2018-08-04 05:32:31 +0200 CEST"


def shuffle(
    data: bytes, chunk_size: int, buckets: int, partitions: int, seed: int
) -> tuple[dict[str, tuple[str, float]], int, int]:
    """Map every chunk (shuffled order, some twice), reduce every partition: the rows
    stored by key, distinct rows and duplicates as the partition tasks count them."""
    chunks = plan_chunks(io.BytesIO(data), len(data), chunk_size)
    order = list(enumerate(chunks))
    rng = random.Random(seed)
    rng.shuffle(order)
    order += rng.sample(order, min(2, len(order)))  # late acks: redeliveries
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        for index, (start, end) in order:
            keys, elements = parse_chunk_rows(
                read_range(io.BytesIO(data), start, end), start, ChunkStats()
            )
            shuffle_files.write_chunk_runs(runs, "job", index, keys, elements, buckets, partitions)
        stored: dict[str, tuple[str, float]] = {}
        rows = duplicates = 0
        for partition in range(partitions):
            merged = merge(
                shuffle_files.read_partition(runs, "job", len(chunks), partition, partitions)
            )
            rows += merged.rows
            duplicates += merged.duplicates
            assert sum(n for n, _ in merged.documents) == merged.rows
            ids = [bson.decode(doc)["_id"] for _, doc in merged.documents]
            assert ids == sorted(set(ids))  # one document per bucket: a second would be lost
            for count, batch in insert_batches(merged.documents, 7):
                assert count == sum(len(bson.decode(doc)["r"]) for doc in batch)
                for raw in batch:
                    doc = bson.decode(raw)
                    assert doc["_id"] in bucket_layout.bucket_range(partition, buckets, partitions)
                    for key, row in doc["r"].items():
                        assert bucket_layout.bucket_of(key, buckets) == doc["_id"]
                        assert key not in stored  # one bucket, one partition per id
                        stored[key] = (row.get("i", key), row["p"])
    return stored, rows, duplicates


def expected(lines: list[str]) -> dict[str, tuple[str, float]]:
    out: dict[str, tuple[str, float]] = {}
    for line in lines:
        row_id, price, _ = line.split(",")
        out[row_id.lower()] = (row_id, float(price))
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(["a", "A", "b", "c", "Dd", "dD", "e1", "f_2", "G-3"]),
        min_size=1,
        max_size=80,
    ),
    st.integers(1, 200),
    st.integers(1, 40),
    st.data(),
)
def test_the_last_row_of_each_id_wins_for_any_plan_and_delivery_order(
    ids: list[str], chunk_size: int, buckets: int, data: st.DataObject
) -> None:
    lines = [f"{rid},{n}.5,{DATE}" for n, rid in enumerate(ids)]
    if data.draw(st.booleans()):  # a rejected line in the middle changes nothing
        lines.insert(len(lines) // 2, "bad line")
    file = "".join(f"{line}\n" for line in lines).encode()
    partitions = data.draw(st.integers(1, buckets))
    stored, rows, duplicates = shuffle(
        file, chunk_size, buckets, partitions, data.draw(st.integers(0, 99))
    )
    valid = [line for line in lines if line != "bad line"]
    want = expected(valid)
    assert stored == want
    assert rows == len(want) and duplicates == len(valid) - len(want)


def test_two_chunk_plans_of_one_file_store_the_same_rows() -> None:
    rng = random.Random(5)
    lines = [f"{rng.choice(['x', 'X', 'y'])}{rng.randrange(300)},{i},{DATE}" for i in range(3000)]
    file = "".join(f"{line}\n" for line in lines).encode()
    small = shuffle(file, 1_000, 40, 5, 1)
    large = shuffle(file, 50_000, 40, 3, 2)
    assert small == large
    assert small[0] == expected(lines)


def test_inserts_hold_about_batch_rows_each() -> None:
    documents = [(1, bytes([n])) for n in range(7)]
    batches = list(insert_batches(documents, 2))
    assert batches == [
        (2, [b"\x00", b"\x01"]),
        (2, [b"\x02", b"\x03"]),
        (2, [b"\x04", b"\x05"]),
        (1, [b"\x06"]),
    ]
    assert list(insert_batches([(5, b"a"), (1, b"b")], 3)) == [(5, [b"a"]), (1, [b"b"])]
