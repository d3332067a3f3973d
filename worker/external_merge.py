"""Last-row-wins for a reduce task whose rows do not fit its memory bound.

The plan coalesces slices into reduce tasks of at most ``ROWS_PER_PARTITION`` rows from
the exact counts the map recorded, but one group of slices (the rows of one hash range)
can alone hold more: a hostile or very skewed file. Such a task never holds more than
about ``bound`` rows: it reads the run files chunk by chunk, and each time it holds
``bound`` rows it keeps each id's last, sorts them by (bucket, id) and writes them to a
sorted run on disk (``<runs_dir>/<job>/x<partition>.<n>.spill``, removed with the job's
run files). The sorted runs are then merged k-way (``heapq.merge``, stable: for the same id
the later run, so the row nearer the end of the file, comes last) and each bucket's
document is built as the merge passes it: one bucket in memory at a time.
"""

from __future__ import annotations

import heapq
import struct
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import count, groupby
from operator import itemgetter
from pathlib import Path
from typing import BinaryIO

from shared.fileformat.bucket_layout import bucket_document, buckets_of
from worker.shuffle_files import PartitionRows, job_dir

_RECORD = struct.Struct("<iHI")  # bucket, key length, element length
_READ_BUFFER = 256 * 1024


@dataclass
class Counts:
    """Filled in as the documents are consumed."""

    rows: int = 0  # distinct ids
    duplicates: int = 0


def spill_path(runs_dir: Path, job_id: str, partition: int) -> Path:
    return job_dir(runs_dir, job_id) / f"x{partition:06d}.{uuid.uuid4().hex}.spill"


def _spill(rows: PartitionRows, buckets: int, path: Path) -> int:
    """One sorted run: the batch's last row of each id, by (bucket, key). Returns the rows
    it holds."""
    last = dict(zip(rows.keys, count()))
    numbers = buckets_of(last, buckets)
    order = sorted(zip(numbers, last, last.values(), strict=True))
    with path.open("wb") as f:
        for bucket, key, index in order:
            element = rows.elements[index]
            f.write(_RECORD.pack(bucket, len(key), len(element)))
            f.write(key)
            f.write(element)
    return len(order)


def _records(path: Path) -> Iterator[tuple[int, bytes, bytes]]:
    with path.open("rb", buffering=_READ_BUFFER) as f:
        yield from _read_records(f)


def _read_records(f: BinaryIO) -> Iterator[tuple[int, bytes, bytes]]:
    while header := f.read(_RECORD.size):
        bucket, key_len, element_len = _RECORD.unpack(header)
        key = f.read(key_len)
        yield bucket, key, f.read(element_len)


def merge_external(
    batches: Iterable[PartitionRows],
    buckets: int,
    bound: int,
    runs_dir: Path,
    job_id: str,
    partition: int,
    counts: Counts,
) -> Iterator[tuple[int, bytes]]:
    """(rows, bucket document) in ascending bucket order, for rows arriving in file order
    in ``batches`` (one per chunk); at most ``bound`` rows (plus one chunk's) in memory."""
    runs: list[Path] = []
    read = 0
    pending = PartitionRows([], [])
    try:
        for batch in batches:
            pending.keys += batch.keys
            pending.elements += batch.elements
            read += len(batch.keys)
            if len(pending.keys) >= bound:
                runs.append(spill_path(runs_dir, job_id, partition))
                _spill(pending, buckets, runs[-1])
                pending = PartitionRows([], [])
        if pending.keys:
            runs.append(spill_path(runs_dir, job_id, partition))
            _spill(pending, buckets, runs[-1])
        del pending
        merged = heapq.merge(*map(_records, runs), key=itemgetter(0, 1))
        for bucket, records in groupby(merged, key=itemgetter(0)):
            elements = []
            for _, same_id in groupby(records, key=itemgetter(1)):
                *_, last = same_id
                elements.append(last[2])
            counts.rows += len(elements)
            yield len(elements), bucket_document(bucket, elements)
        counts.duplicates = read - counts.rows
    finally:
        for path in runs:
            path.unlink(missing_ok=True)
