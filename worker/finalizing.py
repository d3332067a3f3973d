"""The finalizer: check the totals, count the new version, claim the job, switch.

Written as a generator that yields after each step, so the lifecycle test can stop it after
any step, as a finalizer that dies there would; the task runs it to the end. Each step is a
lifecycle transition that is safe to repeat, so a redelivered finalizer runs them again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pymongo
from pymongo.database import Database

from shared import datasets, job_records, lifecycle
from shared.settings import Settings
from shared.warmup import warm_before_switch

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 5.0
COUNT_TIMEOUT_S = 3600

CountRows = Callable[[Database[Any], int, dict[str, int]], int]


def distinct_rows(db: Database[Any], version: int, totals: dict[str, int]) -> int:
    """Exact number of documents in the new version. When no write of any chunk delivery
    hit an existing id, every row written is its own document: the sum is exact and free.
    Otherwise (duplicate ids across batches, a redelivered chunk) the server counts: a
    collection scan, which through mongos leaves out orphans of chunk migrations. An
    estimate could hide rows the load lost."""
    if totals["conflicts"] == 0:
        return totals["written"]
    with pymongo.timeout(COUNT_TIMEOUT_S):  # a scan of a billion ids outlasts socket timeouts
        return int(db[datasets.collection_name(version)].count_documents({}))


@contextmanager
def beating(db: Database[Any], job_id: str, every_s: float = HEARTBEAT_EVERY_S) -> Iterator[None]:
    """Keep the job's heartbeat going during one long store call (an exact count of a
    billion rows takes up to an hour), so the watchdog does not take it for dead."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            try:
                job_records.heartbeat(db, job_id)
            except Exception as exc:  # the call being waited for will report the outage
                log.debug("heartbeat of job %s failed: %s", job_id, exc)

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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


def finalize_steps(
    db: Database[Any],
    settings: Settings,
    job_id: str,
    announce: Callable[[int], None],
    count_rows: CountRows = distinct_rows,
    heartbeat_s: float = HEARTBEAT_EVERY_S,
) -> Iterator[str]:
    job = job_records.load_job(db, job_id)
    if job is None or job["status"] not in (lifecycle.RUNNING, lifecycle.FINALIZING):
        return
    totals = job_records.chunk_totals(db, job_id)
    if totals["chunks"] != job["chunks_total"]:
        return  # not every chunk is recorded yet; the last one to finish triggers again
    rejects = job_records.first_rejects(db, job_id)
    counted: dict[str, Any] = {
        "rows_loaded": totals["rows_valid"],
        "rows_rejected": totals["rows_rejected"],
        "rejects": rejects,
    }
    problem = rejection_problem(totals, rejects, settings.reject_ratio)
    if problem:
        lifecycle.fail_job(db, job_id, problem, **counted)
        return
    yield "checked"
    version = int(job["version"])
    with beating(db, job_id, heartbeat_s):
        distinct = count_rows(db, version, totals)
    duplicates = totals["rows_valid"] - distinct
    if duplicates < 0:
        lifecycle.fail_job(
            db, job_id, f"the dataset holds {distinct} rows, more than the file's valid rows"
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
            db, job_id, held, dataset_version=version, duplicates=duplicates, **counted
        )
        yield "held"
        return
    warm_before_switch(db, version)  # bounded, never raises (shared/warmup.py)
    outcome = lifecycle.activate_if_newest(db, version, distinct, job_id)
    yield "switched"
    if outcome == "barred":
        lifecycle.decide_finalization(db, job, "its version was failed while finalizing")
        return
    if outcome != "superseded":
        announce(version)
    yield "announced"
    lifecycle.succeed_job(
        db,
        job_id,
        dataset_version=version,
        superseded=outcome == "superseded",
        duplicates=duplicates,
        **counted,
    )
    log.info(
        "job %s: -> succeeded, version %d %s (%d rows, %d rejected, %d duplicates)",
        job_id,
        version,
        "superseded by a newer upload" if outcome == "superseded" else "is live",
        distinct,
        totals["rows_rejected"],
        duplicates,
    )
    yield "finished"
