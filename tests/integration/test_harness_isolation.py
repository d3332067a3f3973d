"""The test harness itself: what an earlier test left running must not reach the next one
(a flake seen in CI: a delayed clean-up barred a version a lifecycle test built by hand)."""

from __future__ import annotations

import time
from typing import Any

import redis

from shared.dataset import datasets, lifecycle
from shared.infra.task_names import CLEANUP_DATASETS
from shared.settings import Settings
from tests.helpers import StateReset, load_dataset, wait_for
from worker.celery_app import app

ROW = "a,1,2018-08-04 05:32:31 +0200"


def _scheduled() -> list[str]:
    found = app.control.inspect(timeout=5).scheduled() or {}
    return [entry["request"]["name"] for entries in found.values() for entry in entries]


def test_a_clean_up_an_earlier_test_left_scheduled_does_not_act_on_the_next_tests_versions(
    worker: Any,
    mongo_db: Any,
    redis_client: redis.Redis,
    settings: Settings,
    reset_state: StateReset,
) -> None:
    reset_state(mongo_db, redis_client, settings)
    # What every finished job leaves behind: a clean-up DROP_GRACE_S + 5 s later.
    runs_at = time.monotonic() + 8
    app.send_task(CLEANUP_DATASETS, countdown=8)
    wait_for(lambda: CLEANUP_DATASETS in _scheduled(), 20)

    reset_state(mongo_db, redis_client, settings)  # the next test starts
    assert load_dataset(mongo_db, 1, [ROW])
    assert load_dataset(mongo_db, 2, [ROW])
    assert lifecycle.retire_version(mongo_db, 1)  # the test's own state, past the grace
    assert time.monotonic() < runs_at - settings.drop_grace_s - 1  # it would remove v1
    time.sleep(runs_at + 2 - time.monotonic())

    assert datasets.collection_name(1) in mongo_db.list_collection_names()
    assert lifecycle.read_record(mongo_db, 1).state == lifecycle.RETIRED  # type: ignore[union-attr]
