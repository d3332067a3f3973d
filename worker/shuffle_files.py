"""Run files of the shuffle: what each chunk task (map) leaves for the partition tasks
(reduce), on the shared volume so that any worker host can read any of them.

One file per chunk, ``<runs_dir>/<job id>/c<chunk>.run``: a segment per slice of the
shuffle's fixed hash space (``shared.fileformat.bucket_layout``, SHUFFLE_SLICES), then a directory
of the segments. A segment holds the chunk's last row of each of its ids, in file order, as
columns each read back in one C call: keys (joined by newlines: ids never hold one) and
row elements (lengths, then the bytes). One file per chunk rather than per (chunk,
slice): thousands of slices. A reduce task reads a contiguous range of slices, so one
range of each run file.

Each segment carries a CRC-32 (C speed, a small share of the map's time): a shared volume
that hands back other bytes fails the job rather than writing wrong rows. A file is
written under a temporary name, flushed to disk and renamed, so a reader sees a
whole file or none, and a redelivered map task that writes it again (the same bytes: same
chunk, same plan) changes nothing for a reader.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import struct
import uuid
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import BinaryIO

from shared.errors import PermanentError
from shared.fileformat.bucket_layout import MIN_LINE_BYTES, slices_of

# Run files hold the file's bytes again plus some bytes per row (key and BSON element with
# their lengths, bucket number, segment directory); 64 per row stays above what is written,
# with a margin (docs/decisions/run-file-size.md).
RUN_BYTES_PER_ROW = 64
MiB = 1024 * 1024

MAGIC = b"PRUNS\x00\x02\x00"  # 2: segments per slice, no bucket column
_ENTRY = struct.Struct("<qqqqq")  # segment offset, rows, keys bytes, elements bytes, CRC-32
_TRAILER = struct.Struct("<q8s")  # partitions, MAGIC


def job_dir(runs_dir: Path, job_id: str) -> Path:
    return runs_dir / job_id


def run_path(runs_dir: Path, job_id: str, chunk: int) -> Path:
    return job_dir(runs_dir, job_id) / f"c{chunk:06d}.run"


class VolumeFull(PermanentError):
    """The shared volume filled up under the run files: the job stops with this sentence
    (its run files are removed when it ends, which gives the space back)."""


def space_needed(file_bytes: int, mean_line: float, extra: int = 0) -> int:
    """Bytes the run files of a whole file take, estimated from its size and mean line,
    plus ``extra`` (the reject report's bound)."""
    rows = file_bytes / max(1.0, mean_line)
    return int(file_bytes + RUN_BYTES_PER_ROW * rows) + extra


def mean_row_bytes(sample: bytes) -> float:
    """The mean length of the sample's rows, for the plan's estimate. Blank lines are no
    rows (they cost no run-file bytes): a file starting with 64 KiB of them must not be
    estimated at a row per byte. A sample without a row counts rows as short as a valid
    one can be: the most the run files could take. The map tops the reservation up if
    the rest of the file has shorter rows (``ensure_room``)."""
    lines = sample.split(b"\n")
    if len(lines) > 1:
        lines.pop()  # the last one may be cut
    rows = [line for line in lines if line.strip()]
    if not rows:
        return float(MIN_LINE_BYTES)
    return max(float(MIN_LINE_BYTES), (sum(map(len, rows)) + len(rows)) / len(rows))


# In a job's run directory: the bytes of run files its plan counted on. Plans of loads that
# run at the same time (an upload arriving while another loads) count each other's share
# still to be written, so two loads that each fit alone do not both start on a volume that
# holds only one (both would fail half-way with the volume full).
RESERVED = "reserved"


def _written(directory: Path) -> int:
    if not directory.is_dir():
        return 0
    return sum(
        entry.stat().st_size
        for entry in directory.iterdir()
        if not entry.name.startswith(RESERVED) and entry.is_file()
    )


def _reserved(directory: Path) -> int:
    """The plan's reservation plus the map's top-ups (``reserved.c<chunk>``)."""
    total = 0
    for name in [RESERVED, *(p.name for p in directory.glob(f"{RESERVED}.c*"))]:
        try:
            total += int((directory / name).read_text())
        except (FileNotFoundError, ValueError):  # a map-only directory, or torn by a crash
            continue
    return total


def held_by_others(runs_dir: Path, job_id: str) -> int:
    """Run-file bytes that other loads under way have reserved and not written yet."""
    total = 0
    for other in job_ids_with_runs(runs_dir):
        if other != job_id:
            directory = job_dir(runs_dir, other)
            with contextlib.suppress(FileNotFoundError):  # that job ended meanwhile
                total += max(0, _reserved(directory) - _written(directory))
    return total


def room_problem(
    runs_dir: Path,
    job_id: str,
    file_bytes: int,
    mean_line: float,
    min_free_bytes: int,
    extra: int = 0,
) -> str | None:
    """Why the run files of this job will not fit on the shared volume (keeping
    ``min_free_bytes`` free for uploads), or None. Counts what the job already wrote (a
    redelivered plan), so only the rest is needed, and what other loads under way are
    still to write."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    written = _written(job_dir(runs_dir, job_id))
    needed = max(0, space_needed(file_bytes, mean_line, extra) - written)
    others = held_by_others(runs_dir, job_id)
    free = shutil.disk_usage(runs_dir).free
    if free - needed - others >= min_free_bytes:
        return None
    held = f", other loads under way still need {others / MiB:,.0f} MiB of it" if others else ""
    return (
        f"not enough free space on the shared volume to load this file: its run files need "
        f"about {needed / MiB:,.0f} MiB, {free / MiB:,.0f} MiB are free{held} and "
        f"MIN_FREE_BYTES ({min_free_bytes / MiB:,.0f} MiB) stays free for uploads; free space "
        "or grow the volume, then upload the file again (the live dataset keeps serving)"
    )


def reserve_room(
    runs_dir: Path, job_id: str, file_bytes: int, mean_line: float, extra: int = 0
) -> None:
    """Record what this job's run files (and reject report) will take, after
    ``room_problem`` found room, for the plans of other loads; removed with the job's run
    files when the job ends."""
    _write_reservation(runs_dir, job_id, RESERVED, space_needed(file_bytes, mean_line, extra))


def _write_reservation(runs_dir: Path, job_id: str, name: str, size: int) -> None:
    directory = job_dir(runs_dir, job_id)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{RESERVED}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(str(size))
    tmp.replace(directory / name)


class RoomOutgrown(PermanentError):
    """A chunk's run file would take more than its job reserved, and the volume has no
    room for the difference: the job stops before writing it."""


def ensure_room(runs_dir: Path, job_id: str, chunk: int, size: int, min_free_bytes: int) -> None:
    """Before a chunk writes ``size`` bytes of run file: within the job's reservation, or
    the reservation grows by the difference if the volume has it with ``min_free_bytes``
    and other loads' shares to spare (the plan's estimate came from the file's first
    lines; the rest may hold shorter rows). A redelivered chunk replaces its file: what it
    wrote before counts as free for it."""
    directory = job_dir(runs_dir, job_id)
    own = run_path(runs_dir, job_id, chunk)
    before = own.stat().st_size if own.exists() else 0
    over = _written(directory) - before + size - _reserved(directory)
    if over <= 0:
        return
    free = shutil.disk_usage(runs_dir).free
    others = held_by_others(runs_dir, job_id)
    if free - over - others < min_free_bytes:
        raise RoomOutgrown(
            f"the run files outgrew the room reserved for them (chunk {chunk} needs "
            f"{over / MiB:,.1f} MiB more; {free / MiB:,.0f} MiB are free and MIN_FREE_BYTES "
            f"({min_free_bytes / MiB:,.0f} MiB) stays free for uploads): the file's rows are "
            "shorter than its first lines suggested. Free space or grow the volume, then "
            "upload the file again (the live dataset keeps serving)"
        )
    _write_reservation(runs_dir, job_id, f"{RESERVED}.c{chunk:06d}", over)


def run_file_bytes(keys: list[bytes], elements: list[bytes], slices: int) -> int:
    """What ``write_chunk_runs`` writes for these rows (exactly: keys with their newlines,
    element lengths and bytes, the directory and trailer)."""
    rows = len(keys)
    return (
        sum(map(len, keys))
        + rows  # at most one newline per key
        + 4 * rows
        + sum(map(len, elements))
        + _ENTRY.size * slices
        + _TRAILER.size
    )


@contextlib.contextmanager
def volume_full_is_permanent(what: str) -> Iterator[None]:
    """A full volume (or quota) under a write becomes ``VolumeFull`` with a sentence for the
    user, instead of an internal error."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise VolumeFull(
            f"the shared volume filled up while writing {what} ({exc.strerror}); free space "
            "or grow the volume, then upload the file again (the live dataset keeps serving)"
        ) from exc


def _u32(values: list[int]) -> bytes:
    return array("I", values).tobytes()


def keep_last(keys: list[bytes], elements: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """The map side of last-row-wins: of the rows of one chunk (in file order) only each
    id's last goes to the run file, in file order, so an id repeated a million times in a
    chunk costs one row downstream."""
    last = dict(zip(keys, range(len(keys)), strict=True))
    if len(last) == len(keys):
        return keys, elements
    chosen = sorted(last.values())
    return list(map(keys.__getitem__, chosen)), list(map(elements.__getitem__, chosen))


def write_chunk_runs(
    runs_dir: Path,
    job_id: str,
    chunk: int,
    keys: list[bytes],
    elements: list[bytes],
    slices: int,
) -> list[int]:
    """Write one chunk's rows (in file order) into its run file, a segment per slice;
    returns the rows of each slice (what the reduce side is planned from)."""
    numbers = slices_of(keys, slices)
    order = sorted(range(len(keys)), key=numbers.__getitem__)  # stable: file order kept
    sorted_numbers = list(map(numbers.__getitem__, order))
    path = run_path(runs_dir, job_id, chunk)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    directory = []
    counts = []
    try:
        with tmp.open("wb") as f:
            low = 0
            for number in range(slices):
                high = bisect_left(sorted_numbers, number + 1, low)
                rows = order[low:high]
                low = high
                counts.append(len(rows))
                segment_elements = list(map(elements.__getitem__, rows))
                columns = [
                    b"\n".join(map(keys.__getitem__, rows)),
                    _u32(list(map(len, segment_elements))),
                    b"".join(segment_elements),
                ]
                crc = 0
                for column in columns:
                    crc = zlib.crc32(column, crc)
                entry = (f.tell(), len(rows), len(columns[0]), len(columns[2]), crc)
                directory.append(_ENTRY.pack(*entry))
                if rows:
                    f.writelines(columns)
            f.write(b"".join(directory))
            f.write(_TRAILER.pack(slices, MAGIC))
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(path)
    finally:
        tmp.unlink(missing_ok=True)
    return counts


@dataclass
class PartitionRows:
    """Rows of a range of slices, in file order (parallel lists)."""

    keys: list[bytes]
    elements: list[bytes]


def chunk_rows(
    runs_dir: Path, job_id: str, chunks: int, first: int, end: int, slices: int
) -> Iterator[PartitionRows]:
    """The rows of slices ``[first, end)``, one chunk at a time in chunk order, so the rows
    stay in file order: the last row of an id is the one nearest the end of the file. A
    missing or damaged run file is a lost shuffle (the shared volume lost it): the job
    cannot be completed."""
    for chunk in range(chunks):
        path = run_path(runs_dir, job_id, chunk)
        out = PartitionRows([], [])
        try:
            with path.open("rb") as f:
                _read_segments(f, path, first, end, slices, out)
        except FileNotFoundError as exc:
            raise PermanentError(
                f"run file {path.name} of the shuffle is missing from the shared volume"
            ) from exc
        yield out


def read_slices(
    runs_dir: Path, job_id: str, chunks: int, first: int, end: int, slices: int
) -> PartitionRows:
    """Every row of slices ``[first, end)`` over every chunk, in file order."""
    out = PartitionRows([], [])
    for rows in chunk_rows(runs_dir, job_id, chunks, first, end, slices):
        out.keys += rows.keys
        out.elements += rows.elements
    return out


def _read_segments(
    f: BinaryIO, path: Path, first: int, end: int, slices: int, out: PartitionRows
) -> None:
    size = f.seek(0, os.SEEK_END)
    if size < _TRAILER.size + _ENTRY.size * slices:
        raise PermanentError(f"run file {path.name} is damaged (too short)")
    f.seek(size - _TRAILER.size)
    count, magic = _TRAILER.unpack(f.read(_TRAILER.size))
    if magic != MAGIC or count != slices:
        raise PermanentError(f"run file {path.name} is damaged or of another plan")
    f.seek(size - _TRAILER.size - _ENTRY.size * (slices - first))
    entries = list(_ENTRY.iter_unpack(f.read(_ENTRY.size * (end - first))))
    if not entries:
        return
    # Consecutive slices are consecutive segments: one read for the whole range.
    start = entries[0][0]
    stop = entries[-1][0] + _segment_bytes(entries[-1])
    if not start <= stop <= size:
        raise PermanentError(f"run file {path.name} is damaged (directory)")
    f.seek(start)
    span = f.read(stop - start)
    for number, entry in zip(range(first, end), entries, strict=True):
        _read_segment(span, entry[0] - start, path, number, entry, out)


def _segment_bytes(entry: tuple[int, ...]) -> int:
    _, rows, keys_len, elements_len, _ = entry
    return keys_len + 4 * rows + elements_len if rows else 0


def _read_segment(
    span: bytes, at: int, path: Path, number: int, entry: tuple[int, ...], out: PartitionRows
) -> None:
    _, rows, keys_len, elements_len, crc = entry
    if not rows:
        return
    data = span[at : at + _segment_bytes(entry)] if at >= 0 else b""
    if zlib.crc32(data) != crc:
        raise PermanentError(f"run file {path.name} is damaged (segment {number} checksum)")
    keys = data[:keys_len].split(b"\n")
    lengths = array("I")
    lengths.frombytes(data[keys_len : keys_len + 4 * rows])
    blob = data[keys_len + 4 * rows :]
    if len(keys) != rows or len(blob) != elements_len or sum(lengths) != elements_len:
        raise PermanentError(f"run file {path.name} is damaged (segment {number})")
    ends = list(accumulate(lengths))
    starts = [0, *ends[:-1]]
    out.keys += keys
    out.elements += list(map(blob.__getitem__, map(slice, starts, ends)))


def remove_job_runs(runs_dir: Path, job_id: str) -> None:
    """Repeat-safe; a map task still writing after its job ended leaves only a .tmp, which
    ``sweep`` takes later."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(job_dir(runs_dir, job_id))


def job_ids_with_runs(runs_dir: Path) -> list[str]:
    if not runs_dir.is_dir():
        return []
    return [p.name for p in runs_dir.iterdir() if p.is_dir()]
