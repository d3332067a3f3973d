"""A replaced version's collection emptied in small paced batches before its drop.

The dev store drops a collection document by document under its one lock: dropping a
100M-row version (1M bucket documents) blocked it for 90 s, and every lookup the caches
could not answer got 503 meanwhile (bench/RESULTS.md, "100,000,000 rows, twice"). Deleting
the buckets ``REMOVE_BATCH_DOCS`` at a time, paced like a load's inserts by what the
readers see (``worker.throttle``), leaves the store gaps for lookups; the drop then finds
an empty collection. Buckets are numbered ``0 .. B-1`` (``shared.fileformat.bucket_layout``),
so a batch is a ``$in`` of known ``_id``s: point deletes every store serves from its
``_id`` index (a range or a sorted scan is a full collection scan on the dev store,
measured: ~700 ms a batch at 20k documents).

On MongoDB leave it off (0): a drop removes the collection's files without holding reads,
and deleting first would only write an oplog entry per document (docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from pymongo.database import Database

from shared.dataset import lifecycle
from shared.dataset.datasets import collection_name
from shared.settings import Settings
from worker.throttle import InsertThrottle, from_settings

log = logging.getLogger(__name__)

# Progress is recorded, and the lease renewed, at most this often: a drop postponed by its
# deadline resumes from there (finding the first remaining bucket would be a full scan on
# the dev store).
RECORD_EVERY_S = 2.0
# One remover at a time (``lifecycle.claim_removal``); a dead one's lease runs out after this.
LEASE_S = 60.0

Paced = Callable[[int], contextlib.AbstractContextManager[None]]


def empty_version(
    db: Database[Any],
    version: int,
    buckets: int,
    batch_docs: int,
    paced: Paced,
    clock: Callable[[], float] = time.monotonic,
    lease_s: float = LEASE_S,
) -> bool:
    """Deletes buckets ``emptied_below .. buckets-1`` of a barred version, ``batch_docs``
    per delete, each batch inside ``paced``. False if another remover holds the version
    (from the start, or took it over from this one after a stall)."""
    # The process, not the call: a cleanup of the same process resumes a removal its
    # deadline cut at once (its lease could not be given back after the deadline).
    owner = f"{socket.gethostname()}:{os.getpid()}"
    if not lifecycle.claim_removal(db, version, owner, lease_s):
        log.info("version %d: another cleanup is emptying it", version)
        return False
    coll = db[collection_name(version)]
    start = lifecycle.emptied_below(db, version)
    deleted = 0
    recorded_at = clock()
    for lo in range(start, buckets, batch_docs):
        hi = min(buckets, lo + batch_docs)
        with paced(hi - lo):
            deleted += coll.delete_many({"_id": {"$in": list(range(lo, hi))}}).deleted_count
        if clock() - recorded_at >= RECORD_EVERY_S:
            if not lifecycle.record_emptied(db, version, hi, owner, lease_s):
                log.warning("version %d: another cleanup took its emptying over", version)
                return False
            recorded_at = clock()
    # Emptied: the lease given back (the drop is repeat-safe; another remover may do it).
    lifecycle.record_emptied(db, version, buckets, owner, lease_s=0)
    if start < buckets:
        log.info("version %d: %d bucket documents deleted before its drop", version, deleted)
    return True


_throttles: dict[int, InsertThrottle | None] = {}


def _throttle(settings: Settings) -> InsertThrottle | None:
    """One per worker process, apart from the inserts' (its unit is documents, not rows),
    so that it learns across cleanups."""
    if id(settings) not in _throttles:
        _throttles[id(settings)] = from_settings(settings)
    return _throttles[id(settings)]


def emptier(db: Database[Any], settings: Settings) -> lifecycle.Emptier | None:
    """``remove_version``'s ``empty`` for these settings (None: drop at once)."""
    if settings.remove_batch_docs <= 0:
        return None
    throttle = _throttle(settings)

    def paced(docs: int) -> contextlib.AbstractContextManager[None]:
        return throttle.paced(docs) if throttle is not None else contextlib.nullcontext()

    def empty(version: int, buckets: int) -> bool:
        return empty_version(db, version, buckets, settings.remove_batch_docs, paced)

    return empty
