"""The reduce's bucket inserts go without retryable writes (``shared.infra.mongo``,
``task_insert_database``): a store keeps a record of every retryable write, and the dev
store's bookkeeping of those records took 45 % of its time during a load beside a live
version. The inserts are idempotent by design, so the driver's retry adds nothing."""

from __future__ import annotations

from typing import Any

import pymongo
import pytest
from pymongo import monitoring

from shared.dataset import datasets
from shared.infra import mongo
from shared.settings import Settings
from tests.integration.staged_jobs import mapped_job
from worker import job_steps

pytestmark = pytest.mark.usefixtures("clean_state")


class Inserts(monitoring.CommandListener):
    """The insert commands sent while ``on``."""

    def __init__(self) -> None:
        self.on = True
        self.commands: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on and event.command_name == "insert":
            self.commands.append((event.command["insert"], dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _supports_retryable_writes(db: Any) -> bool:
    hello = db.client.admin.command("hello")
    replicated = "setName" in hello or hello.get("msg") == "isdbgrid"
    return replicated and "logicalSessionTimeoutMinutes" in hello


def test_the_worker_inserts_buckets_without_retryable_writes(
    mongo_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    inserts = Inserts()
    monitoring.register(inserts)  # for the clients made from here on (no unregister: off)
    monkeypatch.setattr(mongo, "_task_clients", {})
    try:
        mongo.task_insert_database()["probe"].insert_one({"n": 1})
        mongo.task_database()["probe"].insert_one({"n": 2})
    finally:
        inserts.on = False
        for client in mongo._task_clients.values():
            client.close()
    (_, bulk), (_, records) = inserts.commands[-2:]
    assert "txnNumber" not in bulk
    if _supports_retryable_writes(mongo_db):  # a standalone server never gets one
        assert "txnNumber" in records


def test_a_partitions_buckets_go_through_the_insert_handle(
    mongo_db: Any, settings: Settings
) -> None:
    rows = [f"id{i},1,2018-08-04 05:32:31 +0200" for i in range(500)]
    partitions = mapped_job(mongo_db, settings, "b", 1, rows)
    inserts = Inserts()
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(
        settings.mongo_url.get_secret_value(), retryWrites=False, event_listeners=[inserts]
    )
    try:
        for partition in partitions:
            job_steps.write_partition(
                mongo_db, settings, "b", partition, insert_db=client[mongo_db.name]
            )
    finally:
        client.close()
    version = datasets.collection_name(1)
    buckets = [cmd for coll, cmd in inserts.commands if coll == version]
    assert buckets and all("txnNumber" not in cmd for cmd in buckets)
    assert sum(len(cmd["documents"]) for cmd in buckets) == mongo_db[version].count_documents({})
