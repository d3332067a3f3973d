"""Job records: one MongoDB document per ingestion job, plus one result document per chunk.
This module holds their shape, counters and queries; status changes are in
``shared.dataset.lifecycle``.

Counters on the job document move by atomic ``$inc`` guarded by ``$addToSet`` of the chunk
index, so a redelivered chunk is counted once; pollers read one document instead of asking
Celery about every chunk. The per-chunk documents are the exact accounting the finalizer
checks the totals against.
"""

from __future__ import annotations

import operator
import zlib
from array import array
from datetime import datetime, timedelta
from typing import Any

from bson.binary import Binary
from pymongo import DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from shared.dataset import job_progress, lifecycle
from shared.dataset.lifecycle import FINALIZING, FINISHED, JOB_STATUSES, JOBS, RUNNING
from shared.fileformat.promotion_rows import MAX_REJECTS_KEPT, ChunkStats
from shared.infra.timeutil import iso, now

CHUNKS = "job_chunks"
PARTITIONS = "job_partitions"
# Who reduces a partition now, until when (a lease renewed while it works).
PARTITION_LEASES = "job_partition_leases"

PUBLIC_FIELDS = (
    "status",
    "phase",
    "source",
    "bytes_total",
    "chunks_total",
    "chunks_done",
    "partitions_total",
    "partitions_done",
    "rows_loaded",
    "rows_rejected",
    "duplicates",
    "rejects",
    "rejects_by_reason",
    "dataset_version",
    "superseded",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "original_name",
    "allow_shrink",
)


def new_job(
    job_id: str,
    version: int,
    file_name: str,
    bytes_total: int,
    source: str,
    original_name: str | None = None,
    allow_shrink: bool = False,
) -> dict[str, Any]:
    """The one definition of a job record, for uploads (API) and drop-folder files (worker).
    ``original_name`` is what the partner called the file: kept for operators, never a path."""
    return {
        "_id": job_id,
        "status": lifecycle.transition(lifecycle.JOB_TRANSITIONS, "new_job").target,
        "phase": lifecycle.transition(lifecycle.PHASE_TRANSITIONS, "new_job").target,
        "enqueued_at": None,  # set once the plan task is with the broker
        "allow_shrink": allow_shrink,  # the shrink guard does not apply
        "plan_attempts": 1,
        "source": source,
        "original_name": original_name,
        "file": file_name,
        "version": version,
        "bytes_total": bytes_total,
        "chunks_total": None,
        "chunks_done": 0,
        "done_chunks": [],
        "partitions_total": None,
        "partitions_done": 0,
        "done_partitions": [],
        "rows_loaded": 0,
        "rows_rejected": 0,
        "duplicates": 0,
        "rejects": [],
        "dataset_version": None,
        "superseded": False,
        "error": None,
        "created_at": now(),
        "started_at": None,
        "finished_at": None,
        "updated_at": now(),
    }


# Per-index bookkeeping of a job: long lists nobody but the counters needs to read.
_LISTS_OUT = {"done_chunks": 0, "done_partitions": 0, "partition_bounds": 0}


def public_job(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"job_id": doc["_id"]}
    for key in PUBLIC_FIELDS:
        out[key] = iso(doc.get(key))
    out.update(job_progress.progress_fields(doc, now()))  # rows/s, ETA, phase durations
    return out


def ensure_indexes(db: Database[Any]) -> None:
    """Idempotent; for the listing (newest first), the watchdog, /metrics and per-job chunk
    reads."""
    db[JOBS].create_index([("created_at", DESCENDING)])
    db[JOBS].create_index([("status", 1), ("updated_at", 1)])
    db[JOBS].create_index([("finished_at", DESCENDING)])  # the last job, for /metrics
    db[CHUNKS].create_index([("job_id", 1), ("index", 1)])
    db[PARTITIONS].create_index([("job_id", 1)])


# --- async side (API) -----------------------------------------------------------------


async def create_job(db: AsyncDatabase[Any], doc: dict[str, Any]) -> None:
    await db[JOBS].insert_one(doc)


async def delete_job(db: AsyncDatabase[Any], job_id: str) -> None:
    await db[JOBS].delete_one({"_id": job_id})


async def mark_enqueued(db: AsyncDatabase[Any], job_id: str) -> None:
    """The plan task is with the broker: from now on only a stall makes the watchdog send
    it again (a job never marked is sent again at once)."""
    await db[JOBS].update_one({"_id": job_id}, {"$set": {"enqueued_at": now()}})


async def get_job(db: AsyncDatabase[Any], job_id: str) -> dict[str, Any] | None:
    return await db[JOBS].find_one({"_id": job_id}, _LISTS_OUT)


async def list_jobs(db: AsyncDatabase[Any], limit: int) -> list[dict[str, Any]]:
    cursor = db[JOBS].find({}, {**_LISTS_OUT, "rejects": 0}).sort("created_at", DESCENDING)
    return [doc async for doc in cursor.limit(limit)]


async def count_by_status(db: AsyncDatabase[Any]) -> dict[str, int]:
    """Every status, zero included, so dashboards see a series drop to 0."""
    counts: dict[str, int] = dict.fromkeys(JOB_STATUSES, 0)
    cursor = await db[JOBS].aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}])
    async for doc in cursor:
        counts[str(doc["_id"])] = int(doc["n"])
    return counts


# --- sync side (worker) ---------------------------------------------------------------


def insert_job(db: Database[Any], doc: dict[str, Any]) -> None:
    db[JOBS].insert_one(doc)


def mark_enqueued_sync(db: Database[Any], job_id: str) -> None:
    db[JOBS].update_one({"_id": job_id}, {"$set": {"enqueued_at": now()}})


def load_job(db: Database[Any], job_id: str) -> dict[str, Any] | None:
    return db[JOBS].find_one({"_id": job_id}, _LISTS_OUT)


def done_chunk_indexes(db: Database[Any], job_id: str) -> set[int]:
    doc = db[JOBS].find_one({"_id": job_id}, {"done_chunks": 1}) or {}
    return set(doc.get("done_chunks") or [])


def save_chunk_result(
    db: Database[Any],
    job_id: str,
    index: int,
    start: int,
    end: int,
    stats: ChunkStats,
    duplicates: int = 0,
    slice_counts: list[int] | None = None,
    listed: int | None = None,
    by_reason: dict[str, int] | None = None,
) -> bool:
    """Replaces what an earlier delivery of the chunk recorded; False (nothing kept) if the
    job has ended (``kept_unless_ended``). ``duplicates``: rows an
    id met again later in the chunk (the map keeps only the last); ``slice_counts``: the
    rows it wrote to each slice of the shuffle, the exact figures the reduce side is sized
    from (uint32s, deflated: mostly zeros for small chunks, 16 KiB at most for 4096);
    ``listed``: rejected lines the chunk's report lists in full; ``by_reason``: its rejects
    counted by kind of reason."""
    db[CHUNKS].replace_one(
        {"_id": f"{job_id}:{index}"},
        {
            "job_id": job_id,
            "index": index,
            "start": start,
            "end": end,
            "lines": stats.lines,
            "rows_read": stats.rows_read,
            "rows_valid": stats.rows_valid,
            "rows_rejected": stats.rows_rejected,
            "duplicates": duplicates,
            "rejects_listed": stats.rows_rejected if listed is None else listed,
            "rejects_by_reason": sorted((by_reason or {}).items()),
            "slice_counts": Binary(zlib.compress(array("I", slice_counts or []).tobytes(), 1)),
            "rejects": [list(r) for r in stats.rejects],
        },
        upsert=True,
    )
    return _kept_unless_ended(db, CHUNKS, f"{job_id}:{index}", job_id)


def _kept_unless_ended(db: Database[Any], collection: str, record_id: str, job_id: str) -> bool:
    """A job's clean-up deletes its per-chunk and per-partition records once the job has
    ended. A write that lands after that would stay forever: a worker that checked the job
    was running, then stalled before its write (its host cut off from the network, seen in
    the cluster test) writes when it is back, long after. So the job is read again *after*
    the write: ended by then, the record is taken back here; still running, its clean-up
    comes later and takes this record with the others."""
    job = db[JOBS].find_one({"_id": job_id}, {"status": 1})
    if job is not None and job["status"] not in FINISHED:
        return True
    db[collection].delete_one({"_id": record_id})
    return False


def rejects_by_reason(db: Database[Any], job_id: str) -> list[dict[str, Any]]:
    """Every reject of the job's recorded chunks, counted by kind of reason (values
    quoted in a reason left out), most frequent first: the part of the reject report
    whose size does not grow with the file."""
    out: dict[str, int] = {}
    query = {"job_id": job_id, "rows_rejected": {"$gt": 0}}
    for chunk in db[CHUNKS].find(query, {"rejects_by_reason": 1}):
        for kind, n in chunk.get("rejects_by_reason") or []:
            out[kind] = out.get(kind, 0) + int(n)
    ranked = sorted(out.items(), key=lambda item: (-item[1], item[0]))
    return [{"reason": kind, "rows": n} for kind, n in ranked]


def slice_counts(db: Database[Any], job_id: str, slices: int) -> list[int]:
    """Rows per slice over every recorded chunk of a job (what its run files hold)."""
    totals = [0] * slices
    for chunk in db[CHUNKS].find({"job_id": job_id}, {"slice_counts": 1}):
        counts = array("I")
        counts.frombytes(zlib.decompress(bytes(chunk["slice_counts"])))
        if len(counts) != slices:
            raise ValueError(f"chunk result {chunk['_id']} has {len(counts)} slices, not {slices}")
        totals = list(map(operator.add, totals, counts))
    return totals


def partition_slices(db: Database[Any], job_id: str, partition: int) -> tuple[int, int]:
    """The slices ``[first, end)`` a reduce task reads."""
    doc = db[JOBS].find_one({"_id": job_id}, {"partition_bounds": 1}) or {}
    bounds = doc.get("partition_bounds") or []
    if partition + 1 >= len(bounds):
        raise ValueError(f"job {job_id} has no partition {partition}")
    return int(bounds[partition]), int(bounds[partition + 1])


def count_chunk_done(
    db: Database[Any], job_id: str, index: int, stats: ChunkStats, chunk_bytes: int = 0
) -> dict[str, Any] | None:
    """Count a finished chunk once; returns the job after the update (None if already counted
    or the job is no longer running)."""
    return db[JOBS].find_one_and_update(
        {"_id": job_id, "status": RUNNING, "done_chunks": {"$ne": index}},
        {
            "$addToSet": {"done_chunks": index},
            "$inc": {
                "chunks_done": 1,
                "bytes_done": chunk_bytes,
                "rows_loaded": stats.rows_valid,
                "rows_rejected": stats.rows_rejected,
            },
            "$set": {"updated_at": now()},
        },
        projection={**_LISTS_OUT, "rejects": 0},
        return_document=ReturnDocument.AFTER,
    )


def chunk_totals(db: Database[Any], job_id: str) -> dict[str, int]:
    """Sums over the recorded chunks, computed by the server (a job may have 100k chunks)."""
    rows = list(
        db[CHUNKS].aggregate(
            [
                {"$match": {"job_id": job_id}},
                {
                    "$group": {
                        "_id": None,
                        "chunks": {"$sum": 1},
                        "rows_read": {"$sum": "$rows_read"},
                        "rows_valid": {"$sum": "$rows_valid"},
                        "rows_rejected": {"$sum": "$rows_rejected"},
                        "duplicates": {"$sum": "$duplicates"},
                    }
                },
            ]
        )
    )
    keys = ("chunks", "rows_read", "rows_valid", "rows_rejected", "duplicates")
    totals = dict.fromkeys(keys, 0)
    if rows:
        totals.update({k: int(rows[0][k]) for k in totals})
    return totals


def first_rejects(db: Database[Any], job_id: str) -> list[dict[str, Any]]:
    """The first rejected rows of the file with file line numbers: per-chunk line numbers
    plus the lines of every chunk before. Reads only line counts, and rejects of the
    chunks that have some, until enough are found. A missing chunk (a job stopped early)
    ends it: the lines before the chunks after it are unknown."""
    out: list[dict[str, Any]] = []
    lines_before = 0
    cursor = (
        db[CHUNKS]
        .find({"job_id": job_id}, {"lines": 1, "rows_rejected": 1, "index": 1})
        .sort("index", 1)
    )
    for expected, chunk in enumerate(cursor):
        if int(chunk["index"]) != expected:
            break
        if chunk["rows_rejected"]:
            full = db[CHUNKS].find_one({"_id": chunk["_id"]}, {"rejects": 1}) or {}
            for line, reason in full.get("rejects", []):
                out.append({"line": lines_before + line, "reason": reason})
                if len(out) >= MAX_REJECTS_KEPT:
                    return out
        lines_before += chunk["lines"]
    return out


def heartbeat(db: Database[Any], job_id: str) -> bool:
    """Mark progress (the watchdog fails jobs that stop moving); False if the job is no
    longer running, so its loaders stop writing."""
    result = db[JOBS].update_one(
        {"_id": job_id, "status": {"$in": [RUNNING, FINALIZING]}}, {"$set": {"updated_at": now()}}
    )
    return result.matched_count == 1


def stalled_jobs(db: Database[Any], cutoff: datetime) -> list[dict[str, Any]]:
    """Unfinished jobs with no progress since ``cutoff``, each judged by its own progress:
    a quiet job is only waiting its turn while a job that may hold tasks ahead of it in the
    queue moves. Its pending tasks were sent at its last progress at the latest, so only
    jobs created before that can hold tasks ahead of them; jobs created later queue behind
    them and never hide a job whose tasks were lost (back-to-back loads used to)."""
    unfinished = {"status": {"$nin": list(FINISHED)}}
    quiet = list(
        db[JOBS].find({**unfinished, "updated_at": {"$lt": cutoff}}, {**_LISTS_OUT, "rejects": 0})
    )
    if not quiet:
        return []
    moving = [
        doc["created_at"]
        for doc in db[JOBS].find({**unfinished, "updated_at": {"$gte": cutoff}}, {"created_at": 1})
    ]
    return [job for job in quiet if not any(created < job["updated_at"] for created in moving)]


def delete_chunk_results(db: Database[Any], job_id: str) -> None:
    db[CHUNKS].delete_many({"job_id": job_id})
    db[PARTITIONS].delete_many({"job_id": job_id})
    db[PARTITION_LEASES].delete_many({"job_id": job_id})


def claim_partition(
    db: Database[Any], job_id: str, partition: int, owner: str, lease_s: float
) -> bool:
    """Take the partition for ``lease_s`` unless another delivery holds it: a reduce that
    outlived the broker's visibility timeout is delivered again while it still runs, and
    the two copies must not reduce it side by side (twice the memory). A holder that died
    leaves a lease that runs out; the next delivery takes it then."""
    at = now()
    lease = {"job_id": job_id, "owner": owner, "until": at + timedelta(seconds=lease_s)}
    key = f"{job_id}:{partition}"
    taken = db[PARTITION_LEASES].update_one(
        {"_id": key, "$or": [{"owner": owner}, {"until": {"$lt": at}}]}, {"$set": lease}
    )
    if taken.matched_count:
        return True
    try:
        db[PARTITION_LEASES].insert_one({"_id": key, **lease})
    except DuplicateKeyError:
        return False  # held by a live delivery (or taken just now by another)
    return True


def renew_partition(
    db: Database[Any], job_id: str, partition: int, owner: str, lease_s: float
) -> bool:
    """Extend the lease while working; False if another delivery took it over (this one
    was stalled past its lease): then this one stops."""
    result = db[PARTITION_LEASES].update_one(
        {"_id": f"{job_id}:{partition}", "owner": owner},
        {"$set": {"until": now() + timedelta(seconds=lease_s)}},
    )
    return result.matched_count == 1


def release_partition(db: Database[Any], job_id: str, partition: int, owner: str) -> None:
    db[PARTITION_LEASES].delete_one({"_id": f"{job_id}:{partition}", "owner": owner})


# --- partitions (the reduce side of the shuffle) -------------------------------------------


def done_partition_indexes(db: Database[Any], job_id: str) -> set[int]:
    doc = db[JOBS].find_one({"_id": job_id}, {"done_partitions": 1}) or {}
    return set(doc.get("done_partitions") or [])


def save_partition_result(
    db: Database[Any], job_id: str, partition: int, rows: int, duplicates: int, buckets: int
) -> bool:
    """Replaces what an earlier delivery recorded (the same figures: the run files are
    the same); False (nothing kept) if the job has ended. ``rows``: distinct ids written;
    ``duplicates``: rows an id met again."""
    db[PARTITIONS].replace_one(
        {"_id": f"{job_id}:{partition}"},
        {
            "job_id": job_id,
            "partition": partition,
            "rows": rows,
            "duplicates": duplicates,
            "buckets": buckets,
        },
        upsert=True,
    )
    return _kept_unless_ended(db, PARTITIONS, f"{job_id}:{partition}", job_id)


def count_partition_done(db: Database[Any], job_id: str, partition: int) -> dict[str, Any] | None:
    """Count a written partition once; the job after the update, or None if already
    counted or the job is no longer running."""
    return db[JOBS].find_one_and_update(
        {"_id": job_id, "status": RUNNING, "done_partitions": {"$ne": partition}},
        {
            "$addToSet": {"done_partitions": partition},
            "$inc": {"partitions_done": 1},
            "$set": {"updated_at": now()},
        },
        projection={**_LISTS_OUT, "rejects": 0},
        return_document=ReturnDocument.AFTER,
    )


def partition_totals(db: Database[Any], job_id: str) -> dict[str, int]:
    """Sums over the written partitions: the version's exact row count, with no scan."""
    rows = list(
        db[PARTITIONS].aggregate(
            [
                {"$match": {"job_id": job_id}},
                {
                    "$group": {
                        "_id": None,
                        "partitions": {"$sum": 1},
                        "rows": {"$sum": "$rows"},
                        "duplicates": {"$sum": "$duplicates"},
                        "buckets": {"$sum": "$buckets"},
                    }
                },
            ]
        )
    )
    totals = dict.fromkeys(("partitions", "rows", "duplicates", "buckets"), 0)
    if rows:
        totals.update({k: int(rows[0][k]) for k in totals})
    return totals
