"""The bucketed layout's arithmetic: one definition of an id's bucket for every process and
release, the shuffle's slices and the reduce tasks made of them, buckets that stay small."""

from __future__ import annotations

import itertools

import bson
from hypothesis import given
from hypothesis import strategies as st

from shared.fileformat import bucket_layout as layout


def test_an_ids_bucket_is_pinned_across_releases() -> None:
    """XXH3-64 of the lower-cased id, seed 0: a changed function would make every reader
    look in the wrong bucket of versions written before it."""
    # XXH3-64 of the empty input is the specification's own test vector.
    assert layout.bucket_of("", 2**64 - 1) == 0x2D06800538D394C2 % (2**64 - 1)
    assert layout.bucket_of("172ffc14-d229-4c93-b06b-f48b8c095512", 1_000_003) == 364_416
    assert layout.bucket_of("a", 2**31 - 1) == 1_814_213_518
    assert layout.buckets_of([b"a", b"b"], 7) == [
        layout.bucket_of("a", 7),
        layout.bucket_of("b", 7),
    ]


@given(
    st.sampled_from([1, 2, 4, 16, 64, 4096]),
    st.integers(0, 10**7),
    st.integers(1, 200),
    st.lists(st.from_regex(r"[a-z0-9_-]{1,20}", fullmatch=True), max_size=50),
)
def test_every_bucket_lies_in_one_group_of_consecutive_slices(
    slices: int, rows: int, rows_per_bucket: int, keys: list[str]
) -> None:
    """What lets the reduce side be sized after the map: whatever bucket count the real
    row count gives, all rows of a bucket are in one group of consecutive slices, and
    readers keep ``bucket = h mod B``."""
    buckets = layout.buckets_for(rows, rows_per_bucket, slices)
    assert 1 <= buckets <= layout.MAX_BUCKETS
    assert buckets % slices == 0 or slices % buckets == 0
    if rows:  # about rows_per_bucket rows each, never more
        assert rows <= buckets * rows_per_bucket
        assert buckets <= max(1, 2 * rows // rows_per_bucket, slices) or buckets < 2 * slices
    group = layout.group_slices(buckets, slices)
    encoded = [k.encode() for k in keys]
    groups_of_bucket: dict[int, set[int]] = {}
    for number, bucket in zip(
        layout.slices_of(encoded, slices), layout.buckets_of(encoded, buckets), strict=True
    ):
        groups_of_bucket.setdefault(bucket, set()).add(number // group)
    assert all(len(g) == 1 for g in groups_of_bucket.values())


@given(st.lists(st.integers(0, 50), min_size=1, max_size=64), st.data())
def test_reduce_tasks_cover_every_slice_once_in_whole_groups_within_the_bound(
    counts: list[int], data: st.DataObject
) -> None:
    size = 1 << (len(counts).bit_length() - 1)
    counts = counts[:size]
    group = data.draw(st.sampled_from([g for g in (1, 2, 4, 8) if size % g == 0]))
    bound = data.draw(st.integers(1, 120))
    bounds = layout.coalesce(counts, group, bound)
    assert bounds[0] == 0 and bounds[-1] == size and bounds == sorted(set(bounds))
    for first, end in itertools.pairwise(bounds):
        assert first % group == 0
        rows = sum(counts[first:end])
        # Over the bound only as one group alone (the external merge's case), with at
        # most empty groups beside it.
        largest = max(sum(counts[g : g + group]) for g in range(first, end, group))
        assert rows <= bound or rows == largest
        if end < size:  # greedy: the next group did not fit as well
            assert rows + sum(counts[end : end + group]) > bound


def test_slices_are_the_bit_reversed_hash() -> None:
    assert layout.reversal(8) == [0, 4, 2, 6, 1, 5, 3, 7]
    assert layout.reversal(1) == [0]
    assert layout.slices_of([b"a"], 8) == [layout.reversal(8)[layout.bucket_of("a", 8)]]


@given(st.integers(0, 10**13), st.floats(1, 2000), st.integers(1, 10_000))
def test_a_bucket_never_holds_more_than_the_cap_even_if_every_line_were_minimal(
    file_size: int, mean_line: float, rows_per_bucket: int
) -> None:
    buckets = layout.bucket_count(file_size, mean_line, rows_per_bucket)
    assert isinstance(buckets, int) and 1 <= buckets <= layout.MAX_BUCKETS
    most_rows = file_size // layout.MIN_LINE_BYTES
    if buckets < layout.MAX_BUCKETS:
        assert most_rows <= buckets * layout.MAX_BUCKET_ROWS
        # ... and about rows_per_bucket rows each by the estimate.
        assert file_size / mean_line <= buckets * rows_per_bucket + rows_per_bucket


def test_a_billion_row_file_gets_ten_million_buckets_and_small_files_few() -> None:
    assert layout.buckets_for(1_000_000_000, 100, 4096) == 10_002_432  # 2442 x 4096
    assert layout.buckets_for(200_000, 100, 4096) == 2048  # a power of two below 4096
    assert layout.buckets_for(0, 100, 4096) == 1
    assert layout.buckets_for(100, 100, 4096) == 1  # a tiny file: one bucket
    assert layout.bucket_count(100, 50, 100) == 1  # rows written without the shuffle


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
            st.floats(0, 1e300),
            st.from_regex(r"20[0-9]{2}-0[1-9]-1[0-9] 0[0-9]:00:00( \+0200 CEST)?", fullmatch=True),
        ),
        max_size=30,
        unique_by=lambda row: row[0].lower(),
    )
)
def test_a_bucket_document_reads_back_as_the_rows_as_written(
    rows: list[tuple[str, float, str]],
) -> None:
    elements = [
        layout.encode_element(rid.lower().encode(), rid.encode(), price, date.encode())
        for rid, price, date in rows
    ]
    doc = bson.decode(layout.bucket_document(42, elements))
    assert doc["_id"] == 42
    found = layout.rows_found([doc])
    assert found == {
        rid.lower(): {"id": rid, "price": price, "expiration_date": date}
        for rid, price, date in rows
    }
    for rid, _, date in rows:  # the id as written is kept only where it differs
        packed = doc["r"][rid.lower()]
        assert isinstance(packed, bytes)
        assert len(packed) == layout.ROW_PREFIX_BYTES + (rid != rid.lower()) * len(rid) + len(date)


def test_rows_written_before_packing_read_as_before() -> None:
    """Versions loaded by earlier releases hold ``{p, e, [i]}`` subdocuments: rollback."""
    doc = {
        "_id": 1,
        "r": {"ab": {"p": 1.5, "e": "2022-06-04 06:01:20", "i": "AB"}, "c": {"p": 2.0, "e": "x"}},
    }
    assert layout.rows_found([doc]) == {
        "ab": {"id": "AB", "price": 1.5, "expiration_date": "2022-06-04 06:01:20"},
        "c": {"id": "c", "price": 2.0, "expiration_date": "x"},
    }


def test_a_lookup_reads_the_buckets_of_its_ids_and_projects_only_them() -> None:
    query, projection = layout.lookup(["abc"], 100)
    assert query == {"_id": layout.bucket_of("abc", 100)}
    assert projection == {"r.abc": 1}
    keys = [f"id{i}" for i in range(50)]
    query, projection = layout.lookup(keys, 7)
    assert query == {"_id": {"$in": sorted({layout.bucket_of(k, 7) for k in keys})}}
    assert set(projection) == {f"r.{k}" for k in keys}
