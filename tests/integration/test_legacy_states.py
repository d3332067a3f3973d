"""Version records an earlier release wrote in a state this one no longer has: the one-off
migration rewrites them on the real store, once, and cleanup then treats them as any other."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest

from shared.dataset import datasets, lifecycle
from shared.infra.timeutil import now
from tests.helpers import load_dataset
from worker import upkeep

pytestmark = pytest.mark.usefixtures("clean_state")

ROW = "a,1,2018-08-04 05:32:31 +0200"


def test_a_dropped_record_becomes_retired_once_and_cleanup_then_removes_it(
    mongo_db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    assert load_dataset(mongo_db, 2, [ROW])
    assert not load_dataset(mongo_db, 1, [ROW])  # older: never live
    meta = mongo_db[datasets.META_COLLECTION]
    dropped_at = (now() - timedelta(days=1)).replace(microsecond=0)
    # v1 as the release before ``retired`` left it: "dropped", with its own timestamp.
    meta.update_one(
        {"_id": datasets.version_doc_id(1)},
        {"$set": {"state": "dropped", "dropped_at": dropped_at}},
    )
    with caplog.at_level(logging.INFO, logger="shared.dataset.lifecycle"):
        assert lifecycle.migrate_legacy_states(mongo_db) == 1
    assert "version 1 dropped -> retired" in caplog.text
    doc = meta.find_one({"_id": datasets.version_doc_id(1)})
    assert doc["state"] == lifecycle.RETIRED and "dropped_at" not in doc
    assert doc["retired_at"] == dropped_at and doc["rows"] == 1  # the rest is kept
    assert lifecycle.migrate_legacy_states(mongo_db) == 0  # idempotent
    assert lifecycle.read_record(mongo_db, 2).state == lifecycle.READY  # type: ignore[union-attr]

    # Retired a day ago and not named by the pointer since: its collection goes.
    upkeep.apply_cleanup(mongo_db, upkeep.plan_cleanup(mongo_db, 2, 60, now()), 60)
    assert lifecycle.read_record(mongo_db, 1).state == lifecycle.REMOVED  # type: ignore[union-attr]
    assert datasets.collection_name(1) not in mongo_db.list_collection_names()
