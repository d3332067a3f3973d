"""Periodic care of jobs and datasets: the watchdog, cleanup of versions, stale uploads.

Free of Celery so that the lifecycle test can run each step, and split into a read (a
snapshot, which may be stale by the time it is used) and the transitions, which are
compare-and-set and so stay right whatever happened since the read.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo.database import Database

from shared.dataset import job_records, lifecycle
from shared.errors import DropTimedOut
from shared.settings import Settings
from worker import inbox_files, paced_removal, shuffle_files

log = logging.getLogger(__name__)

# A job record is written just before its plan task is sent; one not marked sent after this
# long never will be (the sender died or the broker refused).
ENQUEUE_GRACE_S = 30.0


def watchdog(
    db: Database[Any], settings: Settings, at: datetime, requeue: Callable[[str], None]
) -> list[str]:
    """Send lost plan tasks again, end jobs nobody works on. Returns the jobs it ended.

    Loaders beat every batch, the finalizer during its count, so ``JOB_STALL_TIMEOUT_S``
    of silence means nobody is working on a job - unless no job moved at all (then workers
    may just be busy elsewhere, see ``stalled_jobs``)."""
    never_sent = db[lifecycle.JOBS].find(
        {
            "status": lifecycle.QUEUED,
            "enqueued_at": None,
            "created_at": {"$lt": at - timedelta(seconds=ENQUEUE_GRACE_S)},
        },
        {"_id": 1},
    )
    sent = set()
    for job in never_sent:
        if lifecycle.requeue_job(db, job["_id"], None):
            requeue(job["_id"])
            sent.add(job["_id"])
    cutoff = at - timedelta(seconds=settings.job_stall_timeout_s)
    ended = []
    for job in job_records.stalled_jobs(db, cutoff):
        if job["_id"] in sent:
            continue
        action = lifecycle.stalled_action(job, settings.plan_attempts)
        if action == "requeue":
            if lifecycle.requeue_job(db, job["_id"], cutoff):
                requeue(job["_id"])
            continue
        reason = (
            f"the job made no progress for {settings.job_stall_timeout_s} s (in phase "
            f"'{job['phase']}'; a worker may have died); it was stopped and the active "
            "dataset is unchanged - upload the file again"
        )
        if action == "decide":
            done = lifecycle.decide_finalization(db, job, reason, idle_since=cutoff) is not None
        else:
            done = lifecycle.fail_job(db, job["_id"], reason, idle_since=cutoff)
        if done:
            ended.append(job["_id"])
    return ended


@dataclass(frozen=True)
class CleanupPlan:
    retire: list[int]
    remove: list[int]


def plan_cleanup(db: Database[Any], keep: int, grace_s: float, at: datetime) -> CleanupPlan:
    """Collections are listed before records are read: a new version registers its record
    before creating its collection, so a fresh collection never looks record-less."""
    pointer = lifecycle.read_pointer(db)
    names = lifecycle.version_collections(db)
    records = lifecycle.read_records(db)
    cutoff = at - timedelta(seconds=grace_s)
    return CleanupPlan(
        retire=lifecycle.versions_to_retire(records, pointer, keep),
        remove=lifecycle.collections_to_remove(names, records, pointer, cutoff),
    )


def apply_cleanup(
    db: Database[Any],
    plan: CleanupPlan,
    grace_s: float,
    drop_timeout_s: float = 600.0,
    empty: lifecycle.Emptier | None = None,
) -> list[int]:
    """Returns the versions whose drop outlived ``drop_timeout_s``: they stay retired (or
    failed) and barred, and the next cleanup (periodic, beat) finishes them; the other
    versions of the plan are removed meanwhile."""
    lifecycle.repair_live_version(db)
    for version in plan.retire:
        lifecycle.retire_version(db, version)
    postponed = []
    for version in plan.remove:
        try:
            lifecycle.remove_version(db, version, grace_s, drop_timeout_s, empty)
        except DropTimedOut as exc:
            log.warning("version %d: not removed yet, the next cleanup retries: %s", version, exc)
            postponed.append(version)
    return postponed


def cleanup(db: Database[Any], settings: Settings, at: datetime) -> list[int]:
    """One cleanup run (the cleanup task's store work): plan, then apply. Returns the
    versions whose drop was postponed (``apply_cleanup``)."""
    plan = plan_cleanup(db, settings.versions_to_keep, settings.drop_grace_s, at)
    empty = paced_removal.emptier(db, settings)
    return apply_cleanup(db, plan, settings.drop_grace_s, settings.drop_timeout_s, empty)


def sweep_uploads(db: Database[Any], uploads_dir: Path, cutoff_ts: float) -> None:
    """Files in uploads/ that nothing will ever read: partial uploads of an API that died
    on another host (a live upload keeps its mtime fresh) and stored files whose job is
    gone or finished (an API killed between storing and recording, a lost cleanup). A file
    whose job may still run is never removed."""
    if not uploads_dir.is_dir():
        return
    unfinished = {
        job["file"]
        for job in db[lifecycle.JOBS].find(
            {"status": {"$in": list(lifecycle.UNFINISHED)}}, {"file": 1}
        )
    }
    # A drop-folder claim that has no job yet holds a partner's only copy: the inbox scan
    # gives it back (worker/inbox.py recover_dead_claims), this sweep never deletes it.
    for job_id in inbox_files.marked_claims(uploads_dir):
        unfinished.update(path.name for path in inbox_files.claim_files(uploads_dir, job_id))
    for path in uploads_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if path.name not in unfinished and path.stat().st_mtime < cutoff_ts:
                log.info("removing stale upload file %s", path.name)
                path.unlink()


def sweep_runs(db: Database[Any], runs_dir: Path) -> None:
    """Run files of jobs that ended or are gone: a clean-up lost with its worker, or a map
    task that finished writing after its job ended. A running job's files are never
    touched."""
    for job_id in shuffle_files.job_ids_with_runs(runs_dir):
        job = db[lifecycle.JOBS].find_one({"_id": job_id}, {"status": 1})
        if job is None or job["status"] in lifecycle.FINISHED:
            log.info("removing run files of ended job %s", job_id)
            shuffle_files.remove_job_runs(runs_dir, job_id)
