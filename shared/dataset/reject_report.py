"""The reject report of a job: rejected lines with their line number in the file, the
reason and the line as read (cut to ``RAW_CHARS``), kept on the shared volume in
``<data_dir>/rejects/`` and served as CSV by ``GET /jobs/{id}/rejects``. Its size is bounded
by a setting, not by the file: at most ``REJECT_REPORT_MAX_LINES`` lines in full (split
evenly over the chunks, see ``lines_per_chunk``), every reject counted by reason in the job
record (``rejects_by_reason``); the plan reserves that bound on the shared volume, and a
report stops listing when the volume falls under ``MIN_FREE_BYTES``.

Chunks load in parallel and may be delivered more than once, so each chunk writes its own
file, ``<job>.<chunk index>.csv``, under a temporary name renamed into place: a redelivery
replaces it whole, and a reader never sees half a file. Line numbers in a chunk's file count
from the chunk's first line, because a chunk knows its byte offset but not how many lines
precede it. The number of lines of every chunk is in the chunk results (``job_chunks``),
which are deleted when the job ends; just before that, ``seal`` keeps what the report needs
- the file lines before each chunk that has rejects - in ``<job>.index.json``, a few bytes
per such chunk. A file instead of the job document: the job record stays small and its
lifecycle code untouched, and the index goes away with the files it describes.

Reports are kept ``REJECTS_RETENTION_S`` after their job ends, then removed by the
watchdog's sweep of stale files, like leftovers of jobs that no longer exist.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, NamedTuple

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database

from shared.dataset.job_records import CHUNKS
from shared.dataset.lifecycle import FINISHED, JOBS
from shared.infra.timeutil import now

log = logging.getLogger(__name__)

RAW_CHARS = 256  # of each rejected line: enough to see the problem, bounded per row
HEADER = b"line,reason,raw\r\n"
STREAM_PIECE_BYTES = 64 * 1024
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_INDEX_SUFFIX = ".index.json"
_TMP_SUFFIX = ".tmp"
# Invalid UTF-8 arrives as lone surrogates (surrogateescape); the report is UTF-8.
_SURROGATES = re.compile("[\udc80-\udcff]")
# A spreadsheet runs a cell that starts with one of these as a formula, and operators open
# reports in spreadsheets while the raw line is the partner's text (CSV injection, OWASP):
# such a raw line is written with a leading apostrophe, which shows it as plain text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def chunk_file(directory: Path, job_id: str, index: int) -> Path:
    return directory / f"{job_id}.{index}.csv"


def index_file(directory: Path, job_id: str) -> Path:
    return directory / f"{job_id}{_INDEX_SUFFIX}"


def _tmp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{uuid.uuid4().hex}{_TMP_SUFFIX}")


def _job_of(name: str) -> str | None:
    """The job a report file belongs to (temporary files too), None for foreign files."""
    job_id = name.lstrip(".").split(".", 1)[0]
    return job_id if _JOB_ID.fullmatch(job_id) else None


def safe_raw(line: str) -> str:
    """The raw column: cut, invalid UTF-8 replaced, never read as a spreadsheet formula."""
    raw = _SURROGATES.sub("\ufffd", line[:RAW_CHARS])
    return "'" + raw if raw.startswith(_FORMULA_START) else raw


# What one listed line may take in the report (a 256-character raw line is up to ~1 KiB of
# UTF-8, plus its number and reason): the reservation counts this much per listed line.
BYTES_PER_LINE = 1536
# The free space is looked at after this many listed lines (and before the first).
FREE_CHECK_EVERY = 1024
_QUOTED = re.compile(r"'[^']*'")
_NUMBER = re.compile(r"\d+")


def lines_per_chunk(max_lines: int, chunks: int) -> int:
    """Each chunk lists at most this many rejected lines in full, so a job's report holds at
    most ``max_lines`` (REJECT_REPORT_MAX_LINES) plus one per chunk: chunks load in
    parallel, none knows what the others found."""
    return -(-max_lines // max(1, chunks)) if max_lines else 0


def space_bound(max_lines: int, chunks: int) -> int:
    """Bytes a job's report can take at most (what the plan reserves for it)."""
    return lines_per_chunk(max_lines, chunks) * max(1, chunks) * BYTES_PER_LINE


def reason_kind(reason: str) -> str:
    """A reason without the values it quotes: what rejects are counted by."""
    return _NUMBER.sub("N", _QUOTED.sub("'…'", reason))


class ChunkReport:
    """The rejects of one chunk, written as they are found (a chunk of bad lines could hold
    millions; they are never all in memory): the first ``limit`` in full, all of them
    counted by reason. The file is created at the first reject, so clean chunks cost
    nothing. A volume whose free space falls under ``min_free_bytes`` cuts the listing
    (the counts go on): a report never takes the room the next upload needs."""

    def __init__(
        self,
        directory: Path,
        job_id: str,
        index: int,
        limit: int | None = None,
        min_free_bytes: int = 0,
    ) -> None:
        self.final = chunk_file(directory, job_id, index)
        self.limit = limit
        self.min_free_bytes = min_free_bytes
        self.listed = 0
        self.cut = False  # stopped listing for the free space
        self.by_reason: dict[str, int] = {}
        self._tmp: Path | None = None
        self._file: IO[str] | None = None
        self._writer: Any = None

    def add(self, line_no: int, reason: str, line: str) -> None:
        kind = reason_kind(reason)
        self.by_reason[kind] = self.by_reason.get(kind, 0) + 1
        if self.cut or (self.limit is not None and self.listed >= self.limit):
            return
        if self.listed % FREE_CHECK_EVERY == 0 and self._volume_low():
            self.cut = True
            log.warning(
                "%s: the shared volume is under MIN_FREE_BYTES: the reject report lists no "
                "more lines (they are counted by reason)",
                self.final.name,
            )
            return
        if self._writer is None:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = _tmp_path(self.final)
            self._file = self._tmp.open("w", encoding="utf-8", newline="")
            self._writer = csv.writer(self._file, lineterminator="\r\n")
        self._writer.writerow((line_no, reason, safe_raw(line)))
        self.listed += 1

    def _volume_low(self) -> bool:
        if not self.min_free_bytes:
            return False
        self.final.parent.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.final.parent).free < self.min_free_bytes

    def save(self) -> None:
        """Put the chunk's file in place (replacing an earlier delivery's)."""
        if self._file is None or self._tmp is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.final)
        self._file = None

    def __del__(self) -> None:
        """A delivery that failed midway (retried, or the job ended) leaves no temporary
        file behind; the next delivery writes the chunk's file from scratch."""
        if self._file is not None and self._tmp is not None:
            self._file.close()
            self._tmp.unlink(missing_ok=True)


def _offsets_from_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """File lines before every chunk that has rejects, over the chunks recorded from the
    first one on; a missing chunk (a job stopped early) ends what can be numbered."""
    offsets: list[list[int]] = []
    lines_before = 0
    for expected, chunk in enumerate(sorted(chunks, key=lambda c: int(c["index"]))):
        if int(chunk["index"]) != expected:
            break
        if chunk.get("rejects_listed", chunk.get("rows_rejected")):
            offsets.append([expected, lines_before])
        lines_before += int(chunk["lines"])
    return {"chunks": offsets, "lines": lines_before}


_CHUNK_FIELDS = {"index": 1, "lines": 1, "rows_rejected": 1, "rejects_listed": 1, "_id": 0}


def seal(db: Database[Any], directory: Path, job_id: str) -> None:
    """Keep the chunks' line offsets before the chunk results are deleted. The first seal
    wins (a hard link fails if the index exists): a late repeat, after the results are
    gone, must not replace a full index with an empty one."""
    chunks = list(db[CHUNKS].find({"job_id": job_id}, _CHUNK_FIELDS))
    if chunks:
        _write_index(directory, job_id, _offsets_from_chunks(chunks))


def keep_refused_start(
    directory: Path, job_id: str, rejects: list[tuple[int, str, str]], lines: int
) -> None:
    """The report of a file refused from its first rows, before any chunk loaded: those
    rows (``(line, reason, line as read)``, file line numbers) as chunk 0's file, and the
    index sealed at once, so the endpoint serves them like any report."""
    report = ChunkReport(directory, job_id, 0)
    for line_no, reason, line in rejects:
        report.add(line_no, reason, line)
    report.save()
    _write_index(directory, job_id, {"chunks": [[0, 0]], "lines": lines})


def _write_index(directory: Path, job_id: str, data: dict[str, Any]) -> None:
    final = index_file(directory, job_id)
    tmp = _tmp_path(final)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, final)
    except OSError as exc:  # a full or failing volume must not stop the job's clean-up
        log.error("job %s: could not keep its reject report index: %s", job_id, exc)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


class ReportIndex(NamedTuple):
    """Where a report's chunk files sit in the file: (chunk index, file lines before it) of
    the chunks with rejects, and how many of the file's lines the report covers - all of
    them, or, for a job stopped early, those up to the first chunk never mapped."""

    offsets: list[tuple[int, int]]
    lines: int


def _index_of(data: dict[str, Any]) -> ReportIndex:
    return ReportIndex([(int(i), int(before)) for i, before in data["chunks"]], int(data["lines"]))


async def chunk_offsets(db: AsyncDatabase[Any], directory: Path, job_id: str) -> ReportIndex | None:
    """The report's index, from the index file, or from the chunk results if the job ended
    a moment ago and is not sealed yet; None if neither exists any more (the report was
    removed)."""
    if not _JOB_ID.fullmatch(job_id):  # ids are server-made; anything else is no path
        return None
    for attempt in range(2):
        with contextlib.suppress(FileNotFoundError):
            return _index_of(json.loads(index_file(directory, job_id).read_text()))
        if attempt == 0:
            cursor = db[CHUNKS].find({"job_id": job_id}, _CHUNK_FIELDS)
            chunks = [doc async for doc in cursor]
            if chunks:
                return _index_of(_offsets_from_chunks(chunks))
            # Sealed and deleted between the two reads: the index is there now.
    return None


def missing_files(directory: Path, job_id: str, offsets: list[tuple[int, int]]) -> bool:
    return any(not chunk_file(directory, job_id, index).exists() for index, _ in offsets)


def stream(directory: Path, job_id: str, offsets: list[tuple[int, int]]) -> Iterator[bytes]:
    """The report as CSV (``line,reason,raw``, CRLF), chunk after chunk, in pieces of about
    ``STREAM_PIECE_BYTES``. Every record of a chunk file is one physical line (a raw line
    holds no LF), and its first field is a bare integer, so only that is rewritten."""
    pending = [HEADER]
    size = len(HEADER)
    for index, before in offsets:
        with chunk_file(directory, job_id, index).open("rb") as f:
            for record in f:
                number, rest = record.split(b",", 1)
                piece = b"%d,%s" % (int(number) + before, rest)
                pending.append(piece)
                size += len(piece)
                if size >= STREAM_PIECE_BYTES:
                    yield b"".join(pending)
                    pending, size = [], 0
    if pending:
        yield b"".join(pending)


def sweep(db: Database[Any], directory: Path, retention_s: float, stale_before_ts: float) -> int:
    """Remove the reports of jobs that ended more than ``retention_s`` ago, and files of
    jobs that do not exist (or temporary files) older than ``stale_before_ts``. Returns the
    number of files removed."""
    if not directory.is_dir():
        return 0
    by_job: dict[str, list[Path]] = {}
    for path in directory.iterdir():
        job_id = _job_of(path.name)
        if job_id is not None:
            by_job.setdefault(job_id, []).append(path)
    if not by_job:
        return 0
    jobs = {
        doc["_id"]: doc
        for doc in db[JOBS].find(
            {"_id": {"$in": list(by_job)}}, {"status": 1, "finished_at": 1, "updated_at": 1}
        )
    }
    expired_before: datetime = now() - timedelta(seconds=retention_s)
    removed = 0
    for job_id, paths in by_job.items():
        job = jobs.get(job_id)
        if job is not None and job["status"] not in FINISHED:
            continue  # still loading
        if job is not None and (job.get("finished_at") or job["updated_at"]) >= expired_before:
            continue  # kept for the retention period
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                if job is not None or path.stat().st_mtime < stale_before_ts:
                    path.unlink()
                    removed += 1
    if removed:
        log.info("removed %d reject report files", removed)
    return removed
