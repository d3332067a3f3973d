"""The scale runs' fast generator: every row a valid partner row, every id distinct, the
same file for the same seed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.generate import BLOCK_ROWS, generate_distinct
from shared.fileformat.promotion_rows import ChunkStats, parse_chunk


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(min_value=0, max_value=3_000), seed=st.integers(0, 2**32))
def test_every_row_is_valid_and_every_id_distinct(
    tmp_path_factory: pytest.TempPathFactory, rows: int, seed: int
) -> None:
    path = tmp_path_factory.mktemp("g") / "f.csv"
    generate_distinct(rows, path, seed=seed)
    data = path.read_bytes()
    stats = ChunkStats()
    documents = sum(len(batch) for batch in parse_chunk(data, 0, 10_000, stats))
    assert stats.rows_rejected == 0 and documents == rows == data.count(b"\n")
    ids = [line.split(b",")[0] for line in data.splitlines()]
    assert len(set(ids)) == rows
    assert all(i[14:15] == b"4" and i[19:20] in b"89ab" for i in ids)  # version 4, RFC variant


def test_blocks_join_into_one_file_and_a_seed_repeats_it(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    generate_distinct(BLOCK_ROWS + 7, a, seed=3)
    generate_distinct(BLOCK_ROWS + 7, b, seed=3)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes().count(b"\n") == BLOCK_ROWS + 7
