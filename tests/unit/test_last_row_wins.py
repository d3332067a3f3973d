"""The chunk writer's duplicate rule, example by example: the row nearest the end of the file
wins (largest ``o``), however batches, redeliveries and racing chunks interleave.

``MemoryCollection`` answers exactly the calls the writer makes (unordered ``insert_many``,
``find`` by ``_id $in``, ``bulk_write`` of ``InsertOne`` / ``ReplaceOne``) with the server's
semantics, including duplicate-key errors and a compare-and-set filter that matches nothing;
tests/integration/test_chunk_writer.py checks the same rule against a real server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from bson.raw_bson import RawBSONDocument
from pymongo import InsertOne, ReplaceOne
from pymongo.errors import BulkWriteError

from shared.promotion_rows import encode_document
from worker.chunk_writer import write_batch

DATE = "2018-08-04 05:32:31 +0200 CEST"


def row(row_id: str, price: float, o: int) -> bytes:
    return encode_document(row_id, price, DATE, o)


class MemoryCollection:
    def __init__(self) -> None:
        self.docs: dict[str, RawBSONDocument] = {}
        self.writes = 0  # documents inserted or replaced
        self.rounds = 0  # bulk_write calls (conflict resolution rounds)
        # Runs between the writer's read of the stored rows and its bulk_write: a racing chunk.
        self.before_bulk_write: Callable[[], None] | None = None

    def _insert(self, doc: RawBSONDocument) -> bool:
        if doc["_id"] in self.docs:
            return False
        self.docs[doc["_id"]] = doc
        self.writes += 1
        return True

    def _raise(self, errors: list[dict[str, Any]]) -> None:
        if errors:
            raise BulkWriteError({"writeErrors": errors, "writeConcernErrors": []})

    def insert_many(self, docs: list[RawBSONDocument], ordered: bool) -> None:
        assert ordered is False  # one duplicate must not stop the rest of the batch
        self._raise(
            [
                {"index": i, "code": 11000, "errmsg": "E11000 duplicate key"}
                for i, doc in enumerate(docs)
                if not self._insert(doc)
            ]
        )

    def find(self, query: dict[str, Any], projection: dict[str, int]) -> list[dict[str, Any]]:
        assert projection == {"o": 1}
        ids = query["_id"]["$in"]
        return [{"_id": k, "o": self.docs[k]["o"]} for k in ids if k in self.docs]

    def bulk_write(self, ops: list[Any], ordered: bool) -> None:
        assert ordered is False
        self.rounds += 1
        assert self.rounds <= 5, "conflict resolution does not settle"
        if self.before_bulk_write is not None:
            self.before_bulk_write()
            self.before_bulk_write = None
        errors = []
        for i, op in enumerate(ops):
            if isinstance(op, InsertOne):
                if not self._insert(op._doc):
                    errors.append({"index": i, "code": 11000, "errmsg": "E11000 duplicate key"})
            else:
                assert isinstance(op, ReplaceOne)
                stored = self.docs.get(op._filter["_id"])
                if stored is not None and all(stored[k] == v for k, v in op._filter.items()):
                    self.docs[op._filter["_id"]] = op._doc
                    self.writes += 1
        self._raise(errors)

    def price(self, key: str) -> float:
        return float(self.docs[key]["price"])


def test_a_batch_of_new_ids_is_written_with_no_conflicts() -> None:
    coll = MemoryCollection()
    assert write_batch(coll, [row("a", 1, 0), row("b", 2, 10)]) == 0  # type: ignore[arg-type]
    assert (coll.price("a"), coll.price("b"), coll.rounds) == (1, 2, 0)


def test_a_row_later_in_the_file_replaces_the_stored_one_and_counts_as_a_conflict() -> None:
    coll = MemoryCollection()
    write_batch(coll, [row("a", 1, 0)])  # type: ignore[arg-type]
    assert write_batch(coll, [row("b", 5, 20), row("A", 2, 30)]) == 1  # type: ignore[arg-type]
    assert (coll.price("a"), coll.price("b")) == (2, 5)
    assert coll.docs["a"]["id"] == "A"  # the winning row whole, id as written


def test_a_row_earlier_in_the_file_leaves_the_stored_one_and_counts_as_a_conflict() -> None:
    coll = MemoryCollection()
    write_batch(coll, [row("a", 2, 30)])  # type: ignore[arg-type]
    assert write_batch(coll, [row("a", 1, 0)]) == 1  # type: ignore[arg-type]
    assert (coll.price("a"), coll.docs["a"]["o"], coll.rounds) == (2, 30, 0)


def test_a_redelivered_batch_writes_nothing_and_counts_every_row() -> None:
    coll = MemoryCollection()
    batch = [row("a", 1, 0), row("b", 2, 10), row("c", 3, 20)]
    write_batch(coll, batch)  # type: ignore[arg-type]
    writes = coll.writes
    assert write_batch(coll, batch) == 3  # type: ignore[arg-type]
    assert (coll.writes, coll.rounds) == (writes, 0)


def test_only_the_rows_that_met_an_existing_id_are_resolved() -> None:
    """The error's index names the row: the middle one of three."""
    coll = MemoryCollection()
    write_batch(coll, [row("b", 1, 0)])  # type: ignore[arg-type]
    assert write_batch(coll, [row("a", 7, 5), row("b", 8, 15), row("c", 9, 25)]) == 1  # type: ignore[arg-type]
    assert [coll.price(k) for k in "abc"] == [7, 8, 9]
    assert coll.writes == 4 and coll.rounds == 1


def test_a_later_row_written_by_a_racing_chunk_is_not_overwritten() -> None:
    """Compare-and-set on ``o``: between our read and our replace, another chunk stored a
    row from further down the file; ours must not replace it."""
    coll = MemoryCollection()
    write_batch(coll, [row("a", 1, 0)])  # type: ignore[arg-type]

    def racing_chunk() -> None:
        coll.docs["a"] = RawBSONDocument(row("a", 3, 90))

    coll.before_bulk_write = racing_chunk
    assert write_batch(coll, [row("a", 2, 50)]) == 1  # type: ignore[arg-type]
    assert (coll.price("a"), coll.docs["a"]["o"]) == (3, 90)


def test_an_earlier_row_written_by_a_racing_chunk_is_replaced_in_the_next_round() -> None:
    coll = MemoryCollection()
    write_batch(coll, [row("a", 1, 0)])  # type: ignore[arg-type]

    def racing_chunk() -> None:
        coll.docs["a"] = RawBSONDocument(row("a", 3, 40))

    coll.before_bulk_write = racing_chunk
    assert write_batch(coll, [row("a", 2, 50)]) == 1  # type: ignore[arg-type]
    assert (coll.price("a"), coll.docs["a"]["o"], coll.rounds) == (2, 50, 2)


@pytest.mark.parametrize(("racing_o", "price"), [(10, 2), (90, 3)])
def test_an_id_that_vanished_is_inserted_and_a_racing_insert_is_settled_by_o(
    racing_o: int, price: float
) -> None:
    """The stored row was gone when we looked (``InsertOne``), then a racing chunk inserted
    one first: its duplicate-key error sends us round again, and ``o`` decides."""
    coll = MemoryCollection()
    write_batch(coll, [row("a", 1, 0)])  # type: ignore[arg-type]
    real_find = coll.find

    def find_nothing(query: dict[str, Any], projection: dict[str, int]) -> list[dict[str, Any]]:
        coll.find = real_find  # type: ignore[method-assign]
        del coll.docs["a"]
        return real_find(query, projection)

    def racing_chunk() -> None:
        coll.docs["a"] = RawBSONDocument(row("a", 3, racing_o))

    coll.find = find_nothing  # type: ignore[method-assign]
    coll.before_bulk_write = racing_chunk
    assert write_batch(coll, [row("a", 2, 50)]) == 1  # type: ignore[arg-type]
    assert coll.price("a") == price


def test_the_files_first_row_is_inserted_when_the_stored_row_vanished() -> None:
    """Offset 0 is a row like any other: "nothing stored" must rank below it."""
    coll = MemoryCollection()
    write_batch(coll, [row("a", 1, 0)])  # type: ignore[arg-type]
    real_find = coll.find

    def find_nothing(query: dict[str, Any], projection: dict[str, int]) -> list[dict[str, Any]]:
        coll.find = real_find  # type: ignore[method-assign]
        del coll.docs["a"]
        return real_find(query, projection)

    coll.find = find_nothing  # type: ignore[method-assign]
    assert write_batch(coll, [row("a", 2, 0)]) == 1  # type: ignore[arg-type]
    assert (coll.price("a"), coll.docs["a"]["o"]) == (2, 0)
