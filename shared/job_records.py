"""Job records: one MongoDB document per ingestion job, plus one result document per chunk.
This module holds their shape, counters and queries; status changes are in
``shared.lifecycle``.

Counters on the job document move by atomic ``$inc`` guarded by ``$addToSet`` of the chunk
index, so a redelivered chunk is counted once; pollers read one document instead of asking
Celery about every chunk. The per-chunk documents are the exact accounting the finalizer
checks the totals against.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database

from shared import job_progress
from shared.lifecycle import FINALIZING, FINISHED, JOB_STATUSES, JOBS, QUEUED, RUNNING
from shared.promotion_rows import MAX_REJECTS_KEPT, ChunkStats
from shared.timeutil import iso, now

CHUNKS = "job_chunks"
PARTITIONS = "job_partitions"

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
        "status": QUEUED,
        "phase": "queued",
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
_LISTS_OUT = {"done_chunks": 0, "done_partitions": 0}


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
) -> None:
    """Replaces what an earlier delivery of the chunk recorded."""
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
            "rejects": [list(r) for r in stats.rejects],
        },
        upsert=True,
    )


def count_chunk_done(
    db: Database[Any], job_id: str, index: int, stats: ChunkStats
) -> dict[str, Any] | None:
    """Count a finished chunk once; returns the job after the update (None if already counted
    or the job is no longer running)."""
    return db[JOBS].find_one_and_update(
        {"_id": job_id, "status": RUNNING, "done_chunks": {"$ne": index}},
        {
            "$addToSet": {"done_chunks": index},
            "$inc": {
                "chunks_done": 1,
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
                    }
                },
            ]
        )
    )
    totals = dict.fromkeys(("chunks", "rows_read", "rows_valid", "rows_rejected"), 0)
    if rows:
        totals.update({k: int(rows[0][k]) for k in totals})
    return totals


def first_rejects(db: Database[Any], job_id: str) -> list[dict[str, Any]]:
    """The first rejected rows of the file with file line numbers: per-chunk line numbers
    plus the lines of every chunk before. Reads only line counts, and rejects of the
    chunks that have some, until enough are found."""
    out: list[dict[str, Any]] = []
    lines_before = 0
    cursor = (
        db[CHUNKS]
        .find({"job_id": job_id}, {"lines": 1, "rows_rejected": 1, "index": 1})
        .sort("index", 1)
    )
    for chunk in cursor:
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
    """Unfinished jobs with no progress since ``cutoff`` - none if any unfinished job did
    progress: then workers are alive and a quiet job is only waiting its turn in the queue."""
    busy = db[JOBS].find_one(
        {"status": {"$nin": list(FINISHED)}, "updated_at": {"$gte": cutoff}}, {"_id": 1}
    )
    if busy is not None:
        return []
    return list(
        db[JOBS].find(
            {"status": {"$nin": list(FINISHED)}, "updated_at": {"$lt": cutoff}},
            {**_LISTS_OUT, "rejects": 0},
        )
    )


def delete_chunk_results(db: Database[Any], job_id: str) -> None:
    db[CHUNKS].delete_many({"job_id": job_id})
    db[PARTITIONS].delete_many({"job_id": job_id})


# --- partitions (the reduce side of the shuffle) -------------------------------------------


def done_partition_indexes(db: Database[Any], job_id: str) -> set[int]:
    doc = db[JOBS].find_one({"_id": job_id}, {"done_partitions": 1}) or {}
    return set(doc.get("done_partitions") or [])


def save_partition_result(
    db: Database[Any], job_id: str, partition: int, rows: int, duplicates: int, buckets: int
) -> None:
    """Replaces what an earlier delivery recorded (the same figures: the run files are
    the same). ``rows``: distinct ids written; ``duplicates``: rows an id met again."""
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
