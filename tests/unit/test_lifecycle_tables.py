"""The lifecycle tables against the functions that make the transitions: from every state,
each function moves a record exactly when the table lists that state as a source of its
row, and to the row's target. Runs on a small in-memory stand-in for the store that
evaluates the state part of each filter (status, state, the pointer's version and barred
set) and treats every other condition as met: what is checked here is the guard the table
gives, not MongoDB. (The real store runs the same functions in the integration tests.)"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from shared.dataset import lifecycle
from shared.dataset.datasets import ACTIVE_ID, META_COLLECTION, version_doc_id
from shared.dataset.lifecycle import JOBS, JobStatus, PointerRole, Transition, VersionState

CHECKED = ("status", "phase", "state", "version", "barred", "_id")


def _matches(doc: dict[str, Any], query: dict[str, Any]) -> bool:
    for key, want in query.items():
        if key not in CHECKED:
            continue  # time and history conditions: met
        have = doc.get(key)
        values = have if isinstance(have, list) else [have]
        if isinstance(want, dict) and "$in" in want:
            ok = any(v in want["$in"] for v in values)
        elif isinstance(want, dict) and "$ne" in want:
            ok = want["$ne"] not in values
        elif isinstance(want, dict):
            raise AssertionError(f"unexpected condition {key}: {want}")
        else:
            ok = want in values
        if not ok:
            return False
    return True


class Collection:
    def __init__(self, store: Store, name: str) -> None:
        self.docs = store.collections.setdefault(name, {})
        self.store = store
        self.name = name

    def _find(self, query: dict[str, Any]) -> dict[str, Any] | None:
        return next((d for d in self.docs.values() if _matches(d, query)), None)

    def find_one(self, query: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        found = self._find(query)
        return copy.deepcopy(found) if found else None

    def insert_one(self, doc: dict[str, Any]) -> None:
        if doc["_id"] in self.docs:
            raise DuplicateKeyError("duplicate")
        self.docs[doc["_id"]] = copy.deepcopy(doc)

    def update_one(
        self, query: dict[str, Any], update: dict[str, Any], upsert: bool = False
    ) -> SimpleNamespace:
        doc = self._find(query)
        if doc is None and upsert:
            doc = {"_id": query["_id"], **update.get("$setOnInsert", {})}
            self.docs[doc["_id"]] = doc
            self.store.moves.append((self.name, doc["_id"], None))
            return SimpleNamespace(matched_count=0, modified_count=0, upserted_id=doc["_id"])
        if doc is None:
            return SimpleNamespace(matched_count=0, modified_count=0, upserted_id=None)
        before = doc.get("status", doc.get("state"))
        doc.update(update.get("$set", {}))
        for key in update.get("$unset", {}):
            doc.pop(key, None)
        for key, value in update.get("$addToSet", {}).items():
            if value not in doc.setdefault(key, []):
                doc[key].append(value)
        if "status" in update.get("$set", {}) or "state" in update.get("$set", {}):
            self.store.moves.append((self.name, doc["_id"], before))
        return SimpleNamespace(matched_count=1, modified_count=1, upserted_id=None)

    def find_one_and_update(
        self,
        query: dict[str, Any],
        update: dict[str, Any],
        projection: Any = None,
        return_document: Any = ReturnDocument.BEFORE,
    ) -> dict[str, Any] | None:
        before = self.find_one(query)
        if before is None or not self.update_one(query, update).matched_count:
            return None
        return before if return_document == ReturnDocument.BEFORE else self.find_one(query)


class Store:
    """A stand-in ``Database``: collections of documents by id, and the state moves made."""

    def __init__(self) -> None:
        self.collections: dict[str, dict[Any, dict[str, Any]]] = {}
        self.moves: list[tuple[str, Any, str | None]] = []

    def __getitem__(self, name: str) -> Collection:
        return Collection(self, name)

    def drop_collection(self, name: str) -> None:
        pass


def _store(
    job: JobStatus | None = None,
    version: VersionState | None = "ready",
    role: PointerRole = "unnamed",
) -> Store:
    db = Store()
    if job is not None:
        db[JOBS].insert_one({"_id": "j", "status": job, "version": 1})
    if version is not None:
        db[META_COLLECTION].insert_one({"_id": version_doc_id(1), "version": 1, "state": version})
    db[META_COLLECTION].insert_one(
        {
            "_id": ACTIVE_ID,
            "version": 1 if role == "live" else None,
            "high_water": 1 if role == "live" else 0,
            "history": [],
            "barred": [1] if role == "barred" else [],
        }
    )
    return db


def _state(db: Store, collection: str, key: str) -> str | None:
    doc = db.collections[collection].get(key)
    return None if doc is None else doc.get("status", doc.get("state"))


def _decide(live: bool) -> Callable[[Store], Any]:
    def run(db: Store) -> Any:
        if live:  # the pointer names its version: the job succeeds
            db[META_COLLECTION].update_one({"_id": ACTIVE_ID}, {"$set": {"version": 1}})
        return lifecycle.decide_finalization(db, {"_id": "j", "version": 1}, "died")  # type: ignore[arg-type]

    return run


def _activate_by_hand(db: Store) -> None:
    barred = db.collections[META_COLLECTION][ACTIVE_ID]["barred"]
    refused = pytest.raises(lifecycle.ActivationRefused) if barred else contextlib.nullcontext()
    with refused:
        lifecycle.activate_by_hand(db, 1)  # type: ignore[arg-type]


JOB_CALLS: dict[str, Callable[[Any], Any]] = {
    "requeue_job": lambda db: lifecycle.requeue_job(db, "j", None),
    "start_job": lambda db: lifecycle.start_job(db, "j"),
    "fail_job": lambda db: lifecycle.fail_job(db, "j", "bad file"),
    "claim_finalization": lambda db: lifecycle.claim_finalization(db, "j"),
    "succeed_job": lambda db: lifecycle.succeed_job(db, "j"),
    "hold_job": lambda db: lifecycle.hold_job(db, "j", "shrinks", 1),
    "decide_finalization:live": _decide(live=True),
    "decide_finalization:not live": _decide(live=False),
    "succeed_held_job": lambda db: lifecycle.succeed_held_job(db, 1),
}

VERSION_CALLS: dict[str, Callable[[Any], Any]] = {
    "mark_ready": lambda db: lifecycle.mark_ready(db, 1, 5),
    "fail_version": lambda db: lifecycle.fail_version(db, 1),
    "fail_version:loaded": lambda db: lifecycle.fail_version(db, 1),
    "retire_version": lambda db: lifecycle.retire_version(db, 1),
    "_revive": lambda db: lifecycle.repair_live_version(db),
    "remove_version": lambda db: lifecycle.remove_version(db, 1, grace_s=0),
}

POINTER_CALLS: dict[str, Callable[[Any], Any]] = {
    "activate_if_newest": lambda db: lifecycle.activate_if_newest(db, 1, 5, "j"),
    "activate_by_hand": _activate_by_hand,
    "fail_version:loaded": lambda db: lifecycle.fail_version(db, 1),
    "remove_version": lambda db: lifecycle.remove_version(db, 1, grace_s=0),
}

# Rows no single function guards: creations (no record before) and the pointer moving on.
NO_GUARD = {"new_job", "register_version", "switched away"}


def _rows(table: tuple[Transition[Any], ...]) -> list[Transition[Any]]:
    return [row for row in table if row.rule not in NO_GUARD]


def test_every_row_has_a_function_checked_here_and_rules_are_unique() -> None:
    for table, calls in (
        (lifecycle.JOB_TRANSITIONS, JOB_CALLS),
        (lifecycle.VERSION_TRANSITIONS, VERSION_CALLS),
        (lifecycle.POINTER_TRANSITIONS, POINTER_CALLS),
    ):
        rules = [row.rule for row in table]
        assert len(rules) == len(set(rules))
        assert {row.rule for row in _rows(table)} == set(calls)
        for rule in rules:
            assert hasattr(lifecycle, rule.split(":")[0]) or rule in NO_GUARD, rule


@pytest.mark.parametrize("row", _rows(lifecycle.JOB_TRANSITIONS), ids=lambda r: r.rule)
@pytest.mark.parametrize("status", lifecycle.JOB_STATUSES)
def test_a_job_moves_exactly_from_its_rows_sources(row: Transition[Any], status: str) -> None:
    version: VersionState = "ready" if row.rule != "decide_finalization:not live" else "building"
    db = _store(job=status, version=version)  # type: ignore[arg-type]
    JOB_CALLS[row.rule](db)
    moved = [m for m in db.moves if m[0] == JOBS]
    if status in row.sources:
        assert moved == [(JOBS, "j", status)] and _state(db, JOBS, "j") == row.target
    else:
        assert moved == [] and _state(db, JOBS, "j") == status


@pytest.mark.parametrize("row", _rows(lifecycle.VERSION_TRANSITIONS), ids=lambda r: r.rule)
@pytest.mark.parametrize("state", lifecycle.VERSION_STATES)
def test_a_version_moves_exactly_from_its_rows_sources(row: Transition[Any], state: str) -> None:
    role: PointerRole = "live" if row.rule == "_revive" else "unnamed"
    db = _store(version=state, role=role)  # type: ignore[arg-type]
    VERSION_CALLS[row.rule](db)
    key = version_doc_id(1)
    moved = [m for m in db.moves if m[:2] == (META_COLLECTION, key)]
    # fail_version tries its rows in turn: a state of one of them is not a miss of the other.
    siblings = {
        s
        for r in lifecycle.VERSION_TRANSITIONS
        if r.rule.split(":")[0] == row.rule.split(":")[0]
        for s in r.sources
    }
    if state in row.sources:
        assert moved == [(META_COLLECTION, key, state)] and _state(db, META_COLLECTION, key) == (
            row.target
        )
    elif state not in siblings:
        assert moved == [] and _state(db, META_COLLECTION, key) == state


@pytest.mark.parametrize("row", _rows(lifecycle.POINTER_TRANSITIONS), ids=lambda r: r.rule)
@pytest.mark.parametrize("role", ["unnamed", "live", "barred"])
def test_the_pointer_moves_exactly_from_its_rows_sources(
    row: Transition[Any], role: PointerRole
) -> None:
    db = _store(version="ready", role=role)
    POINTER_CALLS[row.rule](db)
    after = lifecycle.pointer_role(lifecycle.read_pointer(db), 1)  # type: ignore[arg-type]
    if role in row.sources:
        assert after == row.target
    else:
        assert after == role


def test_a_guard_is_the_rows_sources() -> None:
    row = lifecycle.transition(lifecycle.JOB_TRANSITIONS, "fail_job")
    assert lifecycle.guard(row) == {"$in": ["queued", "running"]}
    assert lifecycle.guard(lifecycle.transition(lifecycle.JOB_TRANSITIONS, "start_job")) == (
        "queued"
    )
    with pytest.raises(lifecycle.UnknownTransition):
        lifecycle.transition(lifecycle.JOB_TRANSITIONS, "no such rule")


@pytest.mark.parametrize("phase", lifecycle.JOB_PHASES)
def test_writing_starts_exactly_from_its_rows_sources(phase: str) -> None:
    db = Store()
    job = {
        "_id": "j",
        "status": "running",
        "phase": phase,
        "buckets": 4,
        "partition_bounds": [0, 8],
    }
    db[JOBS].insert_one(job)
    lifecycle.start_writing(db, "j", 1, lifecycle.Layout(4, [0, 8]))  # type: ignore[arg-type]
    row = lifecycle.transition(lifecycle.PHASE_TRANSITIONS, "start_writing")
    want = row.target if phase in row.sources else phase
    assert db.collections[JOBS]["j"]["phase"] == want


def test_the_status_sets_split_every_status_once() -> None:
    finished, unfinished = set(lifecycle.FINISHED), set(lifecycle.UNFINISHED)
    assert finished | unfinished == set(lifecycle.JOB_STATUSES)
    assert not finished & unfinished
    assert lifecycle.JOB_PHASES[-1] == "done"


@pytest.mark.parametrize(
    ("kind", "row"),
    [("job", r) for r in _rows(lifecycle.JOB_TRANSITIONS)]
    + [("version", r) for r in _rows(lifecycle.VERSION_TRANSITIONS)],
    ids=lambda x: x if isinstance(x, str) else x.rule,
)
def test_every_transition_logs_from_and_to(
    kind: str, row: Transition[Any], caplog: pytest.LogCaptureFixture
) -> None:
    source = row.sources[0]
    if kind == "job":
        version = "building" if row.rule == "decide_finalization:not live" else "ready"
        db = _store(job=source, version=version)  # type: ignore[arg-type]
        call, key = JOB_CALLS[row.rule], "j"
    else:
        role: PointerRole = "live" if row.rule == "_revive" else "unnamed"
        db = _store(version=source, role=role)
        call, key = VERSION_CALLS[row.rule], "1"
    with caplog.at_level(logging.DEBUG, logger="shared.dataset.lifecycle"):
        call(db)
    assert any(m.startswith(f"{kind} {key} {source} -> {row.target}") for m in caplog.messages)


def test_a_new_version_logs_its_creation(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="shared.dataset.lifecycle"):
        lifecycle.register_version(Store(), 3, "j")  # type: ignore[arg-type]
    assert caplog.messages == ["version 3 new -> building: job j"]
