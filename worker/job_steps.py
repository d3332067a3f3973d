"""The work of the plan and chunk tasks, free of Celery so the lifecycle test can run it.

Both steps are idempotent: a redelivered plan records nothing new and enqueues the recorded
plan's chunks again; a redelivered chunk re-inserts rows already there (same file
positions, no-ops) and is counted once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pymongo.database import Database

from shared import datasets, job_records, lifecycle, reject_report
from shared.chunking import LineTooLong, chunk_size_for, plan_chunks, read_range
from shared.file_checks import SNIFF_BYTES, sniff_problem
from shared.promotion_rows import ChunkStats, parse_chunk
from shared.settings import Settings
from worker.chunk_writer import write_batch
from worker.throttle import paced

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 5.0

EnqueueChunk = Callable[[int, int, int], None]  # (index, start, end)


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
        chunk_size, chunks = _plan_file(path, settings.chunk_size_bytes, job.get("chunk_size"))
    except PlanProblem as exc:
        return lifecycle.fail_job(db, job_id, str(exc))
    datasets.create_version_collection(db, version, settings.shard_version_collections)
    recorded = lifecycle.record_plan(db, job_id, len(chunks), chunk_size)
    if recorded != chunk_size:  # an earlier delivery planned first, with other settings
        chunk_size, chunks = _plan_file(path, settings.chunk_size_bytes, recorded)
    log.info(
        "job %s: %d chunks of %d bytes -> version %d", job_id, len(chunks), chunk_size, version
    )
    done = job_records.done_chunk_indexes(db, job_id)
    for index, (start, end) in enumerate(chunks):
        if index not in done:
            enqueue(index, start, end)
    return False


class PlanProblem(Exception):
    """The file cannot be split; the message is for the user."""


def _plan_file(
    path: Path, configured: int, recorded: int | None
) -> tuple[int, list[tuple[int, int]]]:
    if not path.exists():
        raise PlanProblem("the uploaded file is missing from the shared volume")
    size = path.stat().st_size
    with path.open("rb") as f:
        problem = sniff_problem(f.read(SNIFF_BYTES), is_whole_file=size <= SNIFF_BYTES)
        if problem:
            raise PlanProblem(problem)
        chunk_size = recorded or chunk_size_for(size, configured)
        try:
            return chunk_size, plan_chunks(f, size, chunk_size)
        except LineTooLong as exc:
            raise PlanProblem(str(exc)) from exc


LoadOutcome = Literal["loaded", "last", "ended", "skipped"]


def load(
    db: Database[Any], settings: Settings, job_id: str, index: int, start: int, end: int
) -> LoadOutcome:
    """Load one chunk. ``last``: it was the last one counted (finalize next); ``ended``:
    this delivery ended the job (superseded); ``skipped``: the job is not loading."""
    job = job_records.load_job(db, job_id)
    if job is None or job["status"] != lifecycle.RUNNING:
        return "skipped"
    if stop_if_superseded(db, job):
        return "ended"
    coll = db[datasets.collection_name(job["version"])]
    with (settings.uploads_dir / job["file"]).open("rb") as f:
        data = read_range(f, start, end)
    report = reject_report.ChunkReport(settings.rejects_dir, job_id, index)
    stats = ChunkStats(on_reject=report.add)
    beat_at = 0.0
    written = conflicts = 0
    for batch in parse_chunk(data, start, settings.insert_batch_rows, stats):
        if time.monotonic() - beat_at >= HEARTBEAT_EVERY_S:
            if not job_records.heartbeat(db, job_id):
                return "skipped"  # the job ended meanwhile: stop writing into its collection
            beat_at = time.monotonic()
        written += len(batch)
        with paced(len(batch)):  # loads yield to reads (worker/throttle.py)
            conflicts += write_batch(coll, list(batch.values()))
    del data
    report.save()
    if not job_records.heartbeat(db, job_id):
        return "skipped"  # ended meanwhile: its chunk results were already removed
    job_records.save_chunk_result(
        db, job_id, index, start, end, stats, written=written, conflicts=conflicts
    )
    updated = job_records.count_chunk_done(db, job_id, index, stats)
    if updated is None:  # counted by an earlier delivery, which may have died before this
        updated = job_records.load_job(db, job_id)
    if (
        updated is not None
        and updated["status"] == lifecycle.RUNNING
        and updated["chunks_done"] == updated["chunks_total"]
    ):
        return "last"
    return "loaded"
