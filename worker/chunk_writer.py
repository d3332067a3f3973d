"""Bulk-insert one batch of encoded rows; resolve same-id conflicts so the row nearest the
end of the file wins, whatever order batches and chunks arrive in.

Inserts are unordered (``ordered=False``) so one duplicate does not stop the batch. A
duplicate-key error means another row (or an earlier delivery of this very row) holds the
id; the stored row is replaced only if its file position ``o`` is smaller, with a
compare-and-set on ``o`` so that racing chunks settle on the same winner.
"""

from __future__ import annotations

from typing import Any

from bson.raw_bson import RawBSONDocument
from pymongo import InsertOne, ReplaceOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from shared.errors import PermanentError, StoreBusy, is_transient_code

DUPLICATE_KEY = 11000


def _failed_duplicates(exc: BulkWriteError, ops_or_docs: list[Any]) -> list[Any]:
    """The operations that hit an existing id. A write-concern error (a failover may roll
    the batch back) or a shard's not-primary / stale-routing / interrupted error raises
    ``StoreBusy``: the task retries the chunk, which is idempotent, and nothing counts as
    written. Any other error is deterministic (retrying would fail the same way):
    ``PermanentError``."""
    details = exc.details
    if details.get("writeConcernErrors"):
        raise StoreBusy(f"write concern not satisfied: {details['writeConcernErrors'][0]}")
    failed = []
    for err in details.get("writeErrors", []):
        code = err.get("code")
        if code == DUPLICATE_KEY:
            failed.append(ops_or_docs[err["index"]])
        elif is_transient_code(code):
            raise StoreBusy(f"write error {code}: {err.get('errmsg')}")
        else:
            raise PermanentError(f"the store refused a row: error {code}: {err.get('errmsg')}")
    return failed


def write_batch(coll: Collection[Any], encoded: list[bytes]) -> int:
    """Returns how many rows hit an id already stored (0: every row was a new document)."""
    docs = [RawBSONDocument(raw) for raw in encoded]
    try:
        coll.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        conflicts = _failed_duplicates(exc, docs)
        resolve_conflicts(coll, conflicts)
        return len(conflicts)
    return 0


def resolve_conflicts(coll: Collection[Any], docs: list[RawBSONDocument]) -> None:
    pending = {doc["_id"]: doc for doc in docs}
    while pending:
        stored = {d["_id"]: d["o"] for d in coll.find({"_id": {"$in": list(pending)}}, {"o": 1})}
        # Keep only rows that are later in the file than what is stored (an equal ``o`` is a
        # redelivery of the same row: nothing to do).
        pending = {k: d for k, d in pending.items() if stored.get(k, -1) < d["o"]}
        if not pending:
            return
        ops: list[Any] = [
            ReplaceOne({"_id": k, "o": stored[k]}, d) if k in stored else InsertOne(d)
            for k, d in pending.items()
        ]
        try:
            coll.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            _failed_duplicates(exc, ops)  # a racing insert won; the next round re-checks
