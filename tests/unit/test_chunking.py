import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.chunking import (
    MAX_CHUNKS,
    MAX_LINE_BYTES,
    MIN_CHUNK_BYTES,
    TARGET_CHUNKS,
    LineTooLong,
    chunk_size_for,
    plan_chunks,
    read_range,
)

lines = st.lists(
    st.tuples(
        st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
        st.sampled_from([b"\n", b"\r\n"]),
    ),
    max_size=60,
)


def _lines_of(data: bytes) -> list[bytes]:
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    return parts


@settings(max_examples=300)
@given(
    rows=lines,
    trailing=st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")),
    chunk_size=st.integers(1, 200),
)
def test_every_line_lands_in_exactly_one_chunk(
    rows: list[tuple[bytes, bytes]], trailing: bytes, chunk_size: int
) -> None:
    data = b"".join(a + b for a, b in rows) + trailing  # maybe no final newline
    f = io.BytesIO(data)
    chunks = plan_chunks(f, len(data), chunk_size)
    # Contiguous cover of the file, no empty chunk.
    assert [s for s, _ in chunks] == ([0] + [e for _, e in chunks[:-1]] if chunks else [])
    assert (chunks[-1][1] if chunks else 0) == len(data)
    assert all(e > s for s, e in chunks)
    # Each chunk starts right after a newline; lines are never cut.
    assert all(s == 0 or data[s - 1 : s] == b"\n" for s, _ in chunks)
    got = [line for s, e in chunks for line in _lines_of(read_range(f, s, e))]
    assert got == _lines_of(data)


def test_a_line_longer_than_the_chunk_size_makes_a_longer_chunk() -> None:
    data = b"x" * 1000 + b"\nshort\n"
    assert plan_chunks(io.BytesIO(data), len(data), 10) == [(0, 1001), (1001, 1007)]


def test_empty_file_has_no_chunks() -> None:
    assert plan_chunks(io.BytesIO(b""), 0, 10) == []


def test_a_file_without_line_feeds_is_refused_instead_of_read_whole() -> None:
    data = b"a,1,2018-08-04 05:32:31 +0200\r" * (MAX_LINE_BYTES // 20)
    with pytest.raises(LineTooLong, match="CR-only line endings are not supported"):
        plan_chunks(io.BytesIO(data), len(data), 1024)


@given(file_size=st.integers(0, 10**13), configured=st.integers(1, 1 << 30))
def test_chunk_size_spreads_small_files_and_bounds_the_chunk_count(
    file_size: int, configured: int
) -> None:
    size = chunk_size_for(file_size, configured)
    assert size >= 1 and -(-file_size // size) <= MAX_CHUNKS
    if -(-file_size // configured) <= MAX_CHUNKS:
        assert size <= configured
        if file_size >= TARGET_CHUNKS * MIN_CHUNK_BYTES and configured >= MIN_CHUNK_BYTES:
            assert -(-file_size // size) >= min(TARGET_CHUNKS, -(-file_size // configured))


def _winners(data: bytes, chunk_size: int) -> dict[str, bytes]:
    """Per id, the document that "the row nearest the end of the file wins" keeps when the
    file is loaded with this chunk plan (largest ``o`` over every chunk and batch)."""
    import bson

    from shared.fileformat.promotion_rows import ChunkStats, parse_chunk

    best: dict[str, tuple[int, bytes]] = {}
    for start, end in plan_chunks(io.BytesIO(data), len(data), chunk_size):
        for batch in parse_chunk(data[start:end], start, 3, ChunkStats()):
            for key, raw in batch.items():
                order = bson.decode(raw)["o"]
                if key not in best or best[key][0] < order:
                    best[key] = (order, raw)
    return {key: raw for key, (_, raw) in best.items()}


@settings(max_examples=200)
@given(
    picks=st.lists(
        st.tuples(st.sampled_from(["a", "B", "c"]), st.integers(0, 999), st.booleans()),
        min_size=1,
        max_size=40,
    ),
    sizes=st.tuples(st.integers(1, 300), st.integers(1, 300)),
)
def test_the_winning_duplicate_does_not_depend_on_the_chunk_plan(
    picks: list[tuple[str, int, bool]], sizes: tuple[int, int]
) -> None:
    """Two plans of one file (a redelivered plan under another chunk size) must agree on
    which of several rows with the same id wins: the one nearest the end of the file."""
    rows = [
        f"{row_id},{price}.5,2018-08-04 05:32:31 +0200 CEST{' ' * long}\n"
        for row_id, price, long in picks
    ]
    data = "".join(rows).encode()
    first, second = _winners(data, sizes[0]), _winners(data, sizes[1])
    assert first == second
    last_price = {row_id.lower(): price for row_id, price, _ in picks}
    import bson

    assert {k: bson.decode(v)["price"] for k, v in first.items()} == {
        k: p + 0.5 for k, p in last_price.items()
    }


# --- Exact plans: the sentences of behaviour the chunk planner promises ---------------------

MiB = 1024 * 1024
GiB = 1024 * MiB
THREE_LINES = b"aaaa\nbbbb\ncccc\n"  # lines start at bytes 0, 5 and 10


def _plan(data: bytes, chunk_size: int) -> list[tuple[int, int]]:
    return plan_chunks(io.BytesIO(data), len(data), chunk_size)


def test_a_boundary_exactly_on_a_line_start_does_not_grow_the_chunk() -> None:
    """Byte 5 starts a line: the chunk ends there, not at the next line's end."""
    assert _plan(THREE_LINES, 5) == [(0, 5), (5, 10), (10, 15)]


def test_a_boundary_inside_a_line_extends_the_chunk_to_the_end_of_that_line() -> None:
    assert _plan(THREE_LINES, 3) == [(0, 5), (5, 10), (10, 15)]
    assert _plan(THREE_LINES, 6) == [(0, 10), (10, 15)]
    assert _plan(THREE_LINES, 10) == [(0, 10), (10, 15)]


def test_a_chunk_size_of_the_whole_file_or_more_is_one_chunk() -> None:
    assert _plan(THREE_LINES, 15) == [(0, 15)]
    assert _plan(THREE_LINES, 1000) == [(0, 15)]


def test_the_last_line_without_a_line_feed_ends_the_last_chunk() -> None:
    assert _plan(b"aaaa\nbb", 2) == [(0, 5), (5, 7)]
    assert _plan(b"aaaa\nbb", 5) == [(0, 5), (5, 7)]


def test_crlf_lines_split_after_the_lf() -> None:
    assert _plan(b"ab\r\ncd\r\n", 2) == [(0, 4), (4, 8)]


def test_a_chunk_size_of_one_byte_gives_one_chunk_per_line() -> None:
    assert _plan(b"a\nb\nc\n", 1) == [(0, 2), (2, 4), (4, 6)]


@pytest.mark.parametrize("chunk_size", [0, -1])
def test_a_chunk_size_below_one_byte_is_refused(chunk_size: int) -> None:
    with pytest.raises(ValueError, match=r"^chunk_size must be positive$"):
        _plan(THREE_LINES, chunk_size)


class BlockReads(io.BytesIO):
    """Fails a read without a bound, or of more than 64 KiB."""

    def read(self, size: int | None = -1, /) -> bytes:
        assert size is not None and 0 <= size <= 64 * 1024, f"read({size})"
        return super().read(size)


def test_finding_a_boundary_reads_64_kib_blocks_never_the_rest_of_the_file() -> None:
    """A boundary in a 100 GB file costs a small read, not the file."""
    data = b"x" * 200_000 + b"\n" + b"tail\n"
    assert plan_chunks(BlockReads(data), len(data), 10) == [(0, 200_001), (200_001, 200_006)]


def test_a_short_line_far_into_a_large_file_is_not_mistaken_for_a_long_one(
    tmp_path: Path,
) -> None:
    """The 64 MiB line bound counts from the chunk's nominal end, not from the file start:
    a boundary 40 MiB into a sparse 80 MiB file whose line ends 100 KiB later is fine."""
    path = tmp_path / "sparse.csv"
    lf_at = 40 * MiB + 100 * 1024
    with path.open("wb") as f:
        f.truncate(80 * MiB)
        f.seek(lf_at)
        f.write(b"\n")
    with path.open("rb") as f:
        assert plan_chunks(f, 80 * MiB, 40 * MiB) == [(0, lf_at + 1), (lf_at + 1, 80 * MiB)]


def test_a_line_may_run_64_mib_past_the_boundary_but_not_further(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    with path.open("wb") as f:
        f.truncate(70 * MiB)
        f.seek(1 + 64 * MiB - 1)  # the LF in the last byte a chunk may grow to
        f.write(b"\n")
    with path.open("rb") as f:
        assert plan_chunks(f, 70 * MiB, 1) == [(0, 64 * MiB + 1), (64 * MiB + 1, 70 * MiB)]
    path.write_bytes(b"")
    with path.open("wb") as f:
        f.truncate(70 * MiB)  # no LF at all
    with (
        path.open("rb") as f,
        pytest.raises(LineTooLong, match=r"no line break \(LF\) in the 64 MiB after byte 1;"),
    ):
        plan_chunks(f, 70 * MiB, 1)


# Sizing: (file size, configured chunk size) -> chunk size, and how many chunks that makes.
@pytest.mark.parametrize(
    ("file_size", "configured", "size", "rule"),
    [
        # Spread over at least TARGET_CHUNKS = 64 chunks: file size // 64 ...
        (1 * GiB, 32 * MiB, 16 * MiB, "a 1 GiB file is spread over 64 chunks of 16 MiB"),
        (128 * MiB + 63, 32 * MiB, 2 * MiB, "the spread rounds down (whole bytes)"),
        # ... but never more than the configured size ...
        (10 * GiB, 32 * MiB, 32 * MiB, "a large file uses the configured size"),
        (2 * GiB, 32 * MiB, 32 * MiB, "64 chunks of exactly the configured size"),
        # ... and no chunk below MIN_CHUNK_BYTES = 1 MiB ...
        (10 * MiB, 32 * MiB, 1 * MiB, "a 10 MiB file gets 1 MiB chunks, not 64 of 160 KiB"),
        (100, 32 * MiB, 1 * MiB, "a tiny file: one chunk of the 1 MiB floor"),
        (0, 32 * MiB, 1 * MiB, "an empty file: the floor"),
        # ... unless the configured size itself is below it (tests, small deployments).
        (10 * MiB, 64 * 1024, 64 * 1024, "a configured size below the floor is kept"),
        # MAX_CHUNKS = 100,000 caps the count whatever is configured (rounding up).
        (10**12, 1 * MiB, 10_000_000, "1 TB at 1 MiB would be 953,675 chunks: capped"),
        (10**12 + 1, 1 * MiB, 10_000_001, "the cap rounds the size up, never the count"),
        # Whatever is configured, a chunk is at least one byte.
        (0, 0, 1, "configured 0: one byte"),
    ],
)
def test_chunk_sizing_examples(file_size: int, configured: int, size: int, rule: str) -> None:
    got = chunk_size_for(file_size, configured)
    assert (got, type(got)) == (size, int), rule


def test_sizing_constants() -> None:
    """The rules above by name: changing one is a decision, not an accident."""
    rules = {
        "TARGET_CHUNKS": 64,
        "MIN_CHUNK_BYTES": 1 * MiB,
        "MAX_CHUNKS": 100_000,
        "MAX_LINE_BYTES": 64 * MiB,
    }
    assert {name: globals()[name] for name in rules} == rules
