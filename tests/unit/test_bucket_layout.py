"""The bucketed layout's arithmetic: one definition of an id's bucket for every process and
release, partitions that cover the buckets exactly, buckets that stay small."""

from __future__ import annotations

import bson
from hypothesis import given
from hypothesis import strategies as st

from shared import bucket_layout as layout


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


@given(st.integers(1, 5_000), st.data())
def test_partitions_cover_every_bucket_once_in_order(buckets: int, data: st.DataObject) -> None:
    partitions = data.draw(st.integers(1, buckets))
    seen: list[int] = []
    for partition in range(partitions):
        members = layout.bucket_range(partition, buckets, partitions)
        assert all(layout.partition_of(b, buckets, partitions) == partition for b in members)
        seen += members
    assert seen == list(range(buckets))
    assert layout.partitions_of(seen, buckets, partitions) == [
        layout.partition_of(b, buckets, partitions) for b in seen
    ]


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


def test_a_billion_row_file_gets_ten_million_buckets_and_bounded_partitions() -> None:
    size = 1_000_000_000 * 60  # 60-byte lines
    buckets = layout.bucket_count(size, 60, 100)
    assert buckets == 10_000_000
    assert layout.partition_count(buckets, 100, 250_000, 8) == 4_000
    assert layout.partition_count(20, 100, 250_000, 8) == 8  # every worker has one
    assert layout.partition_count(3, 100, 250_000, 8) == 3  # never more than buckets
    assert layout.bucket_count(100, 50, 100) == 1  # a tiny file: one bucket
    assert layout.partition_count(1, 100, 250_000, 1) == 1
    assert layout.partition_count(10, 1, 1, 1) == 10  # one row a partition
    assert isinstance(layout.partition_count(10**7, 100, 250_000, 8), int)


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
    for rid, *_ in rows:  # the id as written is kept only where it differs
        assert ("i" in doc["r"][rid.lower()]) == (rid != rid.lower())


def test_a_lookup_reads_the_buckets_of_its_ids_and_projects_only_them() -> None:
    query, projection = layout.lookup(["abc"], 100)
    assert query == {"_id": layout.bucket_of("abc", 100)}
    assert projection == {"r.abc": 1}
    keys = [f"id{i}" for i in range(50)]
    query, projection = layout.lookup(keys, 7)
    assert query == {"_id": {"$in": sorted({layout.bucket_of(k, 7) for k in keys})}}
    assert set(projection) == {f"r.{k}" for k in keys}
