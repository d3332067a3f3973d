"""Last row wins whatever order chunks load in, and redelivered chunks change nothing."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest

from cli.generate import generate
from shared.chunking import plan_chunks, read_range
from shared.promotion_rows import ChunkStats, parse_chunk
from tests.helpers import expected_rows
from worker.chunk_writer import write_batch

pytestmark = pytest.mark.usefixtures("clean_state")


def _load_chunks(coll: Any, data: bytes, order: list[tuple[int, int]]) -> None:
    f = io.BytesIO(data)
    for start, end in order:
        for batch in parse_chunk(read_range(f, start, end), start, 500, ChunkStats()):
            write_batch(coll, list(batch.values()))


def _stored(coll: Any) -> dict[str, tuple[str, float, str]]:
    return {
        d["_id"]: (d.get("id", d["_id"]), d["price"], d["expiration_date"])
        for d in coll.find({}, {"o": 0})
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chunks_in_any_order_and_redelivered_give_the_last_row_per_id(
    mongo_db: Any, tmp_path: Path, seed: int
) -> None:
    path = tmp_path / "dups.csv"
    generate(6_000, path, seed=seed, duplicate_ratio=0.4)
    data = path.read_bytes()
    chunks = plan_chunks(io.BytesIO(data), len(data), 16 * 1024)
    assert len(chunks) > 10
    order = chunks[::-1] if seed == 1 else random.Random(seed).sample(chunks, len(chunks))
    redelivered = random.Random(seed).sample(chunks, 3)  # late acks: some arrive twice
    coll = mongo_db[f"order_test_{seed}"]
    _load_chunks(coll, data, order + redelivered)
    want = expected_rows(path)
    assert len(want) < 6_000 - 1_000  # many ids repeat, across chunk boundaries too
    assert _stored(coll) == want


def test_write_batch_reports_rows_that_met_an_existing_id(mongo_db: Any, tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    generate(1_000, path, seed=9)
    data = path.read_bytes()
    coll = mongo_db["conflict_count"]
    (batch,) = parse_chunk(data, 0, 5_000, ChunkStats())
    assert write_batch(coll, list(batch.values())) == 0  # every row a new document
    assert write_batch(coll, list(batch.values())) == 1_000  # a redelivery: all met
    assert coll.count_documents({}) == 1_000
