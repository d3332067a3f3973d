import io

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.chunking import plan_chunks, read_range

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
    import pytest

    from shared.chunking import MAX_LINE_BYTES, LineTooLong

    data = b"a,1,2018-08-04 05:32:31 +0200\r" * (MAX_LINE_BYTES // 20)
    with pytest.raises(LineTooLong, match="CR-only line endings are not supported"):
        plan_chunks(io.BytesIO(data), len(data), 1024)


@given(file_size=st.integers(0, 10**13), configured=st.integers(1, 1 << 30))
def test_chunk_size_spreads_small_files_and_bounds_the_chunk_count(
    file_size: int, configured: int
) -> None:
    from shared.chunking import MAX_CHUNKS, MIN_CHUNK_BYTES, TARGET_CHUNKS, chunk_size_for

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

    from shared.promotion_rows import ChunkStats, parse_chunk

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
