"""The shuffle's duplicate rule: the row nearest the end of the file wins, whatever the
chunk plan, the order map tasks run in, how often they are redelivered and whether a
partition is merged in memory or externally; and a partition holds every row of its
buckets and no other. Real run files, no store
(tests/integration/test_shuffle.py runs the same through the store and Celery)."""

from __future__ import annotations

import io
import itertools
import random
import tempfile
from pathlib import Path

import bson
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.fileformat import bucket_layout
from shared.fileformat.promotion_rows import ChunkStats, parse_chunk_rows
from shared.settings import Settings
from worker import job_steps, shuffle_files
from worker.bucket_writer import insert_batches
from worker.chunking import plan_chunks, read_range
from worker.external_merge import Counts

DATE = "2018-08-04 05:32:31 +0200 CEST"


def shuffle(
    data: bytes, chunk_size: int, slices: int, bound: int, seed: int, rows_per_bucket: int = 3
) -> tuple[dict[str, tuple[str, float]], int, int]:
    """Map every chunk (shuffled order, some twice), lay out the reduce side from the
    exact counts, reduce every partition (in memory, or by the external merge where a
    partition passes ``bound``): the rows stored by key, distinct rows and duplicates as
    the map and partition tasks count them."""
    chunks = plan_chunks(io.BytesIO(data), len(data), chunk_size)
    order = list(enumerate(chunks))
    rng = random.Random(seed)
    rng.shuffle(order)
    order += rng.sample(order, min(2, len(order)))  # late acks: redeliveries
    settings = Settings(rows_per_partition=1000).model_copy(
        update={"rows_per_partition": bound, "shuffle_slices": slices}
    )
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        settings = settings.model_copy(update={"data_dir": runs})
        counts: dict[int, list[int]] = {}
        map_duplicates: dict[int, int] = {}
        for index, (start, end) in order:
            keys, elements = parse_chunk_rows(
                read_range(io.BytesIO(data), start, end), start, ChunkStats()
            )
            kept = shuffle_files.keep_last(keys, elements)
            map_duplicates[index] = len(keys) - len(kept[0])
            counts[index] = shuffle_files.write_chunk_runs(
                settings.runs_dir, "job", index, *kept, slices
            )
        per_slice = [sum(c[s] for c in counts.values()) for s in range(slices)]
        buckets = bucket_layout.buckets_for(sum(per_slice), rows_per_bucket, slices)
        group = bucket_layout.group_slices(buckets, slices)
        bounds = bucket_layout.coalesce(per_slice, group, bound)
        job = {"_id": "job", "buckets": buckets, "chunks_total": len(chunks), "slices": slices}
        stored: dict[str, tuple[str, float]] = {}
        rows, duplicates = 0, sum(map_duplicates.values())
        for partition, (first, end) in enumerate(itertools.pairwise(bounds)):
            tally = Counts()
            documents = list(
                job_steps.partition_documents(settings, job, partition, first, end, tally)
            )
            rows += tally.rows
            duplicates += tally.duplicates
            assert sum(n for n, _ in documents) == tally.rows
            ids = [bson.decode(doc)["_id"] for _, doc in documents]
            assert ids == sorted(set(ids))  # one document per bucket: a second would be lost
            for count, batch in insert_batches(documents, 7):
                assert count == sum(len(bson.decode(doc)["r"]) for doc in batch)
                for raw in batch:
                    doc = bson.decode(raw)
                    for key, row in doc["r"].items():
                        assert bucket_layout.bucket_of(key, buckets) == doc["_id"]
                        assert key not in stored  # one bucket, one partition per id
                        found = bucket_layout.row_of(key, row)
                        stored[key] = (found["id"], found["price"])
        assert not list(runs.rglob("*.spill"))  # the external merge's runs are gone
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
    st.sampled_from([1, 2, 8, 64]),
    st.data(),
)
def test_the_last_row_of_each_id_wins_for_any_plan_and_delivery_order(
    ids: list[str], chunk_size: int, slices: int, data: st.DataObject
) -> None:
    lines = [f"{rid},{n}.5,{DATE}" for n, rid in enumerate(ids)]
    if data.draw(st.booleans()):  # a rejected line in the middle changes nothing
        lines.insert(len(lines) // 2, "bad line")
    file = "".join(f"{line}\n" for line in lines).encode()
    stored, rows, duplicates = shuffle(
        file,
        chunk_size,
        slices,
        data.draw(st.integers(1, 30)),  # small bounds: external merges too
        data.draw(st.integers(0, 99)),
        data.draw(st.integers(1, 5)),
    )
    valid = [line for line in lines if line != "bad line"]
    want = expected(valid)
    assert stored == want
    assert rows == len(want) and duplicates == len(valid) - len(want)


def test_two_chunk_plans_of_one_file_store_the_same_rows() -> None:
    rng = random.Random(5)
    lines = [f"{rng.choice(['x', 'X', 'y'])}{rng.randrange(300)},{i},{DATE}" for i in range(3000)]
    file = "".join(f"{line}\n" for line in lines).encode()
    small = shuffle(file, 1_000, 64, 40, 1)
    large = shuffle(file, 50_000, 16, 300, 2, rows_per_bucket=50)
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
