"""The dev store `make run` and the benches start is a standalone server: as a single-node
replica set it writes an oplog entry for every document stored, which nothing here reads, and
a load then took 1.56x the store's CPU a row (bench.store_topology;
docs/decisions/standalone-dev-store.md). The tests' own store stays a replica set, as
deployments are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pymongo

from devstack.services import Service, free_port, mongo_command


def _hello(replica_set: bool, tmp_path: Path) -> dict[str, Any]:
    port = free_port()
    command = mongo_command(port, ":memory:", replica_set=replica_set)
    store = Service("mongo", command, port=port, log_path=tmp_path / f"m-{replica_set}.log")
    store.start().wait_ready(60)
    try:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=20_000
        )
        try:
            client["probe"]["c"].insert_one({"_id": 1})
            return dict(client.admin.command("hello"))
        finally:
            client.close()
    finally:
        store.stop()


def test_the_dev_stack_store_is_standalone(tmp_path: Path) -> None:
    assert "setName" not in _hello(replica_set=False, tmp_path=tmp_path)


def test_a_replica_set_store_can_still_be_asked_for(tmp_path: Path) -> None:
    assert _hello(replica_set=True, tmp_path=tmp_path).get("setName")
