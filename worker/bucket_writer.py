"""Insert a partition's bucket documents; safe to repeat.

Inserts are unordered (``ordered=False``) so one bucket already there does not stop the
rest. A duplicate-key error means an earlier delivery of the same partition inserted that
bucket: built from the same run files, it holds the same rows, so it is skipped. A
write-concern error (a failover may roll the batch back) or a shard's not-primary /
stale-routing / interrupted error raises ``StoreBusy``: the task retries the partition,
which is idempotent. Any other error is deterministic (retrying would fail the same way):
``PermanentError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import count, groupby
from typing import Any

from bson.raw_bson import RawBSONDocument
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from shared.errors import PermanentError, StoreBusy, is_transient_code
from shared.fileformat.bucket_layout import bucket_document, buckets_of
from worker.shuffle_files import PartitionRows

DUPLICATE_KEY = 11000


def check_bulk_error(exc: BulkWriteError) -> None:
    """Returns if every error is a bucket already there; raises for anything else."""
    details = exc.details
    if details.get("writeConcernErrors"):
        raise StoreBusy(f"write concern not satisfied: {details['writeConcernErrors'][0]}")
    for err in details.get("writeErrors", []):
        code = err.get("code")
        if code == DUPLICATE_KEY:
            continue
        if is_transient_code(code):
            raise StoreBusy(f"write error {code}: {err.get('errmsg')}")
        raise PermanentError(f"the store refused a bucket: error {code}: {err.get('errmsg')}")


def write_buckets(coll: Collection[Any], encoded: list[bytes]) -> None:
    """Buckets an earlier delivery inserted already are skipped (same documents)."""
    try:
        coll.insert_many([RawBSONDocument(raw) for raw in encoded], ordered=False)
    except BulkWriteError as exc:
        check_bulk_error(exc)


@dataclass
class Merged:
    """A partition's bucket documents, in bucket order, with the counts the job reports."""

    documents: list[tuple[int, bytes]]  # (rows in it, BSON)
    rows: int  # distinct ids
    duplicates: int  # rows whose id came again later in the file


def merge(rows: PartitionRows, buckets: int) -> Merged:
    """The last row of each id wins: rows arrive in file order (``read_slices``), so a
    dict keeps each id's last index. Then the winners are grouped by bucket (a stable sort
    keeps their order inside a bucket, so the same input gives the same bytes), buckets in
    ascending ``_id`` order."""
    last = dict(zip(rows.keys, count()))
    chosen = list(last.values())
    numbers = buckets_of(last, buckets)
    order = sorted(range(len(chosen)), key=numbers.__getitem__)
    documents = []
    for bucket, members in groupby(order, key=numbers.__getitem__):
        elements = [rows.elements[chosen[m]] for m in members]
        documents.append((len(elements), bucket_document(bucket, elements)))
    return Merged(documents, len(chosen), len(rows.keys) - len(chosen))


def insert_batches(
    documents: Iterable[tuple[int, bytes]], batch_rows: int
) -> Iterator[tuple[int, list[bytes]]]:
    """(rows, bucket documents) of inserts of about ``batch_rows`` rows each."""
    batch: list[bytes] = []
    rows = 0
    for size, document in documents:
        batch.append(document)
        rows += size
        if rows >= batch_rows:
            yield rows, batch
            batch, rows = [], 0
    if batch:
        yield rows, batch


def write_rows(
    coll: Collection[Any], keys: list[bytes], elements: list[bytes], buckets: int, batch_rows: int
) -> Merged:
    """Rows in file order straight into a version, without the shuffle: one partition
    holding every bucket (small datasets: tests and benchmarks set up data with it)."""
    merged = merge(PartitionRows(keys, elements), buckets)
    for _, batch in insert_batches(merged.documents, batch_rows):
        write_buckets(coll, batch)
    return merged
