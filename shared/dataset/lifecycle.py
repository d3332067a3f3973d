"""The dataset lifecycle: job states, version states and the pointer, as one model.

Everything that can happen to an upload and to the dataset it becomes is a named transition
here, each one compare-and-set on the store, so that concurrent and repeated task
deliveries, the watchdog, cleanup and operators cannot race into a wrong state. The
decisions (a job's outcome, which versions to retire, which collections to remove) are plain
functions over snapshots, testable without services. docs/lifecycle.md has the
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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, TypeVar, get_args

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from shared.dataset.datasets import (
    ACTIVE_ID,
    COLLECTION_PREFIX,
    META_COLLECTION,
    VERSION_RECORDS,
    ActiveDataset,
    collection_name,
    version_doc_id,
)
from shared.errors import drop_deadline
from shared.infra.timeutil import now

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
JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
FINISHED: tuple[JobStatus, ...] = (SUCCEEDED, FAILED, HELD)
UNFINISHED: tuple[JobStatus, ...] = (QUEUED, RUNNING, FINALIZING)

VersionState = Literal["building", "ready", "failed", "retired", "removed"]
BUILDING: VersionState = "building"
READY: VersionState = "ready"
FAILED_VERSION: VersionState = "failed"
# Beyond the keep count: no longer offered, collection kept until the grace period passed.
RETIRED: VersionState = "retired"
REMOVED: VersionState = "removed"  # collection dropped; the record stays for the listing
VERSION_STATES: tuple[VersionState, ...] = get_args(VersionState)

# The step a job is in, in order; each but ``done`` is timed from its ``phase_at`` mark
# (``queued`` from the job's creation). loading: chunks parsed into run files; writing:
# partitions written as bucket documents; activating: the finalizer's.
JobPhase = Literal["queued", "splitting", "loading", "writing", "activating", "done"]
JOB_PHASES: tuple[JobPhase, ...] = get_args(JobPhase)

# A version as the pointer document sees it: named now, in its barred set, or neither.
PointerRole = Literal["unnamed", "live", "barred"]

State = TypeVar("State", bound=str)


@dataclass(frozen=True)
class Transition(Generic[State]):
    """One allowed state change: ``rule`` names it (the function making it, with a
    ``:detail`` where one function makes several), ``sources`` are the states it may start
    from (its compare-and-set guard; empty: a new record), ``why`` is for the diagram."""

    rule: str
    sources: tuple[State, ...]
    target: State
    why: str


# The tables below are the lifecycle: each transition function finds its row by ``rule`` and
# derives its store guard from the row's sources, so a change of what is allowed is a change
# here. ``shared.dataset.lifecycle_diagram`` draws them (docs/lifecycle.md).
JOB_TRANSITIONS: tuple[Transition[JobStatus], ...] = (
    Transition("new_job", (), QUEUED, "upload stored / inbox file claimed"),
    Transition("requeue_job", (QUEUED,), QUEUED, "plan task lost or never sent"),
    Transition("start_job", (QUEUED,), RUNNING, "plan_job starts"),
    Transition("fail_job", (QUEUED, RUNNING), FAILED, "bad file, rejects, superseded, stalled"),
    Transition("claim_finalization", (RUNNING, FINALIZING), FINALIZING, "every chunk counted"),
    Transition("succeed_job", (FINALIZING,), SUCCEEDED, "switched (or superseded)"),
    Transition("hold_job", (FINALIZING,), HELD, "shrink guard (MIN_ROWS_RATIO)"),
    Transition(
        "decide_finalization:live", (FINALIZING,), SUCCEEDED, "finalizer died after the switch"
    ),
    Transition(
        "decide_finalization:not live", (FINALIZING,), FAILED, "finalizer died before the switch"
    ),
    Transition("succeed_held_job", (HELD,), SUCCEEDED, "its version activated by hand"),
)

VERSION_TRANSITIONS: tuple[Transition[VersionState], ...] = (
    Transition("register_version", (), BUILDING, "plan_job registers it"),
    Transition("mark_ready", (BUILDING, READY), READY, "finalizer counted every row"),
    Transition("fail_version", (BUILDING,), FAILED_VERSION, "its job failed"),
    Transition("fail_version:loaded", (READY,), FAILED_VERSION, "never went live (barred first)"),
    Transition("retire_version", (READY,), RETIRED, "beyond VERSIONS_TO_KEEP"),
    Transition("_revive", (READY, RETIRED), READY, "went live or activated again"),
    Transition(
        "remove_version",
        (FAILED_VERSION, RETIRED, READY),
        REMOVED,
        "DROP_GRACE_S after the pointer last named it",
    ),
)

# The phases of a job that has not ended (a job that ends, in any phase, goes to ``done``).
PHASE_TRANSITIONS: tuple[Transition[JobPhase], ...] = (
    Transition("new_job", (), "queued", "upload stored / inbox file claimed"),
    Transition("start_job", ("queued",), "splitting", "plan_job starts"),
    Transition("record_plan", ("splitting",), "loading", "the plan is recorded"),
    Transition("start_writing", ("loading",), "writing", "every chunk parsed"),
    Transition(
        "claim_finalization", ("writing", "activating"), "activating", "every partition written"
    ),
    Transition("ended", JOB_PHASES[:-1], "done", "the job ended"),
)

POINTER_TRANSITIONS: tuple[Transition[PointerRole], ...] = (
    Transition("activate_if_newest", ("unnamed", "live"), "live", "a job's switch, newest only"),
    Transition("activate_by_hand", ("unnamed", "live"), "live", "rollback or roll forward"),
    Transition("switched away", ("live",), "unnamed", "another version goes live"),
    Transition("fail_version:loaded", ("unnamed", "barred"), "barred", "failed after loading"),
    Transition("remove_version", ("unnamed", "barred"), "barred", "before its collection goes"),
)


class UnknownTransition(LookupError):
    """A transition function asked for a row its table does not have (a programming error)."""


def transition(table: tuple[Transition[State], ...], rule: str) -> Transition[State]:
    """The row of ``rule`` in ``table``."""
    for row in table:
        if row.rule == rule:
            return row
    raise UnknownTransition(rule)


def guard(row: Transition[State]) -> Any:
    """The store filter value matching the row's source states (its compare-and-set)."""
    if len(row.sources) == 1:
        return row.sources[0]
    return {"$in": list(row.sources)}


def pointer_role(pointer: Pointer, version: int) -> PointerRole:
    if pointer.version == version:
        return "live"
    return "barred" if version in pointer.barred else "unnamed"


def pointer_guard(row: Transition[PointerRole], version: int) -> dict[str, Any]:
    """``pointer_role(pointer, version) in row.sources`` as a filter on the pointer document."""
    if "unnamed" not in row.sources:
        raise UnknownTransition(f"{row.rule}: a pointer guard must allow 'unnamed'")
    query: dict[str, Any] = {}
    if "live" not in row.sources:
        query["version"] = {"$ne": version}
    if "barred" not in row.sources:
        query["barred"] = {"$ne": version}
    return query


# Pointer history entries kept: far more switches than can happen within a grace period.
HISTORY_KEPT = 32


def log_transition(
    kind: str, key: object, before: str | None, after: str, why: str = "", level: int | None = None
) -> None:
    """The one log line of every transition: ``job <id> <from> -> <to>: <why>`` (``version``,
    ``pointer``; ``new`` for a record just created). A failure or a hold is a warning; a
    repeat (the same state again: a redelivery, cleanup confirming the live version) is
    debug, not to drown the others."""
    if level is None:
        if after in (FAILED, HELD):
            level = logging.WARNING
        else:
            level = logging.DEBUG if before == after else logging.INFO
    log.log(level, "%s %s %s -> %s%s", kind, key, before or "new", after, f": {why}" if why else "")


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
        return cls(
            version=int(doc["version"]),
            state=doc.get("state", BUILDING),
            collection=doc.get("collection", collection_name(int(doc["version"]))),
            since=doc.get("retired_at") or doc.get("failed_at"),
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


def _job_rule(rule: str) -> Transition[JobStatus]:
    return transition(JOB_TRANSITIONS, rule)


def _phase(rule: str) -> Transition[JobPhase]:
    return transition(PHASE_TRANSITIONS, rule)


def _move_job(
    db: Database[Any],
    rule: str,
    query: dict[str, Any],
    update: dict[str, Any],
    why: str = "",
    projection: dict[str, Any] | None = None,
    level: int | None = None,
) -> dict[str, Any] | None:
    """The row's compare-and-set on a job matching ``query``: from its sources to its
    target, logged. The job as it was (``projection`` and its status), or None."""
    row = _job_rule(rule)
    update = {**update, "$set": {**update.get("$set", {}), "status": row.target}}
    before = db[JOBS].find_one_and_update(
        {**query, "status": guard(row)}, update, projection={"status": 1, **(projection or {})}
    )
    if before is not None:
        log_transition("job", before["_id"], before["status"], row.target, why, level)
    return before


def requeue_job(db: Database[Any], job_id: str, idle_since: datetime | None) -> bool:
    """queued -> queued, counted: the plan task was lost or never sent."""
    query: dict[str, Any] = {"_id": job_id}
    if idle_since is not None:
        query["updated_at"] = {"$lt": idle_since}
    else:
        query["enqueued_at"] = None
    update = {"$set": {"updated_at": now()}, "$inc": {"plan_attempts": 1}}
    why = "its plan task is lost; sending it again"
    return _move_job(db, "requeue_job", query, update, why, level=logging.WARNING) is not None


def start_job(db: Database[Any], job_id: str) -> dict[str, Any] | None:
    """queued -> running (a redelivered plan finds it running). None if it is finalizing
    or finished: nothing to plan."""
    at = now()
    phase = _phase("start_job").target
    fields = {"phase": phase, f"phase_at.{phase}": at, "started_at": at, "updated_at": at}
    _move_job(db, "start_job", {"_id": job_id}, {"$set": fields})
    return db[JOBS].find_one_and_update(
        {"_id": job_id, "status": _job_rule("start_job").target},
        {"$set": {"updated_at": at}},
        projection={"done_chunks": 0, "done_partitions": 0},
        return_document=ReturnDocument.AFTER,
    )


@dataclass(frozen=True)
class Plan:
    """How a job's file is split and shuffled; the first plan recorded is the job's."""

    chunk_size: int
    slices: int  # the shuffle's hash space (shared.fileformat.bucket_layout)


def record_plan(
    db: Database[Any], job_id: str, version: int, chunks_total: int, plan: Plan, file_bytes: int
) -> Plan:
    """The first plan of a job wins; returns the recorded one, so a redelivered planner
    enqueues the very same chunks (counts are per chunk index) into the very same slices.
    The layout (buckets, reduce tasks) is recorded after the map, from its exact counts
    (``start_writing``)."""
    at = now()
    phase = _phase("record_plan").target
    # Splitting is the phase with no plan recorded: the first plan wins.
    doc = db[JOBS].find_one_and_update(
        {"_id": job_id, "status": RUNNING, "chunks_total": None},
        {
            "$set": {
                "chunks_total": chunks_total,
                "chunk_size": plan.chunk_size,
                "slices": plan.slices,
                "file_bytes": file_bytes,  # as stored (bytes_total may be gzip's)
                "phase": phase,
                f"phase_at.{phase}": at,
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
    row = _phase("start_writing")
    db[JOBS].update_one(
        {"_id": job_id, "status": RUNNING, "phase": guard(row)},
        {
            "$set": {
                "phase": row.target,
                f"phase_at.{row.target}": at,
                "updated_at": at,
                "buckets": layout.buckets,
                "partitions_total": layout.partitions,
                "partition_bounds": layout.bounds,
            }
        },
    )
    doc = db[JOBS].find_one(
        {"_id": job_id, "status": RUNNING, "phase": row.target},
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
    query: dict[str, Any] = {"_id": job_id}
    if idle_since is not None:
        query["updated_at"] = {"$lt": idle_since}
    job = _move_job(
        db,
        "fail_job",
        query,
        {
            "$set": {
                "phase": _phase("ended").target,
                "finished_at": now(),
                "updated_at": now(),
                "error": error,
                **fields,
            },
            "$unset": {"done_chunks": "", "done_partitions": ""},
        },
        error,
        projection={"version": 1},
    )
    if job is None:
        return False
    fail_version(db, int(job["version"]))
    return True


def claim_finalization(db: Database[Any], job_id: str, **counts: Any) -> bool:
    """running -> finalizing, recording the job's final counts (rows, rejects, duplicates)
    so that however the job ends from here - the finalizer, or the watchdog if it dies - its
    record says what was loaded. True too for a redelivered finalizer of a claimed job."""
    phase = _phase("claim_finalization").target
    update = {
        "$set": {"phase": phase, "updated_at": now(), **counts},
        "$min": {f"phase_at.{phase}": now()},  # a redelivered finalizer keeps the first
    }
    return _move_job(db, "claim_finalization", {"_id": job_id}, update) is not None


def _end_finalization(
    db: Database[Any],
    job_id: str,
    rule: str,
    idle_since: datetime | None,
    why: str = "",
    **fields: Any,
) -> bool:
    query: dict[str, Any] = {"_id": job_id}
    if idle_since is not None:
        query["updated_at"] = {"$lt": idle_since}
    update = {
        "$set": {
            "phase": _phase("ended").target,
            "finished_at": now(),
            "updated_at": now(),
            **fields,
        },
        "$unset": {"done_chunks": "", "done_partitions": ""},
    }
    return _move_job(db, rule, query, update, why) is not None


def succeed_job(db: Database[Any], job_id: str, why: str = "", **fields: Any) -> bool:
    """finalizing -> succeeded (the finalizer's last step)."""
    return _end_finalization(db, job_id, "succeed_job", None, why, **fields)


def hold_job(db: Database[Any], job_id: str, reason: str, version: int, **fields: Any) -> bool:
    """finalizing -> held: its version is ready and kept, not switched to. The version
    record says so (first), for the keep policy: a newer held version releases it."""
    db[META_COLLECTION].update_one(
        {"_id": version_doc_id(version), "held_at": {"$exists": False}},
        {"$set": {"held_at": now()}},
    )
    return _end_finalization(db, job_id, "hold_job", None, reason, error=reason, **fields)


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
    why = f"finalization did not complete ({error})"
    if live:
        pointer = read_pointer(db)
        rule = "decide_finalization:live"
        done = _end_finalization(
            db,
            job["_id"],
            rule,
            idle_since,
            why,
            dataset_version=version,
            superseded=pointer.version != version,
        )
    else:
        rule = "decide_finalization:not live"
        done = _end_finalization(
            db,
            job["_id"],
            rule,
            idle_since,
            why,
            error=f"{error}; version {version} was loaded but never went live",
        )
    return _job_rule(rule).target if done else None


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
        "state": _version_rule("register_version").target,
        "created_at": now(),
    }
    if buckets is not None:
        fields["buckets"] = buckets
    result = db[META_COLLECTION].update_one(
        {"_id": version_doc_id(version)}, {"$setOnInsert": fields}, upsert=True
    )
    if result.upserted_id is not None:
        log_transition("version", version, None, fields["state"], f"job {job_id}")


def _version_rule(rule: str) -> Transition[VersionState]:
    return transition(VERSION_TRANSITIONS, rule)


def _version_update(
    db: Database[Any],
    version: int,
    rule: str,
    fields: dict[str, Any],
    unset: dict[str, Any] | None = None,
    why: str = "",
) -> bool:
    """The row's compare-and-set on a version record: from its sources to its target,
    logged."""
    row = _version_rule(rule)
    update: dict[str, Any] = {"$set": {"state": row.target, **fields}}
    if unset:
        update["$unset"] = unset
    before = db[META_COLLECTION].find_one_and_update(
        {"_id": version_doc_id(version), "state": guard(row)}, update, projection={"state": 1}
    )
    if before is not None:
        log_transition("version", version, before["state"], row.target, why)
    return before is not None


def mark_ready(db: Database[Any], version: int, rows: int) -> bool:
    """building -> ready once every row is in (repeat-safe); False if it failed meanwhile."""
    fields = {"rows": rows, "ready_at": now()}
    return _version_update(db, version, "mark_ready", fields, why=f"{rows} rows")


def fail_version(db: Database[Any], version: int) -> bool:
    """building | ready -> failed. A ready version is barred on the pointer first; False
    (nothing changed) if the pointer names it: then it is live, not failed."""
    if _version_update(db, version, "fail_version", {"failed_at": now()}, why="its job failed"):
        return True
    loaded = "fail_version:loaded"
    record = read_record(db, version)
    if record is None or record.state not in _version_rule(loaded).sources:
        return True  # failed already, or never registered
    if not _bar(db, version, transition(POINTER_TRANSITIONS, loaded)):
        return False
    return _version_update(db, version, loaded, {"failed_at": now()}, why="never went live")


SwitchOutcome = Literal["switched", "already", "superseded", "barred"]


def _ensure_pointer(db: Database[Any]) -> None:
    with contextlib.suppress(DuplicateKeyError):
        db[META_COLLECTION].insert_one(
            {"_id": ACTIVE_ID, "version": None, "high_water": 0, "history": [], "barred": []}
        )


def _bar(
    db: Database[Any],
    version: int,
    row: Transition[PointerRole],
    also: dict[str, Any] | None = None,
) -> bool:
    """Put ``version`` in the pointer's barred set if the row's guard (and ``also``) holds
    on the pointer."""
    _ensure_pointer(db)
    before = db[META_COLLECTION].find_one_and_update(
        {"_id": ACTIVE_ID, **pointer_guard(row, version), **(also or {})},
        {"$addToSet": {"barred": version}},
        projection={"version": 1, "barred": 1},
    )
    if before is not None:
        was = pointer_role(Pointer.from_doc(before), version)
        log_transition("pointer", version, was, row.target, row.why)
    return before is not None


def _switch(
    db: Database[Any], version: int, fields: dict[str, Any], newest_only: bool
) -> SwitchOutcome:
    """Move the pointer to ``version``, recording what it named before and until when.
    Optimistic: the update matches only the pointer value just read."""
    row = transition(
        POINTER_TRANSITIONS, "activate_if_newest" if newest_only else "activate_by_hand"
    )
    _ensure_pointer(db)
    meta = db[META_COLLECTION]
    while True:
        pointer = read_pointer(db)
        if pointer_role(pointer, version) not in row.sources:
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
            "high_water": pointer.high_water,
            **pointer_guard(row, version),
        }
        if meta.update_one(query, update).matched_count == 1:
            was = f" (was {pointer.version})" if pointer.version is not None else ""
            role = pointer_role(pointer, version)
            log_transition("pointer", version, role, row.target, row.why + was)
            return "switched"


def _revive(db: Database[Any], version: int, why: str, **fields: Any) -> bool:
    """retired (or ready) -> ready."""
    return _version_update(db, version, "_revive", fields, unset={"retired_at": ""}, why=why)


def _confirm_live(db: Database[Any], version: int) -> None:
    """After the pointer names a version: ready again if a cleanup retired it meanwhile."""
    _revive(db, version, "it went live", activated_at=now())


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
    if outcome != "switched":  # the switch itself is a logged transition
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
    revived = _revive(db, version, "activated by hand")
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
    succeed_held_job(db, version)
    pointer = db[META_COLLECTION].find_one({"_id": ACTIVE_ID})
    assert pointer is not None  # _switch made it
    return ActiveDataset.from_doc(pointer)


def succeed_held_job(db: Database[Any], version: int) -> bool:
    """held -> succeeded: the version the shrink guard held was activated by hand."""
    update = {"$set": {"dataset_version": version, "updated_at": now()}}
    why = f"version {version} activated by hand"
    return _move_job(db, "succeed_held_job", {"version": version}, update, why) is not None


def retire_version(db: Database[Any], version: int) -> bool:
    """ready -> retired (keep policy), decided on a snapshot that may be stale: if the
    pointer names the version after the change, it goes back to ready. (An activation
    that moved the pointer before this read is seen here; one after it revives the version
    itself, in ``_confirm_live``.)"""
    fields = {"retired_at": now()}
    if not _version_update(db, version, "retire_version", fields, why="beyond the keep count"):
        return False
    if read_pointer(db).version == version:
        _revive(db, version, "not retired, it went live meanwhile")
        return False
    return True


# Empties a barred version's collection before its drop: (version, buckets) -> False when
# another remover holds it (``claim_removal``), then it is not dropped here.
Emptier = Callable[[int, int], bool]


def remove_version(
    db: Database[Any],
    version: int,
    grace_s: float,
    drop_timeout_s: float = 600.0,
    empty: Emptier | None = None,
) -> bool:
    """failed | retired (or no record) -> removed: barred on the pointer only if the pointer
    has not named it for ``grace_s``, then its collection is dropped. Repeat-safe: a
    remover that died after barring is finished by the next one.

    The drop has a deadline of its own (``drop_timeout_s``, not the client's socket
    timeout): dropping tens of millions of rows may take a store minutes. Past it,
    ``DropTimedOut`` is raised and the record keeps its state (barred, so never served
    again); the store may finish the drop by itself meanwhile, and a later cleanup marks the
    version removed either way (``collections_to_remove``). The bar just before is a plain
    store call, so a store that is down fails it fast, not after ``drop_timeout_s``.

    ``empty`` (``REMOVE_BATCH_DOCS``) deletes the collection's documents in paced batches
    first, under the same deadline: a store whose drop works document by document under
    one lock (the dev store) then drops an empty collection instead of blocking every
    lookup for the whole drop. Only once barred, so a version emptied part way is never
    served; only with the bucket count recorded, else the plain drop."""
    cutoff = now() - timedelta(seconds=grace_s)
    if not _bar(
        db,
        version,
        transition(POINTER_TRANSITIONS, "remove_version"),
        _not_named_since(version, cutoff),
    ):
        return False
    name = collection_name(version)
    with drop_deadline(drop_timeout_s, f"dropping {name}"):
        buckets = _buckets(db, version)
        if empty is not None and buckets and not empty(version, buckets):
            return False
        db.drop_collection(name)
    # Barred, so never live again: whatever its record says (an activation attempt that
    # lost to the bar may have revived it).
    _version_update(db, version, "remove_version", {"removed_at": now()}, why="collection dropped")
    return True


def claim_removal(db: Database[Any], version: int, owner: str, lease_s: float) -> bool:
    """One remover empties a version at a time: a cleanup runs every minute and after every
    job, and emptying a big version takes minutes; a second one would double the store's
    work and tie up a worker process. The lease is renewed with the progress
    (``record_emptied``); a remover that died leaves one that runs out."""
    at = now()
    mine = {"removal.owner": owner}
    free = [mine, {"removal": {"$exists": False}}, {"removal.until": {"$lt": at}}]
    lease = {"owner": owner, "until": at + timedelta(seconds=lease_s)}
    doc = db[META_COLLECTION].find_one_and_update(
        {"_id": version_doc_id(version), "$or": free}, {"$set": {"removal": lease}}
    )
    return doc is not None


def emptied_below(db: Database[Any], version: int) -> int:
    """Buckets below this are already deleted from a barred version's collection (progress
    of ``remove_version``'s emptying, so that a drop postponed by its deadline resumes)."""
    doc = db[META_COLLECTION].find_one({"_id": version_doc_id(version)}, {"emptied_below": 1})
    return int((doc or {}).get("emptied_below", 0))


def record_emptied(db: Database[Any], version: int, below: int, owner: str, lease_s: float) -> bool:
    """Progress (never a state) and the removal's lease renewed (``lease_s=0``: given
    back); False if another remover took the lease over (this one stalled past it): then
    this one stops."""
    found = db[META_COLLECTION].update_one(
        {"_id": version_doc_id(version), "removal.owner": owner},
        {
            "$max": {"emptied_below": below},
            "$set": {"removal.until": now() + timedelta(seconds=lease_s)},
        },
    )
    return found.matched_count == 1


def repair_live_version(db: Database[Any]) -> None:
    """The live version must be ready: a retire that died between its two steps leaves it
    retired. (Cleanup runs this first.)"""
    pointer = read_pointer(db)
    if pointer.version is not None:
        _revive(db, pointer.version, "the live version must be ready")


# --- records written by earlier releases ------------------------------------------------

# Version states earlier releases wrote, and what each is called now.
LEGACY_VERSION_STATES: dict[str, VersionState] = {"dropped": RETIRED}


def upgraded_record(doc: dict[str, Any]) -> dict[str, Any] | None:
    """A version record in a legacy state as this release writes it (None if current): a
    ``dropped`` record is ``retired`` since its ``dropped_at``."""
    state = LEGACY_VERSION_STATES.get(str(doc.get("state")))
    if state is None:
        return None
    since = doc.get("retired_at") or doc.get("dropped_at") or doc.get("failed_at")
    out = {key: value for key, value in doc.items() if key != "dropped_at"}
    out["state"] = state
    if since is not None:
        out["retired_at"] = since
    return out


def migrate_legacy_states(db: Database[Any]) -> int:
    """One-off and idempotent: rewrite version records left in a legacy state (cleanup runs
    it first, so no other code reads those states). Each record is compare-and-set on its
    old state and logged; returns how many were rewritten."""
    meta = db[META_COLLECTION]
    moved = 0
    for doc in meta.find({**VERSION_RECORDS, "state": {"$in": list(LEGACY_VERSION_STATES)}}):
        new = upgraded_record(doc)
        assert new is not None  # the query selected legacy states only
        if meta.replace_one({"_id": doc["_id"], "state": doc["state"]}, new).modified_count:
            why = "a record of an earlier release, migrated"
            log_transition("version", doc["version"], doc["state"], new["state"], why)
            moved += 1
    return moved
