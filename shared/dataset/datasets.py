"""Versioned datasets: one collection per loaded file and one pointer document naming the
live one. This module names and reads them; every change of state is in
``shared.dataset.lifecycle``.

A version's collection holds bucket documents (``shared.fileformat.bucket_layout``); its record
keeps the bucket count. A version without one was loaded by an earlier release, one document per
row: it is still read (rollback to it works) but no longer written.

Going live is a single-document update of the pointer, which every MongoDB deployment
(replica set or sharded) applies atomically; ``renameCollection`` is never used. The pointer
also keeps ``high_water``, the newest version ever activated by a job, so that a job
submitted earlier that finishes later cannot replace a newer dataset, while a manual
rollback (which leaves ``high_water`` alone) still can.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database
from pymongo.errors import CollectionInvalid, DuplicateKeyError

from shared.fileformat import bucket_layout

META_COLLECTION = "datasets"
ACTIVE_ID = "active"
COUNTER_ID = "version_counter"
COLLECTION_PREFIX = "promotions_v"

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
    # The live version's bucket count, switched with it (None: one document per row, or a
    # pointer written by an earlier release: then the version record tells).
    buckets: int | None = None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ActiveDataset:
        return cls(
            version=int(doc["version"]),
            rows=int(doc.get("rows", 0)),
            job_id=doc.get("job_id"),
            activated_at=doc.get("activated_at"),
            buckets=int(doc["buckets"]) if doc.get("buckets") else None,
        )

    @classmethod
    def from_pointer(cls, doc: dict[str, Any] | None) -> ActiveDataset | None:
        """None until a first version went live (the document exists earlier)."""
        return cls.from_doc(doc) if doc and doc.get("version") is not None else None


def promotion_from_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """The public shape of a stored row: the id as written in the file."""
    return {
        "id": doc.get("id", doc["_id"]),
        "price": doc["price"],
        "expiration_date": doc["expiration_date"],
    }


def buckets_of_record(record: dict[str, Any] | None) -> int | None:
    return int(record["buckets"]) if record and record.get("buckets") else None


def rows_query(keys: list[str], buckets: int | None) -> tuple[dict[str, Any], dict[str, int]]:
    """Filter and projection that read exactly ``keys`` from a version of either layout."""
    if buckets is not None:
        return bucket_layout.lookup(keys, buckets)
    query: dict[str, Any] = {"_id": keys[0]} if len(keys) == 1 else {"_id": {"$in": keys}}
    return query, LOOKUP_PROJECTION


def rows_from_docs(docs: list[dict[str, Any]], buckets: int | None) -> dict[str, dict[str, Any]]:
    if buckets is not None:
        return bucket_layout.rows_found(docs)
    return {doc["_id"]: promotion_from_doc(doc) for doc in docs}


# --- update documents shared by the async (API) and sync (worker) sides ----------------

# One record per version; the pointer document carries a ``version`` field too.
VERSION_RECORDS = {"version": {"$exists": True}, "_id": {"$ne": ACTIVE_ID}}

# Versions follow submission order (the newest submitted file wins): one counter document,
# created once and then only incremented. (An upserting increment races when two first
# uploads arrive together: MongoDB answers one with a duplicate-key error.)
NEXT_VERSION = ({"_id": COUNTER_ID}, {"$inc": {"n": 1}})
COUNTER_START = {"_id": COUNTER_ID, "n": 0}


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


# What readers of the live version need from the pointer. Every API process reads it twice a
# second: not its ``barred`` set (one entry per version ever removed: it only grows) nor its
# history, which only the lifecycle's own decisions read.
ACTIVE_FIELDS = {"version": 1, "rows": 1, "job_id": 1, "activated_at": 1, "buckets": 1}


async def read_active(db: AsyncDatabase[Any]) -> ActiveDataset | None:
    doc = await db[META_COLLECTION].find_one({"_id": ACTIVE_ID}, ACTIVE_FIELDS)
    return ActiveDataset.from_pointer(doc)


async def read_buckets(db: AsyncDatabase[Any], version: int) -> int | None:
    """The bucket count of a version (None: one document per row). Never changes for a
    version, so callers may keep it."""
    record = await db[META_COLLECTION].find_one({"_id": version_doc_id(version)}, {"buckets": 1})
    return buckets_of_record(record)


async def find_rows(
    db: AsyncDatabase[Any], version: int, buckets: int | None, keys: list[str]
) -> dict[str, dict[str, Any]]:
    """The public rows of ``keys`` (lower-cased ids) found in a version, by key."""
    query, projection = rows_query(keys, buckets)
    coll = db[collection_name(version)]
    if len(keys) == 1:
        doc = await coll.find_one(query, projection)
        docs = [doc] if doc else []
    else:
        docs = await coll.find(query, projection).to_list()
    return rows_from_docs(docs, buckets)


async def list_versions_async(db: AsyncDatabase[Any], limit: int = 0) -> list[dict[str, Any]]:
    cursor = db[META_COLLECTION].find(VERSION_RECORDS).sort("version", -1)
    return [doc async for doc in cursor.limit(limit)]


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


def read_buckets_sync(db: Database[Any], version: int) -> int | None:
    record = db[META_COLLECTION].find_one({"_id": version_doc_id(version)}, {"buckets": 1})
    return buckets_of_record(record)


def find_rows_sync(
    db: Database[Any], version: int, buckets: int | None, keys: list[str]
) -> dict[str, dict[str, Any]]:
    query, projection = rows_query(keys, buckets)
    return rows_from_docs(list(db[collection_name(version)].find(query, projection)), buckets)


def get_version(db: Database[Any], version: int) -> dict[str, Any] | None:
    return db[META_COLLECTION].find_one({"_id": version_doc_id(version)})


def read_active_sync(db: Database[Any]) -> ActiveDataset | None:
    return ActiveDataset.from_pointer(
        db[META_COLLECTION].find_one({"_id": ACTIVE_ID}, ACTIVE_FIELDS)
    )


def newer_version_live(db: Database[Any], version: int) -> int | None:
    """The newest version a job has activated, if newer than ``version``."""
    pointer = db[META_COLLECTION].find_one({"_id": ACTIVE_ID}, {"high_water": 1})
    high_water = int(pointer.get("high_water", 0)) if pointer else 0
    return high_water if high_water > version else None
