"""Versioned datasets: one collection per loaded file and one pointer document naming the
live one.

Going live is a single-document update of the pointer, which every MongoDB deployment
(replica set or sharded) applies atomically; ``renameCollection`` is never used. The pointer
also keeps ``high_water``, the newest version ever activated by a job, so that a job
submitted earlier that finishes later cannot replace a newer dataset, while a manual
rollback (which leaves ``high_water`` alone) still can.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database
from pymongo.errors import CollectionInvalid, DuplicateKeyError

from shared.timeutil import now

META_COLLECTION = "datasets"
ACTIVE_ID = "active"
COUNTER_ID = "version_counter"
COLLECTION_PREFIX = "promotions_v"

# Version states; the active one is whichever the pointer names.
BUILDING, READY, FAILED, DROPPED = "building", "ready", "failed", "dropped"

LOOKUP_PROJECTION = {"_id": 1, "id": 1, "price": 1, "expiration_date": 1}


def collection_name(version: int) -> str:
    return f"{COLLECTION_PREFIX}{version}"


def version_doc_id(version: int) -> str:
    return f"v{version}"


@dataclass(frozen=True)
class ActiveDataset:
    version: int
    rows: int
    job_id: str | None
    activated_at: datetime | None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ActiveDataset:
        return cls(
            version=int(doc["version"]),
            rows=int(doc.get("rows", 0)),
            job_id=doc.get("job_id"),
            activated_at=doc.get("activated_at"),
        )


def promotion_from_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """The public shape of a stored row: the id as written in the file."""
    return {
        "id": doc.get("id", doc["_id"]),
        "price": doc["price"],
        "expiration_date": doc["expiration_date"],
    }


# --- update documents shared by the async (API) and sync (worker) sides ----------------

# One record per version; the pointer document carries a ``version`` field too.
VERSION_RECORDS = {"version": {"$exists": True}, "_id": {"$ne": ACTIVE_ID}}

# Versions follow submission order (the newest submitted file wins): one counter document,
# created once and then only incremented. (An upserting increment races when two first
# uploads arrive together: MongoDB answers one with a duplicate-key error.)
NEXT_VERSION = ({"_id": COUNTER_ID}, {"$inc": {"n": 1}})
COUNTER_START = {"_id": COUNTER_ID, "n": 0}


def ready_version_filter(version: int) -> dict[str, Any]:
    """Only a kept, complete version may go live by hand."""
    return {"_id": version_doc_id(version), "state": READY}


def mark_activated(at: datetime) -> dict[str, Any]:
    return {"$set": {"activated_at": at}}


def confirm_live_filter(version: int) -> dict[str, Any]:
    return {"_id": version_doc_id(version), "state": {"$in": [READY, DROPPED]}}


def confirm_live_update(at: datetime) -> dict[str, Any]:
    """After the pointer names a version: if a cleanup marked it dropped in the meantime,
    it is ready again (collections of dropped versions go only after ``drop_grace_s``, far
    longer than an activation takes, so its data is still there)."""
    return {"$set": {"state": READY, "activated_at": at}, "$unset": {"dropped_at": ""}}


def manual_pointer_update(version_doc: dict[str, Any], at: datetime) -> dict[str, Any]:
    """Point readers at a kept version. ``high_water`` only ever grows, so a rollback does
    not let an older, slower job replace the dataset afterwards."""
    version = int(version_doc["version"])
    return {
        "$set": {
            "version": version,
            "rows": version_doc.get("rows", 0),
            "job_id": version_doc.get("job_id"),
            "activated_at": at,
        },
        "$max": {"high_water": version},
    }


def refusal(version: int, doc: dict[str, Any] | None) -> str:
    """Why ``version`` cannot be activated, in a sentence for the operator."""
    state = doc.get("state") if doc else None
    if state is None:
        return f"dataset version {version} does not exist"
    if state == DROPPED:
        return f"dataset version {version} was dropped (only the newest complete ones are kept)"
    if state == FAILED:
        return f"dataset version {version} failed to load; it was never complete"
    if state == BUILDING:
        return f"dataset version {version} is still loading"
    return f"dataset version {version} is {state}, not ready"


# --- async side (API) -----------------------------------------------------------------


async def allocate_version(db: AsyncDatabase[Any]) -> int:
    meta = db[META_COLLECTION]
    doc = await meta.find_one_and_update(*NEXT_VERSION, return_document=ReturnDocument.AFTER)
    if doc is None:  # the very first upload: create the counter, then count
        with contextlib.suppress(DuplicateKeyError):
            await meta.insert_one(COUNTER_START)
        doc = await meta.find_one_and_update(*NEXT_VERSION, return_document=ReturnDocument.AFTER)
    assert doc is not None  # the counter exists now
    return int(doc["n"])


async def read_active(db: AsyncDatabase[Any]) -> ActiveDataset | None:
    doc = await db[META_COLLECTION].find_one({"_id": ACTIVE_ID})
    return ActiveDataset.from_doc(doc) if doc else None


async def find_promotion(db: AsyncDatabase[Any], version: int, key: str) -> dict[str, Any] | None:
    doc = await db[collection_name(version)].find_one({"_id": key}, LOOKUP_PROJECTION)
    return promotion_from_doc(doc) if doc else None


async def list_versions_async(db: AsyncDatabase[Any], limit: int = 0) -> list[dict[str, Any]]:
    cursor = db[META_COLLECTION].find(VERSION_RECORDS).sort("version", -1)
    return [doc async for doc in cursor.limit(limit)]


async def activate_version_async(db: AsyncDatabase[Any], version: int) -> ActiveDataset:
    """Manual switch (rollback); raises LookupError with the reason if it is not kept."""
    at = now()
    meta = db[META_COLLECTION]
    doc = await meta.find_one_and_update(ready_version_filter(version), mark_activated(at))
    if doc is None:
        raise LookupError(refusal(version, await meta.find_one({"_id": version_doc_id(version)})))
    pointer = await meta.find_one_and_update(
        {"_id": ACTIVE_ID},
        manual_pointer_update(doc, at),
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    assert pointer is not None  # upsert with AFTER always returns the document
    await meta.update_one(confirm_live_filter(version), confirm_live_update(at))
    return ActiveDataset.from_doc(pointer)


# --- sync side (worker) ---------------------------------------------------------------


def allocate_version_sync(db: Database[Any]) -> int:
    meta = db[META_COLLECTION]
    doc = meta.find_one_and_update(*NEXT_VERSION, return_document=ReturnDocument.AFTER)
    if doc is None:  # see allocate_version
        with contextlib.suppress(DuplicateKeyError):
            meta.insert_one(COUNTER_START)
        doc = meta.find_one_and_update(*NEXT_VERSION, return_document=ReturnDocument.AFTER)
    assert doc is not None  # the counter exists now
    return int(doc["n"])


def register_version(db: Database[Any], version: int, job_id: str) -> None:
    """Idempotent: a redelivered planning task finds the record already there."""
    db[META_COLLECTION].update_one(
        {"_id": version_doc_id(version)},
        {
            "$setOnInsert": {
                "version": version,
                "collection": collection_name(version),
                "job_id": job_id,
                "state": BUILDING,
                "created_at": now(),
            }
        },
        upsert=True,
    )


def create_version_collection(db: Database[Any], version: int, sharded: bool) -> None:
    """Idempotent (a redelivered planning task calls it again). On a sharded cluster each
    version is spread on hashed ``_id``: lookups target one shard, loads spread evenly.
    ``shardCollection`` on an empty collection creates it and its hashed index (MongoDB >= 6
    needs no ``enableSharding`` first; the same key again is a no-op)."""
    name = collection_name(version)
    if sharded:
        db.client.admin.command("shardCollection", f"{db.name}.{name}", key={"_id": "hashed"})
        return
    with contextlib.suppress(CollectionInvalid):  # created by an earlier delivery
        db.create_collection(name)


def set_version_state(db: Database[Any], version: int, state: str, **fields: Any) -> None:
    """Unconditional: only for fixtures and repairs; the pipeline moves states with the
    compare-and-set helpers below, so that cleanup, activation and failure cannot race."""
    db[META_COLLECTION].update_one(
        {"_id": version_doc_id(version)}, {"$set": {"state": state, **fields}}
    )


def mark_ready(db: Database[Any], version: int, **fields: Any) -> bool:
    """building -> ready once every row is in; False if the job was failed meanwhile."""
    result = db[META_COLLECTION].update_one(
        {"_id": version_doc_id(version), "state": {"$in": [BUILDING, READY]}},
        {"$set": {"state": READY, **fields}},
    )
    return result.matched_count == 1


def mark_failed(db: Database[Any], version: int, states: tuple[str, ...] = (BUILDING,)) -> None:
    """building (or one of ``states``) -> failed; repeat-safe."""
    db[META_COLLECTION].update_one(
        {"_id": version_doc_id(version), "state": {"$in": list(states)}},
        {"$set": {"state": FAILED, "failed_at": now()}},
    )


def settle_version(db: Database[Any], version: int) -> None:
    """Finalization is over (live or superseded): from now on the keep policy may drop it.
    Until then cleanup leaves a ready version alone, even one beyond the keep count."""
    db[META_COLLECTION].update_one({"_id": version_doc_id(version)}, {"$set": {"settled": True}})


def get_version(db: Database[Any], version: int) -> dict[str, Any] | None:
    return db[META_COLLECTION].find_one({"_id": version_doc_id(version)})


def read_active_sync(db: Database[Any]) -> ActiveDataset | None:
    doc = db[META_COLLECTION].find_one({"_id": ACTIVE_ID})
    return ActiveDataset.from_doc(doc) if doc else None


def newer_version_live(db: Database[Any], version: int) -> int | None:
    """The newest version a job has activated, if newer than ``version``."""
    pointer = db[META_COLLECTION].find_one({"_id": ACTIVE_ID}, {"high_water": 1})
    high_water = int(pointer.get("high_water", 0)) if pointer else 0
    return high_water if high_water > version else None


def activate_if_newest(db: Database[Any], version: int, rows: int, job_id: str) -> bool:
    """Point readers at ``version`` unless a newer submission already went live."""
    at = now()
    try:
        db[META_COLLECTION].update_one(
            {"_id": ACTIVE_ID, "high_water": {"$lt": version}},
            {
                "$set": {
                    "version": version,
                    "high_water": version,
                    "rows": rows,
                    "job_id": job_id,
                    "activated_at": at,
                }
            },
            upsert=True,
        )
    except DuplicateKeyError:
        # The pointer exists with high_water >= version: a newer submission is live, or a
        # concurrent delivery of this very finalization already switched to it.
        pointer = read_active_sync(db)
        return pointer is not None and pointer.version == version
    db[META_COLLECTION].update_one(confirm_live_filter(version), confirm_live_update(at))
    return True


def activate_version(db: Database[Any], version: int) -> ActiveDataset:
    """Manual switch (rollback); raises LookupError with the reason if it is not kept."""
    at = now()
    meta = db[META_COLLECTION]
    doc = meta.find_one_and_update(ready_version_filter(version), mark_activated(at))
    if doc is None:
        raise LookupError(refusal(version, meta.find_one({"_id": version_doc_id(version)})))
    pointer = meta.find_one_and_update(
        {"_id": ACTIVE_ID},
        manual_pointer_update(doc, at),
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    assert pointer is not None  # upsert with AFTER always returns the document
    meta.update_one(confirm_live_filter(version), confirm_live_update(at))
    return ActiveDataset.from_doc(pointer)


def versions_to_drop(db: Database[Any], keep: int) -> list[int]:
    """Complete versions beyond the newest ``keep`` (the active one always stays; failed
    ones need no decision, their collections are orphans)."""
    active = read_active_sync(db)
    active_version = active.version if active else None
    ready = (
        db[META_COLLECTION]
        .find({**VERSION_RECORDS, "state": READY, "settled": True})
        .sort("version", -1)
    )
    drop: list[int] = []
    kept = 1 if active_version is not None else 0
    for doc in ready:
        version = int(doc["version"])
        if version == active_version:
            continue
        if kept < keep:
            kept += 1
        else:
            drop.append(version)
    return drop


def mark_dropped(db: Database[Any], version: int) -> bool:
    """ready -> dropped (compare-and-set). Its collection goes later, after the grace
    period, so an activation racing with this can still revive it."""
    result = db[META_COLLECTION].update_one(
        {"_id": version_doc_id(version), "state": READY},
        {"$set": {"state": DROPPED, "dropped_at": now()}},
    )
    return result.modified_count == 1


def collections_to_drop(db: Database[Any], grace_s: float) -> list[str]:
    """Version collections nothing will read again: their version failed or was dropped
    more than ``grace_s`` ago, or has no record at all. Collections are listed before
    records are read: a new version registers its record before creating its collection,
    so a fresh collection is never mistaken for one without a record. The collection the
    pointer names is never dropped."""
    names = [n for n in db.list_collection_names() if n.startswith(COLLECTION_PREFIX)]
    records = {doc["collection"]: doc for doc in db[META_COLLECTION].find(VERSION_RECORDS)}
    active = read_active_sync(db)
    live = collection_name(active.version) if active else None
    cutoff = now() - timedelta(seconds=grace_s)
    drop = []
    for name in names:
        if name == live:
            continue
        doc = records.get(name)
        if doc is None:
            drop.append(name)
            continue
        since = doc.get("dropped_at") or doc.get("failed_at")
        if doc.get("state") in (FAILED, DROPPED) and since is not None and since < cutoff:
            drop.append(name)
    return drop
