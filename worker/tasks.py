"""Ingestion tasks: plan a job into line-aligned chunks, load chunks in parallel, finalize.

Every task may run more than once (late acks, redelivery after a crash), so each one is
idempotent: chunk results are recorded per chunk index, the switch of the active dataset is
a compare-and-set, and a job finishes only once. Anything that goes wrong ends the job
``failed`` with a sentence a user can act on, and the active dataset is never touched.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pymongo
from celery import Task
from kombu.exceptions import OperationalError
from pymongo.database import Database

from shared import datasets, job_records
from shared.chunking import LineTooLong, chunk_size_for, plan_chunks, read_range
from shared.file_checks import SNIFF_BYTES, sniff_problem
from shared.log_context import job_id_var
from shared.mongo import UNAVAILABLE_ERRORS
from shared.pointer_channel import announce_active
from shared.promotion_rows import ChunkStats, parse_chunk
from shared.settings import get_settings
from shared.task_names import (
    CLEANUP_DATASETS,
    FAIL_STALLED_JOBS,
    FINALIZE_JOB,
    LOAD_CHUNK,
    PLAN_JOB,
)
from shared.timeutil import now
from worker.celery_app import app
from worker.chunk_writer import write_batch
from worker.store import database

log = logging.getLogger(__name__)
settings = get_settings()

# Broker hiccups while enqueueing the next tasks are retried like store outages.
RETRYABLE_ERRORS = (*UNAVAILABLE_ERRORS, OperationalError)
UPLOAD_NAME = re.compile(r"[0-9a-f]{32}\.csv")
HEARTBEAT_EVERY_S = 5.0
COUNT_TIMEOUT_S = 3600


class IngestTask(Task):  # type: ignore[misc]
    """Retries store outages with backoff; when retries run out, the job fails clearly."""

    autoretry_for = RETRYABLE_ERRORS
    max_retries = settings.task_max_retries
    retry_backoff = settings.task_retry_backoff_s
    retry_backoff_max = 60
    retry_jitter = True
    acks_late = True
    # A process killed mid-task (OOM, SIGKILL) is retried after a short delay and counted
    # against max_retries, so a chunk that kills every process it runs on cannot loop
    # forever; when retries run out the job stops moving and the watchdog fails it.
    retry_on_worker_lost = True
    default_retry_delay = 2

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Every log line of the task carries its job id."""
        token = job_id_var.set(args[0] if args else kwargs.get("job_id"))
        try:
            return super().__call__(*args, **kwargs)
        finally:
            job_id_var.reset(token)

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job_id = args[0] if args else kwargs.get("job_id")
        if not job_id:
            return
        if isinstance(exc, RETRYABLE_ERRORS):
            reason = (
                f"the store was unavailable during {self.name.split('.')[-1]} "
                f"and stayed so after {self.max_retries} retries "
                f"({type(exc).__name__}: {str(exc)[:200]})"
            )
        else:
            reason = f"internal error in {self.name.split('.')[-1]}: {type(exc).__name__}: {exc}"
        try:
            fail_job(database(), job_id, reason, settle=self.name == FINALIZE_JOB)
        except RETRYABLE_ERRORS:
            log.error("job %s failed (%s) and could not be marked failed", job_id, reason)


def upload_path(file_name: str) -> Path:
    return settings.uploads_dir / file_name


def fail_job(
    db: Database[Any],
    job_id: str,
    error: str,
    idle_since: datetime | None = None,
    settle: bool = False,
    **fields: Any,
) -> None:
    """End a job that cannot complete. Once the finalizer has claimed the job, only
    ``settle`` callers (the finalizer's own failure, the watchdog) may end it: whether its
    data went live decides the outcome. Repeat-safe: a job already failed only gets its
    version record repaired."""
    job = job_records.load_job(db, job_id)
    if job is None or job["status"] == job_records.SUCCEEDED:
        return
    version = job["version"]
    if job["status"] == job_records.FAILED:
        datasets.mark_failed(db, version)  # what an interrupted earlier call may have left
        return
    if job.get("finalizing"):
        if settle:
            _settle_finalization(db, job, error, idle_since)
        return
    if not job_records.finish_job(
        db,
        job_id,
        job_records.FAILED,
        idle_since=idle_since,
        not_finalizing=True,
        error=error,
        **fields,
    ):
        return  # it moved (watchdog), the finalizer claimed it, or it ended meanwhile
    log.warning("job %s failed: %s", job_id, error)
    datasets.mark_failed(db, version)
    _clean_up_after(db, job)


def _settle_finalization(
    db: Database[Any], job: dict[str, Any], error: str, idle_since: datetime | None
) -> None:
    """The finalizer failed or died after claiming the job."""
    version = job["version"]
    active = datasets.read_active_sync(db)
    if active is not None and active.version == version:
        job_records.finish_job(
            db, job["_id"], job_records.SUCCEEDED, idle_since, dataset_version=version
        )
    elif job_records.finish_job(
        db,
        job["_id"],
        job_records.FAILED,
        idle_since,
        error=f"{error}; version {version} was loaded completely but not activated",
    ):
        datasets.mark_failed(db, version, (datasets.BUILDING, datasets.READY))
    _clean_up_after(db, job)


def _clean_up_after(db: Database[Any], job: dict[str, Any]) -> None:
    """A job ended: its chunk results go now; the upload file and versions beyond the keep
    count now, and their collections once the grace period has passed."""
    job_records.delete_chunk_results(db, job["_id"])
    cleanup_datasets.apply_async(kwargs={"file_name": job.get("file")})
    cleanup_datasets.apply_async(countdown=settings.drop_grace_s + 5)


def _stop_superseded(db: Database[Any], job: dict[str, Any]) -> bool:
    """Loading an older upload once a newer one is live is wasted work."""
    newer = datasets.newer_version_live(db, job["version"])
    if newer is None:
        return False
    fail_job(
        db,
        job["_id"],
        f"superseded: a newer upload (dataset version {newer}) went live before this one "
        "finished loading, so loading stopped; the newer data is serving",
        superseded=True,
    )
    return True


@app.task(base=IngestTask, name=PLAN_JOB, bind=True)
def plan_job(self: Task, job_id: str) -> None:
    db = database()
    job = job_records.start_job(db, job_id, "splitting")
    if job is None:
        return  # finished already (redelivery) or unknown
    path = upload_path(job["file"])
    version = job["version"]
    job_records.ensure_indexes(db)
    datasets.register_version(db, version, job_id)
    if not job_records.heartbeat(db, job_id):  # failed (watchdog) while this task waited
        datasets.mark_failed(db, version)
        return
    if _stop_superseded(db, job):
        return
    if not path.exists():
        fail_job(db, job_id, "the uploaded file is missing from the shared volume")
        return
    size = path.stat().st_size
    with path.open("rb") as f:
        problem = sniff_problem(f.read(SNIFF_BYTES), is_whole_file=size <= SNIFF_BYTES)
        if problem:
            fail_job(db, job_id, problem)
            return
        try:
            chunks = plan_chunks(f, size, chunk_size_for(size, settings.chunk_size_bytes))
        except LineTooLong as exc:
            fail_job(db, job_id, str(exc))
            return
    datasets.create_version_collection(db, version, settings.shard_version_collections)
    job_records.set_plan(db, job_id, len(chunks))
    log.info("job %s: %d bytes in %d chunks -> version %d", job_id, size, len(chunks), version)
    for index, (start, end) in enumerate(chunks):
        load_chunk.apply_async(args=[job_id, index, start, end], task_id=f"{job_id}-chunk-{index}")


@app.task(base=IngestTask, name=LOAD_CHUNK, bind=True)
def load_chunk(self: Task, job_id: str, index: int, start: int, end: int) -> None:
    db = database()
    job = job_records.load_job(db, job_id)
    if job is None or job["status"] != job_records.RUNNING or _stop_superseded(db, job):
        return
    coll = db[datasets.collection_name(job["version"])]
    with upload_path(job["file"]).open("rb") as f:
        data = read_range(f, start, end)
    stats = ChunkStats()
    beat_at = 0.0
    written = conflicts = 0
    for batch in parse_chunk(data, start, settings.insert_batch_rows, stats):
        if time.monotonic() - beat_at >= HEARTBEAT_EVERY_S:
            if not job_records.heartbeat(db, job_id):
                return  # the job failed meanwhile: stop writing into its collection
            beat_at = time.monotonic()
        written += len(batch)
        conflicts += write_batch(coll, list(batch.values()))
    del data
    if not job_records.heartbeat(db, job_id):
        return  # ended meanwhile: its chunk results were already removed
    job_records.save_chunk_result(
        db, job_id, index, start, end, stats, written=written, conflicts=conflicts
    )
    updated = job_records.count_chunk_done(db, job_id, index, stats)
    if updated is None:  # counted by an earlier delivery, which may have died before this
        updated = job_records.load_job(db, job_id)
    if (
        updated is not None
        and updated["status"] == job_records.RUNNING
        and updated["chunks_done"] == updated["chunks_total"]
    ):
        finalize_job.apply_async(args=[job_id])


def _rejection_problem(totals: dict[str, int], rejects: list[dict[str, Any]]) -> str | None:
    read, valid, rejected = totals["rows_read"], totals["rows_valid"], totals["rows_rejected"]
    first = f"first: line {rejects[0]['line']}: {rejects[0]['reason']}" if rejects else ""
    if read == 0:
        return "the file has no data rows"
    if valid == 0:
        return f"none of the {read} rows is valid ({first})"
    if rejected / read > settings.reject_ratio:
        return (
            f"{rejected} of {read} rows ({rejected / read:.2%}) are invalid, more than the "
            f"allowed {settings.reject_ratio:.2%} ({first}); see 'rejects' for details"
        )
    return None


def _distinct_rows(db: Database[Any], version: int, totals: dict[str, int]) -> int:
    """Exact number of documents in the new version. When no write of any chunk delivery
    hit an existing id, every row written is its own document: the sum is exact and free.
    Otherwise (duplicate ids across batches, a redelivered chunk) the server counts: a
    collection scan, which through mongos leaves out orphans of chunk migrations. An
    estimate could hide rows the load lost."""
    if totals["conflicts"] == 0:
        return totals["written"]
    with pymongo.timeout(COUNT_TIMEOUT_S):  # a scan of a billion ids outlasts socket timeouts
        return int(db[datasets.collection_name(version)].count_documents({}))


@app.task(base=IngestTask, name=FINALIZE_JOB, bind=True)
def finalize_job(self: Task, job_id: str) -> None:
    db = database()
    job = job_records.start_job(db, job_id, "activating")
    if job is None:
        return
    totals = job_records.chunk_totals(db, job_id)
    if totals["chunks"] != job["chunks_total"]:
        return  # not every chunk is recorded yet; the last one to finish triggers again
    rejects = job_records.first_rejects(db, job_id)
    counted = {"rows_loaded": totals["rows_valid"], "rows_rejected": totals["rows_rejected"]}
    problem = _rejection_problem(totals, rejects)
    if problem:
        fail_job(db, job_id, problem, rejects=rejects, **counted)
        return
    version = job["version"]
    distinct = _distinct_rows(db, version, totals)
    duplicates = totals["rows_valid"] - distinct
    if duplicates < 0:
        fail_job(db, job_id, f"the dataset holds {distinct} rows, more than the file's valid rows")
        return
    if not job_records.claim_finalization(db, job_id):
        return  # the job was failed meanwhile
    if not datasets.mark_ready(db, version, rows=distinct, ready_at=now()):
        return  # the watchdog settled it as failed; its version stays out of reach
    activated = datasets.activate_if_newest(db, version, distinct, job_id)
    datasets.settle_version(db, version)
    if activated:
        announce_active(settings.redis_url.get_secret_value(), version)
    job_records.finish_job(
        db,
        job_id,
        job_records.SUCCEEDED,
        dataset_version=version,
        superseded=not activated,
        duplicates=duplicates,
        rejects=rejects,
        **counted,
    )
    log.info(
        "job %s: version %d %s (%d rows, %d rejected, %d duplicates)",
        job_id,
        version,
        "is live" if activated else "was superseded by a newer upload",
        distinct,
        totals["rows_rejected"],
        duplicates,
    )
    _clean_up_after(db, job)


@app.task(name=FAIL_STALLED_JOBS)
def fail_stalled_jobs() -> int:
    """Watchdog (periodic): a job whose tasks were all lost (worker host gone, broker
    flushed) would otherwise stay ``running`` forever. Loaders beat every batch, so
    ``JOB_STALL_TIMEOUT_S`` of silence means nobody is working on it."""
    db = database()
    cutoff = now() - timedelta(seconds=settings.job_stall_timeout_s)
    stalled = job_records.stalled_jobs(db, cutoff)
    for job in stalled:
        fail_job(
            db,
            job["_id"],
            f"the job made no progress for {settings.job_stall_timeout_s} s (in phase "
            f"'{job['phase']}'; a worker may have died); it was stopped and the active "
            "dataset is unchanged - upload the file again",
            idle_since=cutoff,
            settle=True,
        )
    _sweep_uploads(db, cutoff.timestamp())
    return len(stalled)


def _sweep_uploads(db: Database[Any], cutoff_ts: float) -> None:
    """Files in uploads/ that nothing will ever read: partial uploads of an API that died
    on another host (a live upload keeps its mtime fresh) and stored files whose job is
    gone or finished (an API killed between storing and recording, a lost cleanup)."""
    directory = settings.uploads_dir
    if not directory.is_dir():
        return
    unfinished = {
        job["file"]
        for job in db[job_records.JOBS].find(
            {"status": {"$nin": list(job_records.FINISHED)}}, {"file": 1}
        )
    }
    for path in directory.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if path.name not in unfinished and path.stat().st_mtime < cutoff_ts:
                log.info("removing stale upload file %s", path.name)
                path.unlink()


@app.task(name=CLEANUP_DATASETS, acks_late=True)
def cleanup_datasets(file_name: str | None = None) -> None:
    """Mark versions beyond the keep count dropped, drop collections of versions failed or
    dropped longer than the grace period ago, remove a finished job's upload. Off the
    request path, periodic too, and safe to run any time and concurrently."""
    db = database()
    for version in datasets.versions_to_drop(db, settings.versions_to_keep):
        datasets.mark_dropped(db, version)
    for name in datasets.collections_to_drop(db, settings.drop_grace_s):
        log.info("dropping collection %s", name)
        db.drop_collection(name)
    if file_name and UPLOAD_NAME.fullmatch(file_name):
        upload_path(file_name).unlink(missing_ok=True)
