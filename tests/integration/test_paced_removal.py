"""A removed version's collection is emptied in paced batches before its drop
(``REMOVE_BATCH_DOCS``, worker/paced_removal.py): the dev store drops document by document
under its one lock, and blocked every lookup for 90 s dropping a 100M-row version. Checked
here: the deletes come in batches of the setting, each inside the pacing, only once the
version is barred; the drop finds an empty collection; a removal cut by its deadline
resumes where it stopped; 0 keeps the plain drop."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pymongo
import pytest
from pymongo import monitoring

from shared.dataset import datasets, lifecycle
from shared.infra.timeutil import now
from shared.settings import Settings
from tests.helpers import load_dataset, stored_rows
from worker import paced_removal, upkeep

pytestmark = pytest.mark.usefixtures("clean_state")

DATE = "2018-08-04 05:32:31 +0200 CEST"
ROWS = 3_000  # 30 buckets of ~100 rows


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.seen.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def deletes(self) -> list[list[int]]:
        """The ``_id``s of each delete, in order."""
        found = [cmd for name, cmd in self.seen if name == "delete"]
        return [list(cmd["deletes"][0]["q"]["_id"]["$in"]) for cmd in found]


@pytest.fixture
def watched(settings: Settings) -> Iterator[tuple[Any, Commands]]:
    """A database handle whose commands are recorded."""
    commands = Commands()
    url = settings.mongo_url.get_secret_value()
    client: Any = pymongo.MongoClient(url, tz_aware=True, event_listeners=[commands])
    yield client[settings.mongo_db], commands
    client.close()


def retired_v1(db: Any) -> int:
    """v1 (ROWS rows) retired an hour ago, v2 live: v1 is due for removal. Its buckets."""
    assert load_dataset(db, 1, [f"id{i},1.5,{DATE}" for i in range(ROWS)])
    assert load_dataset(db, 2, [f"a,3.5,{DATE}"])
    assert lifecycle.retire_version(db, 1)
    db[datasets.META_COLLECTION].update_one(
        {"_id": datasets.version_doc_id(1)}, {"$set": {"retired_at": now() - timedelta(hours=1)}}
    )
    buckets = datasets.read_buckets_sync(db, 1)
    assert buckets is not None and buckets >= 20, buckets
    return buckets


def state(db: Any, version: int) -> str:
    record = lifecycle.read_record(db, version)
    assert record is not None
    return record.state


def test_a_removed_version_is_deleted_in_paced_batches_once_barred_then_dropped(
    mongo_db: Any, settings: Settings, watched: tuple[Any, Commands]
) -> None:
    db, commands = watched
    buckets = retired_v1(mongo_db)
    cfg = settings.model_copy(update={"remove_batch_docs": 7, "drop_grace_s": 0})
    paced: list[tuple[int, bool, int]] = []

    @contextlib.contextmanager
    def pace(docs: int) -> Iterator[None]:
        barred = 1 in lifecycle.read_pointer(mongo_db).barred
        paced.append((docs, barred, len(commands.deletes())))
        yield

    def empty(version: int, n: int) -> bool:
        return paced_removal.empty_version(db, version, n, cfg.remove_batch_docs, pace)

    plan = upkeep.plan_cleanup(db, cfg.versions_to_keep, 0, now())
    assert upkeep.apply_cleanup(db, plan, 0, cfg.drop_timeout_s, empty) == []

    deletes = commands.deletes()
    assert [i for batch in deletes for i in batch] == list(range(buckets))
    assert all(len(batch) <= 7 for batch in deletes) and len(deletes) == -(-buckets // 7)
    # Each delete inside its pacing (entered before it was sent), the version barred first.
    assert paced == [(len(b), True, n) for n, b in enumerate(deletes)]
    names = [name for name, _ in commands.seen]
    assert names.index("drop") > max(i for i, n in enumerate(names) if n == "delete")
    assert state(mongo_db, 1) == lifecycle.REMOVED
    assert datasets.collection_name(1) not in mongo_db.list_collection_names()
    assert stored_rows(mongo_db, 2) == {"a": ("a", 3.5, DATE)}  # the live version untouched


@pytest.mark.parametrize("batch", [0, 10])
def test_the_cleanup_empties_first_by_its_setting(
    mongo_db: Any, settings: Settings, watched: tuple[Any, Commands], batch: int
) -> None:
    db, commands = watched
    buckets = retired_v1(mongo_db)
    cfg = settings.model_copy(update={"remove_batch_docs": batch, "drop_grace_s": 0})
    assert upkeep.cleanup(db, cfg, now()) == []
    deletes = commands.deletes()
    if batch == 0:
        assert deletes == []  # the plain drop
    else:
        assert [len(b) for b in deletes] == [min(10, buckets - lo) for lo in range(0, buckets, 10)]
    assert state(mongo_db, 1) == lifecycle.REMOVED
    assert datasets.collection_name(1) not in mongo_db.list_collection_names()


def test_a_removal_cut_by_its_deadline_resumes_where_it_stopped(
    mongo_db: Any, settings: Settings, watched: tuple[Any, Commands]
) -> None:
    db, commands = watched
    buckets = retired_v1(mongo_db)
    ticks = iter(range(0, 10**6, 10))  # a clock past RECORD_EVERY_S at every batch

    @contextlib.contextmanager
    def slow(docs: int) -> Iterator[None]:
        time.sleep(0.2)
        yield

    def empty(version: int, n: int) -> bool:
        clock = lambda: float(next(ticks))  # noqa: E731
        return paced_removal.empty_version(db, version, n, 3, slow, clock=clock)

    plan = upkeep.plan_cleanup(db, settings.versions_to_keep, 0, now())
    assert upkeep.apply_cleanup(db, plan, 0, 1.0, empty) == [1]  # postponed by its deadline
    first = [i for batch in commands.deletes() for i in batch]
    assert 0 < len(first) < buckets, first
    assert 1 in lifecycle.read_pointer(mongo_db).barred  # never served again meanwhile
    assert state(mongo_db, 1) == lifecycle.RETIRED
    resume_at = lifecycle.emptied_below(mongo_db, 1)
    assert 0 < resume_at <= len(first)

    commands.seen.clear()
    plan = upkeep.plan_cleanup(db, settings.versions_to_keep, 0, now())
    assert upkeep.apply_cleanup(db, plan, 0, 600.0, empty) == []
    assert [i for batch in commands.deletes() for i in batch] == list(range(resume_at, buckets))
    assert state(mongo_db, 1) == lifecycle.REMOVED
    assert datasets.collection_name(1) not in mongo_db.list_collection_names()


def test_one_remover_empties_a_version_at_a_time_and_a_dead_ones_lease_runs_out(
    mongo_db: Any, settings: Settings, watched: tuple[Any, Commands]
) -> None:
    """A cleanup runs every minute and after every job: while one empties a big version,
    another one leaves it alone (no deletes, no drop); once the first stopped renewing its
    lease (it died), the next one takes over where it stopped."""
    db, commands = watched
    buckets = retired_v1(mongo_db)
    assert lifecycle.claim_removal(mongo_db, 1, "host:1:dead", lease_s=1.0)
    assert lifecycle.record_emptied(mongo_db, 1, 10, "host:1:dead", lease_s=1.0)
    cfg = settings.model_copy(update={"remove_batch_docs": 5, "drop_grace_s": 0})

    assert upkeep.cleanup(db, cfg, now()) == []
    assert commands.deletes() == []
    assert datasets.collection_name(1) in mongo_db.list_collection_names()
    assert state(mongo_db, 1) == lifecycle.RETIRED
    assert 1 in lifecycle.read_pointer(mongo_db).barred

    time.sleep(1.2)  # the holder's lease runs out
    assert upkeep.cleanup(db, cfg, now()) == []
    assert [i for batch in commands.deletes() for i in batch] == list(range(10, buckets))
    assert state(mongo_db, 1) == lifecycle.REMOVED
    assert not lifecycle.record_emptied(mongo_db, 1, buckets, "host:1:dead", lease_s=1.0)
