"""The work of the plan, chunk and partition tasks, free of Celery so the lifecycle test
can run it. Loading is a shuffle (docs/architecture.md):

- plan: split the file into line-aligned chunks; nothing is guessed from the file's first
  lines (docs/scaling.md);
- map, one task per chunk: parse and validate its rows, keep each id's last row of the
  chunk, write them to a run file grouped by slice of a fixed hash space
  (``worker/shuffle_files.py``) and record the exact rows per slice;
- layout, once every chunk is mapped: the bucket count from the real row count, and the
  slices coalesced into reduce tasks of at most ``ROWS_PER_PARTITION`` rows
  (``shared.fileformat.bucket_layout``);
- reduce, one task per partition: read its slices from every run file, keep each id's last
  row, insert the bucket documents. A partition over the bound (one hash range alone holds
  more) is merged externally (``worker/external_merge.py``), never read whole.

Every step is idempotent: a redelivered plan records nothing new and enqueues the recorded
plan's chunks again; a redelivered map writes the same run file again; a redelivered reduce
finds its buckets already inserted (same run files, same documents). Each is counted once.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pymongo.database import Database

from shared.dataset import datasets, job_records, lifecycle, reject_report
from shared.errors import PermanentError
from shared.fileformat.bucket_layout import buckets_for, coalesce, group_slices
from shared.fileformat.file_checks import SNIFF_BYTES, sniff_problem
from shared.fileformat.promotion_rows import MAX_REJECTS_KEPT, ChunkStats, parse_chunk_rows
from shared.infra.safe_files import UnsafeFile, open_regular
from shared.settings import Settings
from worker import shuffle_files
from worker.bucket_writer import insert_batches, merge, write_buckets
from worker.chunking import LineTooLong, chunk_size_for, plan_chunks, read_range
from worker.external_merge import Counts, merge_external
from worker.throttle import paced

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 5.0
# Fewer bytes than any valid row takes with its line break ("a,1,2018-08-04 05:32:31\n" is
# 24; kept well below, so a looser date grammar cannot make the early stop wrong).
SHORTEST_ROW_BYTES = 12

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
    file_bytes = (settings.uploads_dir / job["file"]).stat().st_size
    recorded = lifecycle.record_plan(db, job_id, version, len(chunks), chosen, file_bytes)
    if recorded.chunk_size != chosen.chunk_size:  # an earlier delivery planned first
        _, chunks = _plan_file(path, settings, job_id, recorded.chunk_size)
    log.info(
        "job %s: %d chunks of %d bytes into %d slices -> version %d",
        job_id,
        len(chunks),
        recorded.chunk_size,
        recorded.slices,
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
    mean_line = shuffle_files.mean_row_bytes(sample)
    report = reject_report.space_bound(settings.reject_report_max_lines, len(chunks))
    # A redelivered plan of a job that already planned found room then, and its loads may be
    # under way: checking again could fail a job whose run files are already written.
    if recorded_chunk_size is None:
        problem = shuffle_files.room_problem(
            settings.runs_dir, job_id, size, mean_line, settings.min_free_bytes, report
        )
        if problem:
            raise PlanProblem(problem)
        with shuffle_files.volume_full_is_permanent("the run files' reservation"):
            shuffle_files.reserve_room(settings.runs_dir, job_id, size, mean_line, report)
    return lifecycle.Plan(chunk_size, settings.shuffle_slices), chunks


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
    report = reject_report.ChunkReport(
        settings.rejects_dir,
        job_id,
        index,
        reject_report.lines_per_chunk(settings.reject_report_max_lines, int(job["chunks_total"])),
        settings.min_free_bytes,
    )
    stats = ChunkStats(on_reject=report.add)
    with shuffle_files.volume_full_is_permanent("the reject report"):
        keys, elements = parse_chunk_rows(data, start, stats)
    del data
    if not job_records.heartbeat(db, job_id):
        return "skipped"  # the job ended meanwhile
    kept_keys, kept_elements = shuffle_files.keep_last(keys, elements)
    duplicates = len(keys) - len(kept_keys)
    del keys, elements
    with shuffle_files.volume_full_is_permanent("the run files"):
        shuffle_files.ensure_room(
            settings.runs_dir,
            job_id,
            index,
            shuffle_files.run_file_bytes(kept_keys, kept_elements, int(job["slices"])),
            settings.min_free_bytes,
        )
        counts = shuffle_files.write_chunk_runs(
            settings.runs_dir, job_id, index, kept_keys, kept_elements, int(job["slices"])
        )
    del kept_keys, kept_elements
    with shuffle_files.volume_full_is_permanent("the reject report"):
        report.save()
    if not job_records.heartbeat(db, job_id):
        return "skipped"  # ended meanwhile: its chunk results were already removed
    if not job_records.save_chunk_result(
        db, job_id, index, start, end, stats, duplicates, counts, report.listed, report.by_reason
    ):
        return "skipped"  # ended while this delivery stalled after the heartbeat
    counted = job_records.count_chunk_done(db, job_id, index, stats, end - start)
    if counted is not None and hopeless(counted, settings.reject_ratio):
        # Proven by the last chunk to be counted, the file was read whole: not "early".
        early = counted["chunks_done"] < counted["chunks_total"]
        return "ended" if _fail_for_rejects(db, settings, job_id, early) else "skipped"
    return "last" if _all_done(db, job_id, counted, "chunks") else "loaded"


def hopeless(job: dict[str, Any], reject_ratio: float) -> bool:
    """Whether the chunks mapped so far already prove the file has too many invalid rows,
    whatever the rest holds: even if every byte not yet mapped were valid rows as short as
    a valid row can be (``SHORTEST_ROW_BYTES``), the share of invalid rows would stay over
    the limit. Never a guess: a file that could still pass is mapped to the end. A file of
    nothing but bad rows stops after about ``reject_ratio`` x 6.5 of its bytes (77-byte
    rows) instead of being mapped whole, its report and run files with it."""
    rejected = int(job.get("rows_rejected", 0))
    if not rejected:
        return False
    read = rejected + int(job.get("rows_loaded", 0))
    if not job.get("file_bytes"):
        return False
    remaining = max(0, int(job["file_bytes"]) - int(job.get("bytes_done", 0)))
    return rejected > reject_ratio * (read + remaining / SHORTEST_ROW_BYTES)


def _fail_for_rejects(db: Database[Any], settings: Settings, job_id: str, early: bool) -> bool:
    """Fail a job whose file has too many invalid rows, with the counts of the chunks mapped
    (all of them, or the ones that proved it early). True if this call ended it."""
    totals = job_records.chunk_totals(db, job_id)
    rejects = job_records.first_rejects(db, job_id)
    problem = rejection_problem(totals, rejects, settings.reject_ratio)
    if problem is None:
        return False
    if early:
        problem += (
            "; loading stopped early: the rows already read prove it, whatever the rest of "
            "the file holds"
        )
    return lifecycle.fail_job(
        db,
        job_id,
        problem,
        rows_loaded=totals["rows_valid"],
        rows_rejected=totals["rows_rejected"],
        rejects=rejects,
        rejects_by_reason=job_records.rejects_by_reason(db, job_id),
    )


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
    if _fail_for_rejects(db, settings, job_id, early=False):
        return True
    layout = lifecycle.start_writing(
        db, job_id, int(job["version"]), plan_layout(db, settings, job)
    )
    if layout is None:
        return False  # ended meanwhile
    log.info(
        "job %s: %d buckets, %d partitions (at most %d rows each)",
        job_id,
        layout.buckets,
        layout.partitions,
        settings.rows_per_partition,
    )
    done = job_records.done_partition_indexes(db, job_id)
    for partition in range(layout.partitions):
        if partition not in done:
            enqueue(partition)
    return False


def plan_layout(db: Database[Any], settings: Settings, job: dict[str, Any]) -> lifecycle.Layout:
    """The reduce side from the map's exact counts (after each chunk kept only each id's
    last row): buckets for the rows there are, reduce tasks of whole slice groups, at most
    ``ROWS_PER_PARTITION`` rows each and at least ``MIN_PARTITIONS`` of them where there
    are rows enough (every worker process has one to write)."""
    slices = int(job["slices"])
    counts = job_records.slice_counts(db, job["_id"], slices)
    rows = sum(counts)
    buckets = buckets_for(rows, settings.rows_per_bucket, slices)
    bound = max(1, min(settings.rows_per_partition, -(-rows // settings.min_partitions)))
    return lifecycle.Layout(buckets, coalesce(counts, group_slices(buckets, slices), bound))


WriteOutcome = Literal["written", "last", "ended", "skipped", "busy"]


def write_partition(
    db: Database[Any],
    settings: Settings,
    job_id: str,
    partition: int,
    insert_db: Database[Any] | None = None,
) -> WriteOutcome:
    """Reduce one partition: its rows from every run file, the last row of each id, bucket
    documents inserted in batches. ``last``: every partition is written (finalize next);
    ``busy``: another delivery is reducing it now (send this one again later).

    One delivery at a time per partition, by a lease (``job_records.claim_partition``)
    as long as the broker's visibility timeout and renewed with every heartbeat: a copy
    redelivered while the first still works finds it held; one whose holder died finds it
    run out. A partition already counted is not reduced again.

    ``insert_db``: the handle the bucket inserts go through (a worker passes
    ``task_insert_database``: without retryable writes); ``db`` when not given."""
    job = job_records.load_job(db, job_id)
    if job is None or job["status"] != lifecycle.RUNNING or job.get("phase") != "writing":
        return "skipped"
    if stop_if_superseded(db, job):
        return "ended"
    if partition in job_records.done_partition_indexes(db, job_id):
        return "last" if _all_done(db, job_id, None, "partitions") else "written"
    owner = uuid.uuid4().hex
    lease_s = settings.broker_visibility_timeout_s
    if not job_records.claim_partition(db, job_id, partition, owner, lease_s):
        log.info("job %s: partition %d is being reduced by another delivery", job_id, partition)
        return "busy"
    try:
        counts = Counts()
        inserts = db if insert_db is None else insert_db
        written = _reduce(db, inserts, settings, job, partition, owner, counts)
        if written is None or not job_records.heartbeat(db, job_id):
            return "skipped"  # the job ended, or another delivery took the partition over
        if not job_records.save_partition_result(
            db, job_id, partition, counts.rows, counts.duplicates, written
        ):
            return "skipped"  # ended while this delivery stalled after the heartbeat
        counted = job_records.count_partition_done(db, job_id, partition)
    finally:
        job_records.release_partition(db, job_id, partition, owner)
    return "last" if _all_done(db, job_id, counted, "partitions") else "written"


def _reduce(
    db: Database[Any],
    insert_db: Database[Any],
    settings: Settings,
    job: dict[str, Any],
    partition: int,
    owner: str,
    counts: Counts,
) -> int | None:
    """Insert the partition's bucket documents; the number inserted, or None if it had to
    stop (the job ended, or the lease was lost)."""
    job_id = job["_id"]
    first, end = job_records.partition_slices(db, job_id, partition)
    documents = partition_documents(settings, job, partition, first, end, counts)
    coll = insert_db[datasets.collection_name(job["version"])]
    beat_at = time.monotonic()
    written = 0
    for count, batch in insert_batches(documents, settings.insert_batch_rows):
        if time.monotonic() - beat_at >= HEARTBEAT_EVERY_S:
            if not job_records.heartbeat(db, job_id):
                return None  # the job ended meanwhile: stop writing into its collection
            lease_s = settings.broker_visibility_timeout_s
            if not job_records.renew_partition(db, job_id, partition, owner, lease_s):
                log.warning("job %s: partition %d was taken over; stopping", job_id, partition)
                return None
            beat_at = time.monotonic()
        with paced(count):  # loads yield to reads (worker/throttle.py)
            write_buckets(coll, batch)
        written += len(batch)
    return written


def partition_documents(
    settings: Settings, job: dict[str, Any], partition: int, first: int, end: int, counts: Counts
) -> Iterator[tuple[int, bytes]]:
    """The partition's bucket documents in ascending bucket order. Its rows are read chunk
    by chunk; if they pass ``ROWS_PER_PARTITION`` (one slice group alone holds more: the
    plan never puts two groups together over the bound) the rest goes through an external
    merge, so a reduce never holds more than about that many rows (plus one chunk's)."""
    bound = settings.rows_per_partition
    buckets = int(job["buckets"])
    batches = shuffle_files.chunk_rows(
        settings.runs_dir, job["_id"], int(job["chunks_total"]), first, end, int(job["slices"])
    )
    held = shuffle_files.PartitionRows([], [])
    for batch in batches:
        held.keys += batch.keys
        held.elements += batch.elements
        if len(held.keys) > bound:
            log.info(
                "job %s: partition %d passes %d rows: external merge", job["_id"], partition, bound
            )
            box = [held]
            del held, batch  # the merge takes them over
            yield from merge_external(
                _handed_over(box, batches),
                buckets,
                bound,
                settings.runs_dir,
                job["_id"],
                partition,
                counts,
            )
            return
    merged = merge(held, buckets)
    del held
    counts.rows, counts.duplicates = merged.rows, merged.duplicates
    yield from merged.documents


def _handed_over(
    box: list[shuffle_files.PartitionRows], rest: Iterator[shuffle_files.PartitionRows]
) -> Iterator[shuffle_files.PartitionRows]:
    """``box``'s rows, then ``rest``, keeping no reference to the rows already handed on."""
    yield box.pop()
    yield from rest
