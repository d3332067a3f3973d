"""The finalizer: check the totals, claim the job, switch.

Written as a generator that yields after each step, so the lifecycle test can stop it after
any step, as a finalizer that dies there would; the task runs it to the end. Each step is a
lifecycle transition that is safe to repeat, so a redelivered finalizer runs them again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pymongo.database import Database

from shared.dataset import datasets, job_records, lifecycle
from shared.readpath.warmup import warm_before_switch
from shared.settings import Settings
from worker.job_steps import rejection_problem


def finalize_steps(
    db: Database[Any],
    settings: Settings,
    job_id: str,
    announce: Callable[[int], None],
) -> Iterator[str]:
    job = job_records.load_job(db, job_id)
    if job is None or job["status"] not in (lifecycle.RUNNING, lifecycle.FINALIZING):
        return
    totals = job_records.chunk_totals(db, job_id)
    if totals["chunks"] != job["chunks_total"]:
        return  # not every chunk is recorded yet; the last one to finish triggers again
    written = job_records.partition_totals(db, job_id)
    if written["partitions"] != job.get("partitions_total"):
        return  # not every partition is written yet; the last one triggers again
    rejects = job_records.first_rejects(db, job_id)
    counted: dict[str, Any] = {
        "rows_loaded": totals["rows_valid"],
        "rows_rejected": totals["rows_rejected"],
        "rejects": rejects,
        "rejects_by_reason": job_records.rejects_by_reason(db, job_id),
    }
    problem = rejection_problem(totals, rejects, settings.reject_ratio)
    if problem:
        lifecycle.fail_job(db, job_id, problem, **counted)
        return
    yield "checked"
    version = int(job["version"])
    # Exact, and free: each id lives in one partition, whose task counted it once; the
    # rows a chunk met again within itself were counted by its map task.
    distinct = written["rows"]
    duplicates = written["duplicates"] + totals["duplicates"]
    if distinct + duplicates != totals["rows_valid"]:
        lifecycle.fail_job(
            db,
            job_id,
            f"internal error: {totals['rows_valid']} valid rows were read but "
            f"{distinct + duplicates} reached the partitions; nothing was switched",
        )
        return
    yield "counted"
    if not lifecycle.claim_finalization(db, job_id, duplicates=duplicates, **counted):
        return  # the job was failed meanwhile
    yield "claimed"
    if not lifecycle.mark_ready(db, version, distinct):
        lifecycle.decide_finalization(db, job, "its version was failed while finalizing")
        return
    yield "ready"
    active = datasets.read_active_sync(db)
    held = (
        None
        if job.get("allow_shrink")
        else lifecycle.shrink_refusal(
            active.rows if active else None, distinct, settings.min_rows_ratio, version
        )
    )
    if held:
        lifecycle.hold_job(
            db, job_id, held, version, dataset_version=version, duplicates=duplicates, **counted
        )
        yield "held"
        return
    warm_before_switch(db, version)  # bounded, never raises (shared/readpath/warmup.py)
    outcome = lifecycle.activate_if_newest(db, version, distinct, job_id)
    yield "switched"
    if outcome == "barred":
        lifecycle.decide_finalization(db, job, "its version was failed while finalizing")
        return
    if outcome != "superseded":
        announce(version)
    yield "announced"
    live = "superseded by a newer upload" if outcome == "superseded" else "is live"
    lifecycle.succeed_job(
        db,
        job_id,
        f"version {version} {live} ({distinct} rows, {totals['rows_rejected']} rejected, "
        f"{duplicates} duplicates)",
        dataset_version=version,
        superseded=outcome == "superseded",
        duplicates=duplicates,
        **counted,
    )
    yield "finished"
