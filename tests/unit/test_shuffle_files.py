"""Run files: a redelivered map writes the very same bytes; a damaged or missing file is a
clear, permanent error, never rows silently lost."""

from __future__ import annotations

import errno
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import pytest

from shared.errors import PermanentError
from shared.fileformat.promotion_rows import ChunkStats, parse_chunk_rows
from worker import shuffle_files

DATA = b"".join(b"id%d,%d.5,2018-08-04 05:32:31\n" % (i, i) for i in range(500))


def _write(runs: Path, chunk: int = 0, slices: int = 4) -> Path:
    keys, elements = parse_chunk_rows(DATA, 0, ChunkStats())
    counts = shuffle_files.write_chunk_runs(runs, "job", chunk, keys, elements, slices)
    assert sum(counts) == len(keys) and len(counts) == slices
    return shuffle_files.run_path(runs, "job", chunk)


def _read(runs: Path, chunks: int, first: int, slices: int, end: int | None = None) -> Any:
    return shuffle_files.read_slices(
        runs, "job", chunks, first, first + 1 if end is None else end, slices
    )


def test_a_run_file_reads_back_every_row_once_across_partitions(tmp_path: Path) -> None:
    _write(tmp_path)
    keys, elements = parse_chunk_rows(DATA, 0, ChunkStats())
    back = [_read(tmp_path, 1, p, 4) for p in range(4)]
    whole = _read(tmp_path, 1, 0, 4, end=4)
    assert whole.keys == [k for part in back for k in part.keys]  # one range, one read
    assert sorted(k for part in back for k in part.keys) == sorted(keys)
    assert sorted(e for part in back for e in part.elements) == sorted(elements)
    for part in back:  # file order kept inside a partition
        assert part.keys == sorted(part.keys, key=keys.index)
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_runs_directory_is_made_when_missing(tmp_path: Path) -> None:
    runs = tmp_path / "not" / "yet"
    _write(runs)
    assert shuffle_files.job_ids_with_runs(runs) == ["job"]


def test_a_redelivered_map_writes_the_same_bytes(tmp_path: Path) -> None:
    first = _write(tmp_path).read_bytes()
    assert _write(tmp_path).read_bytes() == first


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-1], "damaged or of another plan"),
        (lambda b: b[:10], "too short"),
        (lambda b: b[-(16 + 40 * 4 - 1) :], "too short"),  # under trailer + directory
        (lambda b: b[:40] + b"\xff" * 8 + b[48:], "damaged"),
    ],
)
def test_a_damaged_run_file_is_a_permanent_error(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(PermanentError, match=message):
        for partition in range(4):
            _read(tmp_path, 1, partition, 4)


def test_a_run_file_of_another_plan_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, slices=4)
    with pytest.raises(PermanentError, match="another plan"):
        _read(tmp_path, 1, 0, 8)


def test_a_missing_run_file_names_the_file(tmp_path: Path) -> None:
    _write(tmp_path, chunk=0)
    with pytest.raises(PermanentError, match=r"c000001\.run .* missing"):
        _read(tmp_path, 2, 0, 4)


def test_removing_a_jobs_runs_is_repeat_safe(tmp_path: Path) -> None:
    _write(tmp_path)
    assert shuffle_files.job_ids_with_runs(tmp_path) == ["job"]
    shuffle_files.remove_job_runs(tmp_path, "job")
    shuffle_files.remove_job_runs(tmp_path, "job")
    assert shuffle_files.job_ids_with_runs(tmp_path) == []


def test_a_segment_whose_lengths_disagree_is_refused_even_with_a_matching_checksum(
    tmp_path: Path,
) -> None:
    """A writer bug, not a disk fault: the directory moves one byte from the elements to the
    keys; the checksum still covers the same bytes, the element lengths no longer add up."""
    path = _write(tmp_path, slices=1)
    data = bytearray(path.read_bytes())
    entry_at = len(data) - shuffle_files._TRAILER.size - shuffle_files._ENTRY.size
    offset, rows, keys_len, elements_len, crc = shuffle_files._ENTRY.unpack_from(data, entry_at)
    shuffle_files._ENTRY.pack_into(
        data, entry_at, offset, rows, keys_len + 1, elements_len - 1, crc
    )
    path.write_bytes(bytes(data))
    with pytest.raises(PermanentError, match=r"c000000\.run is damaged \(segment 0\)$"):
        _read(tmp_path, 1, 0, 1)


def test_the_run_files_estimate_covers_what_a_map_writes(tmp_path: Path) -> None:
    path = _write(tmp_path)
    mean_line = len(DATA) / DATA.count(b"\n")
    assert path.stat().st_size <= shuffle_files.space_needed(len(DATA), mean_line)


def test_a_segment_with_a_key_too_many_is_refused_even_with_a_matching_checksum(
    tmp_path: Path,
) -> None:
    """A newline inside the keys column (a writer bug): one key more than rows, while the
    elements still add up and the checksum is recomputed over the changed bytes."""
    path = _write(tmp_path, slices=1)
    data = bytearray(path.read_bytes())
    entry_at = len(data) - shuffle_files._TRAILER.size - shuffle_files._ENTRY.size
    offset, rows, keys_len, elements_len, _ = shuffle_files._ENTRY.unpack_from(data, entry_at)
    data[offset + 1] = ord("\n")  # inside the first key ("id0" -> "i", "0")
    end = offset + 4 * rows + keys_len + elements_len
    crc = zlib.crc32(bytes(data[offset:end]))
    shuffle_files._ENTRY.pack_into(data, entry_at, offset, rows, keys_len, elements_len, crc)
    path.write_bytes(bytes(data))
    with pytest.raises(PermanentError, match=r"c000000\.run is damaged \(segment 0\)$"):
        _read(tmp_path, 1, 0, 1)


def test_the_run_files_estimate_is_the_file_plus_a_fixed_cost_per_row() -> None:
    assert shuffle_files.space_needed(1000, 50.0) == 1000 + 64 * 20
    assert shuffle_files.space_needed(300, 1.5) == 300 + 64 * 200  # short lines, many rows
    assert shuffle_files.space_needed(300, 0.0) == 300 + 64 * 300  # no line seen: 1 byte each


_USAGE = shutil.disk_usage("/")  # the shape of an answer, read before any test patches it


def _free(monkeypatch: pytest.MonkeyPatch, free: int, where: Path) -> None:
    usage = _USAGE._replace(free=free)

    def disk_usage(path: Path) -> Any:
        assert Path(path) == where  # the volume of the run files, not some other
        return usage

    monkeypatch.setattr(shuffle_files.shutil, "disk_usage", disk_usage)


def test_the_room_message_gives_the_sizes_in_mib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "not" / "yet"  # made on the way, parents included
    mib = 1024 * 1024
    _free(monkeypatch, 3 * mib, runs)
    problem = shuffle_files.room_problem(runs, "job", 2 * mib, float(mib), 2 * mib)
    assert problem == (
        "not enough free space on the shared volume to load this file: its run files need "
        "about 2 MiB, 3 MiB are free and MIN_FREE_BYTES (2 MiB) stays free for uploads; free "
        "space or grow the volume, then upload the file again (the live dataset keeps serving)"
    )
    assert runs.is_dir()


def test_room_for_the_run_files_keeps_the_free_space_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needed = shuffle_files.space_needed(10_000_000, 50.0)
    _free(monkeypatch, needed + 1000, tmp_path)
    assert shuffle_files.room_problem(tmp_path, "job", 10_000_000, 50.0, 1000) is None
    problem = shuffle_files.room_problem(tmp_path, "job", 10_000_000, 50.0, 1001)
    assert problem is not None
    assert problem.startswith("not enough free space on the shared volume to load this file")
    assert "MIN_FREE_BYTES" in problem and "the live dataset keeps serving" in problem


def test_room_counts_what_a_redelivered_plans_job_already_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = _write(tmp_path).stat().st_size
    mean_line = len(DATA) / DATA.count(b"\n")
    needed = shuffle_files.space_needed(len(DATA), mean_line)
    _free(monkeypatch, needed - written, tmp_path)
    assert shuffle_files.room_problem(tmp_path, "job", len(DATA), mean_line, 0) is None
    assert shuffle_files.room_problem(tmp_path, "other", len(DATA), mean_line, 0) is not None
    # Written beyond the estimate: nothing more is needed, and nothing less either.
    _free(monkeypatch, 10, tmp_path)
    assert shuffle_files.room_problem(tmp_path, "job", 100, 50.0, 10) is None


def test_room_counts_what_other_loads_under_way_still_have_to_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mean_line = len(DATA) / DATA.count(b"\n")
    estimate = shuffle_files.space_needed(len(DATA), mean_line)
    shuffle_files.reserve_room(tmp_path, "job", len(DATA), mean_line)  # "job" is loading
    assert (tmp_path / "job" / shuffle_files.RESERVED).read_text() == str(estimate)
    assert shuffle_files.held_by_others(tmp_path, "job") == 0  # its own share is not others'
    assert shuffle_files.held_by_others(tmp_path, "new") == estimate
    written = _write(tmp_path).stat().st_size  # "job" wrote one run file: that much less
    assert shuffle_files.held_by_others(tmp_path, "new") == estimate - written
    needed = shuffle_files.space_needed(100, 50.0)
    _free(monkeypatch, needed + estimate - written, tmp_path)
    assert shuffle_files.room_problem(tmp_path, "new", 100, 50.0, 0) is None
    problem = shuffle_files.room_problem(tmp_path, "new", 100, 50.0, 1)
    assert problem is not None and "other loads under way still need 0 MiB of it" in problem
    # A reservation torn by a crash, or a directory without one, holds nothing.
    (tmp_path / "job" / shuffle_files.RESERVED).write_text("12")
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / shuffle_files.RESERVED).write_text("")
    assert shuffle_files.held_by_others(tmp_path, "new") == 0


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_volume_under_a_write_is_a_permanent_error_saying_so(code: int) -> None:
    full = pytest.raises(shuffle_files.VolumeFull, match="shared volume filled up while writing")
    with full, shuffle_files.volume_full_is_permanent("the run files"):
        raise OSError(code, os.strerror(code))
    assert issubclass(shuffle_files.VolumeFull, PermanentError)
    other = pytest.raises(PermissionError)  # other errors stay what they are
    with other, shuffle_files.volume_full_is_permanent("the run files"):
        raise PermissionError(errno.EACCES, "denied")


def test_a_chunk_within_the_reservation_writes_and_one_beyond_tops_it_up_or_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan's estimate comes from the first lines; a chunk whose run file would pass
    what is reserved grows the reservation if the volume has room with MIN_FREE_BYTES to
    spare, and otherwise stops the job before writing."""
    shuffle_files.reserve_room(tmp_path, "job", 100, 50.0)  # 100 + 64 * 2 bytes
    _free(monkeypatch, 10_000, tmp_path)
    shuffle_files.ensure_room(tmp_path, "job", 0, 200, 0)  # within: nothing more
    assert shuffle_files._reserved(tmp_path / "job") == 228
    shuffle_files.ensure_room(tmp_path, "job", 1, 1000, 5_000)
    assert shuffle_files._reserved(tmp_path / "job") == 1000  # topped up by the difference
    assert shuffle_files.held_by_others(tmp_path, "other") == 1000
    with pytest.raises(shuffle_files.RoomOutgrown, match="outgrew the room reserved"):
        shuffle_files.ensure_room(tmp_path, "job", 2, 2000, 9_001)


def test_the_estimate_counts_rows_not_blank_lines() -> None:
    rows = b"".join(b"id%d,1.5,2018-08-04 05:32:31\n" % i for i in range(100))
    assert shuffle_files.mean_row_bytes(b"\n" * 60_000 + rows) == len(rows) / 100
    assert shuffle_files.mean_row_bytes(b"\n" * 65_536) == 24.0  # no row: the shortest
    assert shuffle_files.mean_row_bytes(b"a,1\n") == 24.0  # never below a valid row


def test_the_size_of_a_run_file_is_known_before_it_is_written(tmp_path: Path) -> None:
    keys, elements = parse_chunk_rows(DATA, 0, ChunkStats())
    for slices in (1, 4, 64):
        shuffle_files.write_chunk_runs(tmp_path, "job", slices, keys, elements, slices)
        written = shuffle_files.run_path(tmp_path, "job", slices).stat().st_size
        assert written <= shuffle_files.run_file_bytes(keys, elements, slices) <= written + 500
