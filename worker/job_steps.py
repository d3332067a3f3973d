"""The work of the plan, chunk and partition tasks, free of Celery so the lifecycle test
can run it. Loading is a shuffle (README "How it works"):

- plan: split the file into line-aligned chunks and choose the layout (buckets, partitions);
- map, one task per chunk: parse and validate its rows, write them to a run file grouped by
  partition (``worker/shuffle_files.py``);
- reduce, one task per partition once every chunk is mapped: read the partition's rows from
  every run file, keep each id's last row, insert the bucket documents.

Every step is idempotent: a redelivered plan records nothing new and enqueues the recorded
plan's chunks again; a redelivered map writes the same run file again; a redelivered reduce
finds its buckets already inserted (same run files, same documents). Each is counted once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pymongo.database import Database

from shared import datasets, job_records, lifecycle, reject_report
from shared.bucket_layout import bucket_count, partition_count
from shared.chunking import LineTooLong, chunk_size_for, plan_chunks, read_range
from shared.errors import PermanentError
from shared.file_checks import SNIFF_BYTES, sniff_problem
from shared.promotion_rows import MAX_REJECTS_KEPT, ChunkStats, parse_chunk_rows
from shared.safe_files import UnsafeFile, open_regular
from shared.settings import Settings
from worker import shuffle_files
from worker.bucket_writer import insert_batches, merge, write_buckets
from worker.throttle import paced

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 5.0

EnqueueChunk = Callable[[int, int, int], None]  # (index, start, end)
EnqueuePartition = Callable[[int], None]


def stop_if_superseded(db: Database[Any], job: dict[str, Any]) -> bool:
    """Loading an older upload once a newer one is live is wasted work."""
    newer = datasets.newer_version_live(db, job["version"])
    if newer is None:
        return False
    lifecycle.fail_job(
        db,
        job["_id"],
        f"superseded: a newer upload (dataset version {newer}) went live before this one "
        "finished loading, so loading stopped; the newer data is serving",
        superseded=True,
    )
    return True


def plan(db: Database[Any], settings: Settings, job_id: str, enqueue: EnqueueChunk) -> bool:
    """Split the file and enqueue its chunks; True if the job ended here instead."""
    job = lifecycle.start_job(db, job_id)
    if job is None:
        return False  # finished or finalizing already (redelivery), or unknown
    path = settings.uploads_dir / job["file"]
    version = job["version"]
    job_records.ensure_indexes(db)
    lifecycle.register_version(db, version, job_id)
    if stop_if_superseded(db, job):
        return True
    try:
        chosen, chunks = _plan_file(path, settings, job_id, job.get("chunk_size"))
    except PlanProblem as exc:
        return lifecycle.fail_job(db, job_id, str(exc), **exc.fields)
    datasets.create_version_collection(db, version, settings.shard_version_collections)
    recorded = lifecycle.record_plan(db, job_id, version, len(chunks), chosen)
    if recorded.chunk_size != chosen.chunk_size:  # an earlier delivery planned first
        _, chunks = _plan_file(path, settings, job_id, recorded.chunk_size)
    log.info(
        "job %s: %d chunks of %d bytes, %d buckets in %d partitions -> version %d",
        job_id,
        len(chunks),
        recorded.chunk_size,
        recorded.buckets,
        recorded.partitions,
        version,
    )
    done = job_records.done_chunk_indexes(db, job_id)
    for index, (start, end) in enumerate(chunks):
        if index not in done:
            enqueue(index, start, end)
    return False


class PlanProblem(Exception):
    """The file cannot be split; the message is for the user, ``fields`` go on the job."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.fields = fields


def _refused_start(
    settings: Settings, job_id: str, problem: str, judged: list[tuple[int, str, str]]
) -> PlanProblem:
    """A file refused from its first rows: the rows judged go in its reject report, so the
    refusal explains itself line by line like any other."""
    if not judged:
        return PlanProblem(problem)
    with shuffle_files.volume_full_is_permanent("the reject report"):
        reject_report.keep_refused_start(settings.rejects_dir, job_id, judged, judged[-1][0])
    return PlanProblem(
        problem,
        rows_rejected=len(judged),
        rejects=[{"line": line, "reason": reason} for line, reason, _ in judged[:MAX_REJECTS_KEPT]],
    )


def _plan_file(
    path: Path, settings: Settings, job_id: str, recorded_chunk_size: int | None
) -> tuple[lifecycle.Plan, list[tuple[int, int]]]:
    try:
        # Never through a link: the shared volume is written by others too.
        f = open_regular(path, single_link=False)
    except FileNotFoundError:
        raise PlanProblem("the uploaded file is missing from the shared volume") from None
    except UnsafeFile as exc:
        raise PlanProblem(f"the stored file is refused: {exc}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        sample = f.read(SNIFF_BYTES)
        judged: list[tuple[int, str, str]] = []
        stats = ChunkStats(on_reject=lambda *reject: judged.append(reject))
        problem = sniff_problem(sample, size <= SNIFF_BYTES, stats)
        if problem:
            raise _refused_start(settings, job_id, problem, judged)
        chunk_size = recorded_chunk_size or chunk_size_for(size, settings.chunk_size_bytes)
        try:
            chunks = plan_chunks(f, size, chunk_size)
        except LineTooLong as exc:
            raise PlanProblem(str(exc)) from exc
    mean_line = len(sample) / max(1, sample.count(b"\n"))
    # A redelivered plan of a job that already planned found room then, and its loads may be
    # under way: checking again could fail a job whose run files are already written.
    if recorded_chunk_size is None:
        problem = shuffle_files.room_problem(
            settings.runs_dir, job_id, size, mean_line, settings.min_free_bytes
        )
        if problem:
            raise PlanProblem(problem)
        with shuffle_files.volume_full_is_permanent("the run files' reservation"):
            shuffle_files.reserve_room(settings.runs_dir, job_id, size, mean_line)
    buckets = bucket_count(size, mean_line, settings.rows_per_bucket)
    partitions = partition_count(
        buckets, settings.rows_per_bucket, settings.rows_per_partition, settings.min_partitions
    )
    return lifecycle.Plan(chunk_size, buckets, partitions), chunks


LoadOutcome = Literal["loaded", "last", "ended", "skipped"]


def load(
    db: Database[Any], settings: Settings, job_id: str, index: int, start: int, end: int
) -> LoadOutcome:
    """Map one chunk: its valid rows to a run file, its rejects to the report. ``last``:
    every chunk is mapped (call ``after_loading``); ``ended``: this delivery ended the job
    (superseded); ``skipped``: the job is not loading."""
    job = job_records.load_job(db, job_id)
    if job is None or job["status"] != lifecycle.RUNNING:
        return "skipped"
    if job.get("phase") == "writing":
        return "last"  # a redelivery after every chunk was counted: the reduce may need sending
    if stop_if_superseded(db, job):
        return "ended"
    try:
        f = open_regular(settings.uploads_dir / job["file"], single_link=False)
    except UnsafeFile as exc:  # swapped on the shared volume since the plan: never read
        raise PermanentError(f"the stored file is refused: {exc}") from None
    with f:
        data = read_range(f, start, end)
    report = reject_report.ChunkReport(settings.rejects_dir, job_id, index)
    stats = ChunkStats(on_reject=report.add)
    with shuffle_files.volume_full_is_permanent("the reject report"):
        keys, elements = parse_chunk_rows(data, start, stats)
    del data
    if not job_records.heartbeat(db, job_id):
        return "skipped"  # the job ended meanwhile
    with shuffle_files.volume_full_is_permanent("the run files"):
        shuffle_files.write_chunk_runs(
            settings.runs_dir,
            job_id,
            index,
            keys,
            elements,
            job["buckets"],
            job["partitions_total"],
        )
    del keys, elements
    with shuffle_files.volume_full_is_permanent("the reject report"):
        report.save()
    if not job_records.heartbeat(db, job_id):
        return "skipped"  # ended meanwhile: its chunk results were already removed
    job_records.save_chunk_result(db, job_id, index, start, end, stats)
    counted = job_records.count_chunk_done(db, job_id, index, stats)
    return "last" if _all_done(db, job_id, counted, "chunks") else "loaded"


def _all_done(db: Database[Any], job_id: str, counted: dict[str, Any] | None, unit: str) -> bool:
    """Whether every chunk (or partition) of a running job is counted. ``counted``: the job
    after counting this one, None if an earlier delivery counted it (and may have died
    before acting on it: then the job as it is now decides, so the next step is sent)."""
    job = counted if counted is not None else job_records.load_job(db, job_id)
    return (
        job is not None
        and job["status"] == lifecycle.RUNNING
        and job[f"{unit}_done"] == job[f"{unit}_total"]
    )


def rejection_problem(
    totals: dict[str, int], rejects: list[dict[str, Any]], reject_ratio: float
) -> str | None:
    read, valid, rejected = totals["rows_read"], totals["rows_valid"], totals["rows_rejected"]
    first = f"first: line {rejects[0]['line']}: {rejects[0]['reason']}" if rejects else ""
    if read == 0:
        return "the file has no data rows"
    if valid == 0:
        return f"none of the {read} rows is valid ({first})"
    if rejected / read > reject_ratio:
        return (
            f"{rejected} of {read} rows ({rejected / read:.2%}) are invalid, more than the "
            f"allowed {reject_ratio:.2%} ({first}); see 'rejects' for details"
        )
    return None


def after_loading(
    db: Database[Any], settings: Settings, job_id: str, enqueue: EnqueuePartition
) -> bool:
    """Every chunk is mapped: a file with too many invalid rows fails now (nothing written
    to the store yet); otherwise the partitions not yet written are sent. True if the job
    ended here. Repeat-safe."""
    job = job_records.load_job(db, job_id)
    if job is None or job["status"] != lifecycle.RUNNING:
        return False
    totals = job_records.chunk_totals(db, job_id)
    if totals["chunks"] != job["chunks_total"]:
        return False  # not every chunk is recorded yet; the last one calls again
    rejects = job_records.first_rejects(db, job_id)
    problem = rejection_problem(totals, rejects, settings.reject_ratio)
    if problem:
        return lifecycle.fail_job(
            db,
            job_id,
            problem,
            rows_loaded=totals["rows_valid"],
            rows_rejected=totals["rows_rejected"],
            rejects=rejects,
        )
    lifecycle.start_writing(db, job_id)
    done = job_records.done_partition_indexes(db, job_id)
    for partition in range(int(job["partitions_total"])):
        if partition not in done:
            enqueue(partition)
    return False


WriteOutcome = Literal["written", "last", "ended", "skipped"]


def write_partition(
    db: Database[Any], settings: Settings, job_id: str, partition: int
) -> WriteOutcome:
    """Reduce one partition: its rows from every run file, the last row of each id, bucket
    documents inserted in batches. ``last``: every partition is written (finalize next)."""
    job = job_records.load_job(db, job_id)
    if job is None or job["status"] != lifecycle.RUNNING or job.get("phase") != "writing":
        return "skipped"
    if stop_if_superseded(db, job):
        return "ended"
    partitions = int(job["partitions_total"])
    rows = shuffle_files.read_partition(
        settings.runs_dir, job_id, int(job["chunks_total"]), partition, partitions
    )
    merged = merge(rows)
    del rows
    coll = db[datasets.collection_name(job["version"])]
    beat_at = time.monotonic()
    for count, batch in insert_batches(merged.documents, settings.insert_batch_rows):
        if time.monotonic() - beat_at >= HEARTBEAT_EVERY_S:
            if not job_records.heartbeat(db, job_id):
                return "skipped"  # the job ended meanwhile: stop writing into its collection
            beat_at = time.monotonic()
        with paced(count):  # loads yield to reads (worker/throttle.py)
            write_buckets(coll, batch)
    if not job_records.heartbeat(db, job_id):
        return "skipped"
    job_records.save_partition_result(
        db, job_id, partition, merged.rows, merged.duplicates, len(merged.documents)
    )
    counted = job_records.count_partition_done(db, job_id, partition)
    return "last" if _all_done(db, job_id, counted, "partitions") else "written"
