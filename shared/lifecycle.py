"""The dataset lifecycle: job states, version states and the pointer, as one model.

Everything that can happen to an upload and to the dataset it becomes is a named transition
here, each one compare-and-set on the store, so that concurrent and repeated task
deliveries, the watchdog, cleanup and operators cannot race into a wrong state. The
decisions (a job's outcome, which versions to retire, which collections to remove) are plain
functions over snapshots, testable without services. README "Dataset lifecycle" has the
diagram and the invariants this module keeps:

1. The pointer names a ``ready`` version whose collection exists.
2. A collection is removed only when no pointer value of the last ``DROP_GRACE_S`` named it.
3. An accepted file ends in a finished job or stays retriable; it is deleted only after its
   job ended.
4. A succeeded job's version holds exactly its distinct valid rows.
5. The keep policy keeps the newest settled versions and always the active one.

The pointer document is the arbiter of what may be read: it names the live version, keeps a
short history of the versions it named and until when (invariant 2), and a ``barred`` set of
versions that must never be named again (failed after being loaded, or being removed). A
version is barred *on the pointer document* before its collection is dropped or it is
declared failed, so the single-document atomicity of MongoDB decides every race between
"make it live" and "make it go away", on a replica set and through mongos alike.
Clocks: ``until`` and the grace period use the hosts' clocks; skew must stay far below
``DROP_GRACE_S`` (120 s by default).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from shared.datasets import (
    ACTIVE_ID,
    COLLECTION_PREFIX,
    META_COLLECTION,
    VERSION_RECORDS,
    ActiveDataset,
    collection_name,
    version_doc_id,
)
from shared.errors import drop_deadline
from shared.timeutil import now

log = logging.getLogger(__name__)

JOBS = "jobs"

JobStatus = Literal["queued", "running", "finalizing", "succeeded", "failed", "held"]
QUEUED: JobStatus = "queued"
RUNNING: JobStatus = "running"
# Claimed by the finalizer: from here on only it (or, if it dies, the watchdog) ends the job,
# and whether its data went live decides the outcome.
FINALIZING: JobStatus = "finalizing"
SUCCEEDED: JobStatus = "succeeded"
FAILED: JobStatus = "failed"
# Loaded completely, kept ready, not switched to: it would shrink the dataset more than
# MIN_ROWS_RATIO allows. An operator activates it (the job then succeeds) or a newer one wins.
HELD: JobStatus = "held"
JOB_STATUSES: tuple[JobStatus, ...] = (QUEUED, RUNNING, FINALIZING, SUCCEEDED, FAILED, HELD)
FINISHED: tuple[JobStatus, ...] = (SUCCEEDED, FAILED, HELD)
UNFINISHED: tuple[JobStatus, ...] = (QUEUED, RUNNING, FINALIZING)

VersionState = Literal["building", "ready", "failed", "retired", "removed"]
BUILDING: VersionState = "building"
READY: VersionState = "ready"
FAILED_VERSION: VersionState = "failed"
# Beyond the keep count: no longer offered, collection kept until the grace period passed.
RETIRED: VersionState = "retired"
REMOVED: VersionState = "removed"  # collection dropped; the record stays for the listing

# Pointer history entries kept: far more switches than can happen within a grace period.
HISTORY_KEPT = 32


class ActivationRefused(Exception):
    """A version cannot go live; the message is for the operator."""


# --- snapshots and pure decisions ------------------------------------------------------


@dataclass(frozen=True)
class Pointer:
    version: int | None
    high_water: int
    history: tuple[tuple[int, datetime], ...]  # (version, until), oldest first
    barred: frozenset[int]

    @classmethod
    def from_doc(cls, doc: dict[str, Any] | None) -> Pointer:
        doc = doc or {}
        version = doc.get("version")
        return cls(
            version=int(version) if version is not None else None,
            high_water=int(doc.get("high_water", 0)),
            history=tuple((int(h["version"]), h["until"]) for h in doc.get("history", [])),
            barred=frozenset(int(v) for v in doc.get("barred", [])),
        )

    def named_since(self, version: int, cutoff: datetime) -> bool:
        """Whether the pointer named ``version`` at any time since ``cutoff``. When history
        older than ``cutoff`` was cut off, the answer is yes: not knowing is not "no"."""
        if self.version == version:
            return True
        if any(v == version and until >= cutoff for v, until in self.history):
            return True
        return len(self.history) >= HISTORY_KEPT and self.history[0][1] >= cutoff

    def ever_named(self, version: int) -> bool:
        return self.version == version or any(v == version for v, _ in self.history)


def _not_named_since(version: int, cutoff: datetime) -> dict[str, Any]:
    """``Pointer.named_since`` as a query on the pointer document (negated)."""
    return {
        "version": {"$ne": version},
        "history": {"$not": {"$elemMatch": {"version": version, "until": {"$gte": cutoff}}}},
        "$or": [
            {f"history.{HISTORY_KEPT - 1}": {"$exists": False}},
            {"history.0.until": {"$lt": cutoff}},
        ],
    }


@dataclass(frozen=True)
class VersionRecord:
    version: int
    state: VersionState
    collection: str
    since: datetime | None  # when it entered its current state, for failed/retired
    activated_at: datetime | None
    held: bool = False  # loaded and kept, not switched to (the shrink guard)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> VersionRecord:
        state = doc.get("state", BUILDING)
        if state == "dropped":  # the name before ``retired``
            state = RETIRED
        return cls(
            version=int(doc["version"]),
            state=state,
            collection=doc.get("collection", collection_name(int(doc["version"]))),
            since=doc.get("retired_at") or doc.get("dropped_at") or doc.get("failed_at"),
            activated_at=doc.get("activated_at"),
            held=doc.get("held_at") is not None,
        )


def versions_to_retire(records: list[VersionRecord], pointer: Pointer, keep: int) -> list[int]:
    """Ready versions beyond the newest ``keep`` (the active one counts and always stays).
    Only *settled* versions count: a ready version newer than ``high_water`` may be a job
    between marking it ready and switching to it, so it is never retired. Versions that
    once served come first, newest first: a version the shrink guard held and a newer
    upload then passed must not push out the last dataset that was live before it (the
    rollback an operator wants), however its number compares.

    Held versions (the shrink guard kept them ready, not switched to) are newer than every
    switch, so never settled: a newer held version releases the older held ones instead
    (only the newest held one waits for an operator), and once a newer version goes live
    they are settled and counted like any other. So held versions never pile up."""
    newest_held = max(
        (
            r.version
            for r in records
            if r.held and r.state == READY and r.version != pointer.version
        ),
        default=None,
    )
    released = [
        r.version
        for r in records
        if r.held
        and r.state == READY
        and pointer.high_water < r.version < (newest_held or 0)
        and r.version != pointer.version
    ]
    settled = sorted(
        (
            r
            for r in records
            if r.state == READY and r.version <= pointer.high_water and r.version != pointer.version
        ),
        key=lambda r: (went_live(r, pointer, r.version), r.version),
        reverse=True,
    )
    room = keep - (1 if pointer.version is not None else 0)
    return [r.version for r in settled[max(room, 0) :]] + sorted(released, reverse=True)


def collections_to_remove(
    names: list[str], records: list[VersionRecord], pointer: Pointer, cutoff: datetime
) -> list[int]:
    """Versions whose collection nothing will read again: failed or retired before
    ``cutoff``, barred, or with no record at all; and not named by the pointer since
    ``cutoff``. Also failed or retired versions that are barred and whose collection is
    gone: a drop that outlived its deadline, which the store finished by itself, still
    has its record moved to removed."""
    by_name = {r.collection: r for r in records}
    present = set(names)
    out = [
        r.version
        for r in records
        if r.collection not in present
        and r.version in pointer.barred
        and r.state in (FAILED_VERSION, RETIRED)
        and r.since is not None
        and r.since < cutoff
        and not pointer.named_since(r.version, cutoff)
    ]
    for name in names:
        suffix = name.removeprefix(COLLECTION_PREFIX)
        if not name.startswith(COLLECTION_PREFIX) or not suffix.isdigit():
            continue
        version = int(suffix)
        record = by_name.get(name)
        expired = record is None or (
            record.state in (FAILED_VERSION, RETIRED)
            and record.since is not None
            and record.since < cutoff
        )
        # A barred version is never live again (a remover may have died after barring it).
        if not expired and not (version in pointer.barred and record and record.state != BUILDING):
            continue
        if not pointer.named_since(version, cutoff):
            out.append(version)
    return out


def went_live(record: VersionRecord | None, pointer: Pointer, version: int) -> bool:
    """Whether a version was ever switched to: the outcome of a job whose finalizer died."""
    return (record is not None and record.activated_at is not None) or pointer.ever_named(version)


def shrink_refusal(
    active_rows: int | None, new_rows: int, min_ratio: float, version: int
) -> str | None:
    """Why a complete version must not replace the active one (a truncated export would
    wipe most promotions), or None. Off with ``min_ratio`` 0: every valid file replaces the
    whole dataset, as the contract says."""
    if min_ratio <= 0 or not active_rows or new_rows >= min_ratio * active_rows:
        return None
    return (
        f"held: version {version} has {new_rows} rows, {new_rows / active_rows:.1%} of the "
        f"{active_rows} rows serving now, below MIN_ROWS_RATIO ({min_ratio:.0%}); it is loaded "
        f"and kept but not live. To make it live: POST /datasets/{version}/activate (or "
        "upload the file again with allow_shrink=true)"
    )


StalledAction = Literal["requeue", "fail", "decide"]


def stalled_action(job: dict[str, Any], plan_attempts: int) -> StalledAction:
    """What the watchdog does with a job nobody is working on. A queued job never started:
    nothing is lost by sending it again (``plan_attempts`` times at most). A running one
    may have half its chunks loaded by dead workers: it fails. A finalizing one is decided
    by whether its data went live."""
    if job["status"] == QUEUED and int(job.get("plan_attempts", 1)) < plan_attempts:
        return "requeue"
    if job["status"] == FINALIZING:
        return "decide"
    return "fail"


# --- reading ------------------------------------------------------------------------------


def read_pointer(db: Database[Any]) -> Pointer:
    return Pointer.from_doc(db[META_COLLECTION].find_one({"_id": ACTIVE_ID}))


def read_records(db: Database[Any]) -> list[VersionRecord]:
    return [VersionRecord.from_doc(d) for d in db[META_COLLECTION].find(VERSION_RECORDS)]


def read_record(db: Database[Any], version: int) -> VersionRecord | None:
    doc = db[META_COLLECTION].find_one({"_id": version_doc_id(version)})
    return VersionRecord.from_doc(doc) if doc else None


def version_collections(db: Database[Any]) -> list[str]:
    return [n for n in db.list_collection_names() if n.startswith(COLLECTION_PREFIX)]


# --- job transitions ------------------------------------------------------------------------


def _job_update(db: Database[Any], query: dict[str, Any], update: dict[str, Any]) -> bool:
    return db[JOBS].update_one(query, update).modified_count == 1


def requeue_job(db: Database[Any], job_id: str, idle_since: datetime | None) -> bool:
    """queued -> queued, counted: the plan task was lost or never sent."""
    query: dict[str, Any] = {"_id": job_id, "status": QUEUED}
    if idle_since is not None:
        query["updated_at"] = {"$lt": idle_since}
    else:
        query["enqueued_at"] = None
    moved = _job_update(db, query, {"$set": {"updated_at": now()}, "$inc": {"plan_attempts": 1}})
    if moved:
        log.warning("job %s: queued but its plan task is lost; sending it again", job_id)
    return moved


def start_job(db: Database[Any], job_id: str) -> dict[str, Any] | None:
    """queued -> running (a redelivered plan finds it running). None if it is finalizing
    or finished: nothing to plan."""
    at = now()
    db[JOBS].update_one(
        {"_id": job_id, "status": QUEUED},
        {
            "$set": {
                "status": RUNNING,
                "phase": "splitting",
                "phase_at.splitting": at,
                "started_at": at,
                "updated_at": at,
            }
        },
    )
    return db[JOBS].find_one_and_update(
        {"_id": job_id, "status": RUNNING},
        {"$set": {"updated_at": at}},
        projection={"done_chunks": 0, "done_partitions": 0},
        return_document=ReturnDocument.AFTER,
    )


@dataclass(frozen=True)
class Plan:
    """How a job's file is split and shuffled; the first plan recorded is the job's."""

    chunk_size: int
    slices: int  # the shuffle's hash space (shared.bucket_layout)


def record_plan(
    db: Database[Any], job_id: str, version: int, chunks_total: int, plan: Plan, file_bytes: int
) -> Plan:
    """The first plan of a job wins; returns the recorded one, so a redelivered planner
    enqueues the very same chunks (counts are per chunk index) into the very same slices.
    The layout (buckets, reduce tasks) is recorded after the map, from its exact counts
    (``start_writing``)."""
    at = now()
    doc = db[JOBS].find_one_and_update(
        {"_id": job_id, "status": RUNNING, "chunks_total": None},
        {
            "$set": {
                "chunks_total": chunks_total,
                "chunk_size": plan.chunk_size,
                "slices": plan.slices,
                "file_bytes": file_bytes,  # as stored (bytes_total may be gzip's)
                "phase": "loading",
                "phase_at.loading": at,
                "updated_at": at,
            }
        },
        projection={"chunk_size": 1, "slices": 1},
        return_document=ReturnDocument.AFTER,
    )
    if doc is None:
        doc = db[JOBS].find_one({"_id": job_id}, {"chunk_size": 1, "slices": 1}) or {}
    return Plan(
        chunk_size=int(doc.get("chunk_size") or plan.chunk_size),
        slices=int(doc.get("slices") or plan.slices),
    )


@dataclass(frozen=True)
class Layout:
    """The reduce side, sized from the map's exact counts: the version's bucket count and
    the reduce tasks as slice bounds (task ``p`` reduces slices ``[bounds[p], bounds[p+1])``)."""

    buckets: int
    bounds: list[int]

    @property
    def partitions(self) -> int:
        return len(self.bounds) - 1


def start_writing(db: Database[Any], job_id: str, version: int, layout: Layout) -> Layout | None:
    """Phase loading -> writing (status stays running), recording the layout: every chunk
    is parsed and shuffled; the partitions' buckets are written next. Repeat-safe: the
    first layout recorded is the job's (the same counts give the same one anyway), and is
    returned; None if the job is not running. The version record learns its bucket count
    here: readers need it."""
    at = now()
    db[JOBS].update_one(
        {"_id": job_id, "status": RUNNING, "phase": "loading"},
        {
            "$set": {
                "phase": "writing",
                "phase_at.writing": at,
                "updated_at": at,
                "buckets": layout.buckets,
                "partitions_total": layout.partitions,
                "partition_bounds": layout.bounds,
            }
        },
    )
    doc = db[JOBS].find_one(
        {"_id": job_id, "status": RUNNING, "phase": "writing"},
        {"buckets": 1, "partition_bounds": 1},
    )
    if doc is None:
        return None
    recorded = Layout(int(doc["buckets"]), [int(b) for b in doc["partition_bounds"]])
    db[META_COLLECTION].update_one(
        {"_id": version_doc_id(version), "buckets": {"$exists": False}},
        {"$set": {"buckets": recorded.buckets}},
    )
    return recorded


def fail_job(
    db: Database[Any],
    job_id: str,
    error: str,
    *,
    idle_since: datetime | None = None,
    **fields: Any,
) -> bool:
    """queued | running -> failed, and its version (still building) -> failed. With
    ``idle_since`` (the watchdog) only if the job has not moved since. A job the finalizer
    has claimed is not failed here: ``decide_finalization`` ends those."""
    query: dict[str, Any] = {"_id": job_id, "status": {"$in": [QUEUED, RUNNING]}}
    if idle_since is not None:
        query["updated_at"] = {"$lt": idle_since}
    job = db[JOBS].find_one_and_update(
        query,
        {
            "$set": {
                "status": FAILED,
                "phase": "done",
                "finished_at": now(),
                "updated_at": now(),
                "error": error,
                **fields,
            },
            "$unset": {"done_chunks": "", "done_partitions": ""},
        },
        projection={"version": 1},
    )
    if job is None:
        return False
    log.warning("job %s: -> failed: %s", job_id, error)
    fail_version(db, int(job["version"]))
    return True


def claim_finalization(db: Database[Any], job_id: str, **counts: Any) -> bool:
    """running -> finalizing, recording the job's final counts (rows, rejects, duplicates)
    so that however the job ends from here - the finalizer, or the watchdog if it dies - its
    record says what was loaded. True too for a redelivered finalizer of a claimed job."""
    result = db[JOBS].update_one(
        {"_id": job_id, "status": {"$in": [RUNNING, FINALIZING]}},
        {
            "$set": {"status": FINALIZING, "phase": "activating", "updated_at": now(), **counts},
            "$min": {"phase_at.activating": now()},  # a redelivered finalizer keeps the first
        },
    )
    return result.matched_count == 1


def _end_finalization(
    db: Database[Any],
    job_id: str,
    status: JobStatus,
    idle_since: datetime | None,
    **fields: Any,
) -> bool:
    query: dict[str, Any] = {"_id": job_id, "status": FINALIZING}
    if idle_since is not None:
        query["updated_at"] = {"$lt": idle_since}
    return _job_update(
        db,
        query,
        {
            "$set": {
                "status": status,
                "phase": "done",
                "finished_at": now(),
                "updated_at": now(),
                **fields,
            },
            "$unset": {"done_chunks": "", "done_partitions": ""},
        },
    )


def succeed_job(db: Database[Any], job_id: str, **fields: Any) -> bool:
    """finalizing -> succeeded (the finalizer's last step)."""
    return _end_finalization(db, job_id, SUCCEEDED, None, **fields)


def hold_job(db: Database[Any], job_id: str, reason: str, version: int, **fields: Any) -> bool:
    """finalizing -> held: its version is ready and kept, not switched to. The version
    record says so (first), for the keep policy: a newer held version releases it."""
    db[META_COLLECTION].update_one(
        {"_id": version_doc_id(version), "held_at": {"$exists": False}},
        {"$set": {"held_at": now()}},
    )
    held = _end_finalization(db, job_id, HELD, None, error=reason, **fields)
    if held:
        log.warning("job %s: -> held: %s", job_id, reason)
    return held


def decide_finalization(
    db: Database[Any], job: dict[str, Any], error: str, idle_since: datetime | None = None
) -> JobStatus | None:
    """finalizing -> succeeded | failed, for a finalizer that failed or died: the job
    succeeded if its version ever went live; otherwise the version is barred and failed
    first, so a finalizer that wakes up later can no longer switch to it. None if the job
    was not finalizing (or moved since ``idle_since``)."""
    version = int(job["version"])
    live = went_live(read_record(db, version), read_pointer(db), version)
    if not live and not fail_version(db, version):
        live = True  # it became live meanwhile: the pointer names it
    if live:
        pointer = read_pointer(db)
        done = _end_finalization(
            db,
            job["_id"],
            SUCCEEDED,
            idle_since,
            dataset_version=version,
            superseded=pointer.version != version,
        )
        status: JobStatus = SUCCEEDED
    else:
        done = _end_finalization(
            db,
            job["_id"],
            FAILED,
            idle_since,
            error=f"{error}; version {version} was loaded but never went live",
        )
        status = FAILED
    if not done:
        return None
    log.warning("job %s: finalization did not complete (%s) -> %s", job["_id"], error, status)
    return status


# --- version transitions ----------------------------------------------------------------


def register_version(
    db: Database[Any], version: int, job_id: str, buckets: int | None = None
) -> None:
    """-> building; idempotent (a redelivered planner finds the record there). A job
    records the bucket count later, once its map is done (``start_writing``)."""
    fields: dict[str, Any] = {
        "version": version,
        "collection": collection_name(version),
        "job_id": job_id,
        "state": BUILDING,
        "created_at": now(),
    }
    if buckets is not None:
        fields["buckets"] = buckets
    db[META_COLLECTION].update_one(
        {"_id": version_doc_id(version)}, {"$setOnInsert": fields}, upsert=True
    )


def _version_update(
    db: Database[Any], version: int, states: tuple[VersionState, ...], update: dict[str, Any]
) -> bool:
    result = db[META_COLLECTION].update_one(
        {"_id": version_doc_id(version), "state": {"$in": list(states)}}, update
    )
    return result.matched_count == 1


def mark_ready(db: Database[Any], version: int, rows: int) -> bool:
    """building -> ready once every row is in (repeat-safe); False if it failed meanwhile."""
    return _version_update(
        db, version, (BUILDING, READY), {"$set": {"state": READY, "rows": rows, "ready_at": now()}}
    )


def fail_version(db: Database[Any], version: int) -> bool:
    """building | ready -> failed. A ready version is barred on the pointer first; False
    (nothing changed) if the pointer names it: then it is live, not failed."""
    failed = {"$set": {"state": FAILED_VERSION, "failed_at": now()}}
    if _version_update(db, version, (BUILDING,), failed):
        return True
    record = read_record(db, version)
    if record is None or record.state != READY:
        return True  # failed already, or never registered
    if not _bar(db, version, {"version": {"$ne": version}}):
        return False
    return _version_update(db, version, (READY,), failed)


SwitchOutcome = Literal["switched", "already", "superseded", "barred"]


def _ensure_pointer(db: Database[Any]) -> None:
    with contextlib.suppress(DuplicateKeyError):
        db[META_COLLECTION].insert_one(
            {"_id": ACTIVE_ID, "version": None, "high_water": 0, "history": [], "barred": []}
        )


def _bar(db: Database[Any], version: int, guard: dict[str, Any]) -> bool:
    """Put ``version`` in the pointer's barred set if ``guard`` holds on the pointer."""
    _ensure_pointer(db)
    result = db[META_COLLECTION].update_one(
        {"_id": ACTIVE_ID, **guard}, {"$addToSet": {"barred": version}}
    )
    return result.matched_count == 1


def _switch(
    db: Database[Any], version: int, fields: dict[str, Any], newest_only: bool
) -> SwitchOutcome:
    """Move the pointer to ``version``, recording what it named before and until when.
    Optimistic: the update matches only the pointer value just read."""
    _ensure_pointer(db)
    meta = db[META_COLLECTION]
    while True:
        pointer = read_pointer(db)
        if version in pointer.barred:
            return "barred"
        if newest_only and pointer.high_water >= version:
            return "already" if pointer.ever_named(version) else "superseded"
        if pointer.version == version and not newest_only:
            return "already"
        at = now()
        update: dict[str, Any] = {
            "$set": {"version": version, "activated_at": at, **fields},
            "$max": {"high_water": version},
        }
        if pointer.version is not None:
            update["$push"] = {
                "history": {
                    "$each": [{"version": pointer.version, "until": at}],
                    "$slice": -HISTORY_KEPT,
                }
            }
        query: dict[str, Any] = {
            "_id": ACTIVE_ID,
            "version": pointer.version,
            "barred": {"$ne": version},
            "high_water": pointer.high_water,
        }
        if meta.update_one(query, update).matched_count == 1:
            return "switched"


def _revive(db: Database[Any], version: int, **fields: Any) -> bool:
    """retired (or ready) -> ready."""
    return _version_update(
        db,
        version,
        (READY, RETIRED),
        {"$set": {"state": READY, **fields}, "$unset": {"retired_at": ""}},
    )


def _confirm_live(db: Database[Any], version: int) -> None:
    """After the pointer names a version: ready again if a cleanup retired it meanwhile."""
    _revive(db, version, activated_at=now())


def _buckets(db: Database[Any], version: int) -> int | None:
    """Readers learn the layout of the live version with the pointer, in the same read."""
    doc = db[META_COLLECTION].find_one({"_id": version_doc_id(version)}, {"buckets": 1}) or {}
    return doc.get("buckets")


def activate_if_newest(db: Database[Any], version: int, rows: int, job_id: str) -> SwitchOutcome:
    """A job's switch, unless a newer submission already went live (``superseded``) or the
    version was failed meanwhile (``barred``). ``already``: a redelivered finalizer whose
    switch happened before."""
    fields = {"rows": rows, "job_id": job_id, "buckets": _buckets(db, version)}
    outcome = _switch(db, version, fields, newest_only=True)
    if outcome in ("switched", "already"):
        _confirm_live(db, version)
    log.info("version %d: switch %s", version, outcome)
    return outcome


def refusal(version: int, record: VersionRecord | None) -> str:
    """Why ``version`` cannot be activated, in a sentence for the operator."""
    if record is None:
        return f"dataset version {version} does not exist"
    if record.state == REMOVED:
        return f"dataset version {version} was removed (only the newest complete ones are kept)"
    if record.state == FAILED_VERSION:
        return f"dataset version {version} failed to load; it was never complete"
    if record.state == BUILDING:
        return f"dataset version {version} is still loading"
    return f"dataset version {version} is being removed and can no longer be activated"


def activate_by_hand(db: Database[Any], version: int) -> ActiveDataset:
    """Rollback (or roll forward) to a kept version: ready, or retired but not yet removed
    (it comes back). Raises ``ActivationRefused`` with the reason."""
    revived = _revive(db, version)
    record = read_record(db, version)
    if not revived or record is None:
        raise ActivationRefused(refusal(version, record))
    doc = db[META_COLLECTION].find_one({"_id": version_doc_id(version)}) or {}
    fields = {
        "rows": doc.get("rows", 0),
        "job_id": doc.get("job_id"),
        "buckets": doc.get("buckets"),
    }
    if _switch(db, version, fields, newest_only=False) == "barred":
        raise ActivationRefused(refusal(version, record))
    _confirm_live(db, version)
    log.info("version %d: -> live (by hand)", version)
    if _job_update(
        db,
        {"version": version, "status": HELD},
        {"$set": {"status": SUCCEEDED, "dataset_version": version, "updated_at": now()}},
    ):
        log.info("version %d: its held job -> succeeded (activated by hand)", version)
    pointer = db[META_COLLECTION].find_one({"_id": ACTIVE_ID})
    assert pointer is not None  # _switch made it
    return ActiveDataset.from_doc(pointer)


def retire_version(db: Database[Any], version: int) -> bool:
    """ready -> retired (keep policy), decided on a snapshot that may be stale: if the
    pointer names the version after the change, it goes back to ready. (An activation
    that moved the pointer before this read is seen here; one after it revives the version
    itself, in ``_confirm_live``.)"""
    if not _version_update(
        db, version, (READY,), {"$set": {"state": RETIRED, "retired_at": now()}}
    ):
        return False
    if read_pointer(db).version == version:
        _revive(db, version)
        log.info("version %d: not retired, it went live meanwhile", version)
        return False
    log.info("version %d: -> retired", version)
    return True


def remove_version(
    db: Database[Any], version: int, grace_s: float, drop_timeout_s: float = 600.0
) -> bool:
    """failed | retired (or no record) -> removed: barred on the pointer only if the pointer
    has not named it for ``grace_s``, then its collection is dropped. Repeat-safe: a
    remover that died after barring is finished by the next one.

    The drop has a deadline of its own (``drop_timeout_s``, not the client's socket
    timeout): dropping tens of millions of rows may take a store minutes. Past it,
    ``DropTimedOut`` is raised and the record keeps its state (barred, so never served
    again); the store may finish the drop by itself meanwhile, and a later cleanup marks the
    version removed either way (``collections_to_remove``). The bar just before is a plain
    store call, so a store that is down fails it fast, not after ``drop_timeout_s``."""
    cutoff = now() - timedelta(seconds=grace_s)
    if not _bar(db, version, _not_named_since(version, cutoff)):
        return False
    name = collection_name(version)
    with drop_deadline(drop_timeout_s, f"dropping {name}"):
        db.drop_collection(name)
    # Barred, so never live again: whatever its record says (an activation attempt that
    # lost to the bar may have revived it, "dropped" is the name before "retired").
    db[META_COLLECTION].update_one(
        {
            "_id": version_doc_id(version),
            "state": {"$in": [FAILED_VERSION, RETIRED, READY, "dropped"]},
        },
        {"$set": {"state": REMOVED, "removed_at": now()}},
    )
    log.info("version %d: -> removed (collection dropped)", version)
    return True


def repair_live_version(db: Database[Any]) -> None:
    """The live version must be ready: a retire that died between its two steps leaves it
    retired. (Cleanup runs this first.)"""
    pointer = read_pointer(db)
    if pointer.version is not None:
        _revive(db, pointer.version)
