"""Dropping a big version may take a store longer than a worker's socket timeout
(``TASK_STORE_TIMEOUT_S``): the drop has a deadline of its own (``DROP_TIMEOUT_S``). Within
it, one cleanup run removes the version; past it, the version stays retired and barred (never
served again) and a later cleanup finishes the removal, whether or not the store completed
the drop meanwhile. A proxy holds the drop command on its way to the store (every other
command passes at once), so the drop takes as long as the test says, on any machine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from pymongo.uri_parser import parse_uri

from shared.dataset import datasets, lifecycle
from shared.infra.mongo import task_client
from shared.infra.timeutil import now
from shared.settings import Settings
from tests.delay_proxy import DelayProxy, delay_proxy
from tests.helpers import load_dataset
from worker import upkeep

pytestmark = pytest.mark.usefixtures("clean_state")

DATE = "2018-08-04 05:32:31 +0200 CEST"
DROP = b"\x02drop\x00"  # the drop command's first element, as BSON: {"drop": "<name>"}
HOLD_S = 2.0


@pytest.fixture
def proxy(mongo_db: Any, settings: Settings) -> Iterator[DelayProxy]:
    host, port = parse_uri(settings.mongo_url.get_secret_value())["nodelist"][0]
    if host not in ("127.0.0.1", "localhost"):
        pytest.skip("the proxy fronts a local store only")
    with delay_proxy(port) as p:
        yield p


def worker_db(settings: Settings, proxy: DelayProxy, **update: Any) -> Any:
    """The store as a worker process sees it (``shared.infra.mongo``), through the proxy."""
    cfg = settings.model_copy(
        update={
            "mongo_url": SecretStr(f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true"),
            "drop_grace_s": 0,
            **update,
        }
    )
    return cfg, task_client(cfg)[cfg.mongo_db]


def retired_v1(db: Any) -> str:
    """v1 retired a while ago, v2 live: v1 is due for removal."""
    assert load_dataset(db, 1, [f"a,1.5,{DATE}", f"b,2.5,{DATE}"])
    assert load_dataset(db, 2, [f"a,3.5,{DATE}"])
    assert lifecycle.retire_version(db, 1)
    db[datasets.META_COLLECTION].update_one(
        {"_id": datasets.version_doc_id(1)}, {"$set": {"retired_at": now() - timedelta(hours=1)}}
    )
    return datasets.collection_name(1)


def state(db: Any, version: int) -> str:
    record = lifecycle.read_record(db, version)
    assert record is not None
    return record.state


def test_a_drop_slower_than_the_socket_timeout_is_done_in_one_cleanup(
    mongo_db: Any, settings: Settings, proxy: DelayProxy
) -> None:
    name = retired_v1(mongo_db)
    cfg, db = worker_db(settings, proxy, task_store_timeout_s=0.5, drop_timeout_s=4 * HOLD_S)
    proxy.hold_requests[DROP] = HOLD_S
    started = time.monotonic()
    assert upkeep.cleanup(db, cfg, now()) == []
    took = time.monotonic() - started
    assert took >= HOLD_S > 2 * cfg.task_store_timeout_s  # longer than a task's socket read
    assert state(mongo_db, 1) == lifecycle.REMOVED
    assert name not in mongo_db.list_collection_names()
    assert state(mongo_db, 2) == lifecycle.READY
    db.client.close()


def test_a_drop_past_its_deadline_leaves_the_version_retired_for_the_next_cleanup(
    mongo_db: Any, settings: Settings, proxy: DelayProxy
) -> None:
    name = retired_v1(mongo_db)
    cfg, db = worker_db(settings, proxy, task_store_timeout_s=4 * HOLD_S, drop_timeout_s=0.5)
    proxy.hold_requests[DROP] = HOLD_S
    started = time.monotonic()
    assert upkeep.cleanup(db, cfg, now()) == [1]  # postponed, no error out of the task
    assert time.monotonic() - started < HOLD_S  # the drop's deadline, not the socket's
    assert state(mongo_db, 1) == lifecycle.RETIRED
    assert 1 in lifecycle.read_pointer(mongo_db).barred  # never served again meanwhile
    assert lifecycle.read_pointer(mongo_db).version == 2

    # The store may finish the held drop by itself; say it did: the next cleanup still
    # moves the record to removed (it no longer finds the collection to drop).
    proxy.hold_requests.clear()
    mongo_db.drop_collection(name)
    assert upkeep.cleanup(db, cfg, now()) == []
    assert state(mongo_db, 1) == lifecycle.REMOVED
    assert state(mongo_db, 2) == lifecycle.READY
    db.client.close()
