"""Lookups over real Mongo-compatible server and Redis: versions, cache, degradation."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.main import create_app
from devstack.services import Service, free_port, mongo_command
from shared.dataset import datasets
from shared.readpath.cache import cache_key
from shared.readpath.pointer_channel import announce_active
from shared.settings import Settings
from tests.helpers import load_dataset, wait_for

ROW = "D018EF0B-dbd9-48f1-ac1a-eb4d90e57118,60.683466,2018-08-04 05:32:31 +0200 CEST"
KEY = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118"


def _serving(client: TestClient, version: int) -> bool:
    current = client.app.state.services.watcher.current  # type: ignore[attr-defined]
    return current is not None and current.version == version


def test_no_dataset_yet_is_404(client: TestClient) -> None:
    r = client.get(f"/promotions/{KEY}")
    assert r.status_code == 404 and "no promotions dataset" in r.json()["detail"]
    assert client.get("/datasets/active").status_code == 404


def test_lookup_is_case_insensitive_and_returns_values_as_written(
    client: TestClient, mongo_db: Any
) -> None:
    load_dataset(mongo_db, 1, [ROW])
    wait_for(lambda: _serving(client, 1), 5)
    for asked in (KEY, KEY.upper()):
        r = client.get(f"/promotions/{asked}")
        assert r.status_code == 200
        assert r.json() == {
            "id": "D018EF0B-dbd9-48f1-ac1a-eb4d90e57118",
            "price": 60.683466,
            "expiration_date": "2018-08-04 05:32:31 +0200 CEST",
        }
    active = client.get("/datasets/active").json()
    assert active["version"] == 1 and active["rows"] == 1 and active["job_id"] == "fixture"


@pytest.mark.parametrize("bad", ["a" * 65, "has space", "semi;colon", "dot.dot", "%2e%2e"])
def test_impossible_ids_are_refused_without_a_lookup(client: TestClient, bad: str) -> None:
    assert client.get(f"/promotions/{bad}").status_code == 422


def test_switch_is_seen_within_the_bound_and_cache_is_scoped_by_version(
    client: TestClient, mongo_db: Any, redis_client: redis.Redis, settings: Settings
) -> None:
    load_dataset(mongo_db, 1, [ROW])
    wait_for(lambda: _serving(client, 1), 5)
    assert client.get(f"/promotions/{KEY}").json()["price"] == 60.683466
    wait_for(lambda: redis_client.get(cache_key(1, KEY)) is not None, 5)  # written behind

    load_dataset(mongo_db, 2, [ROW.replace("60.683466", "1.5")])
    announce_active(settings.redis_url.get_secret_value(), 2)
    wait_for(lambda: _serving(client, 2), settings.pointer_poll_seconds + 0.5)
    assert client.get(f"/promotions/{KEY}").json()["price"] == 1.5
    wait_for(lambda: redis_client.get(cache_key(2, KEY)) is not None, 5)


def test_misses_are_cached_so_repeated_scans_stay_off_the_store(
    client: TestClient, mongo_db: Any, redis_client: redis.Redis
) -> None:
    load_dataset(mongo_db, 1, [ROW])
    wait_for(lambda: _serving(client, 1), 5)
    assert client.get("/promotions/absent-id").status_code == 404
    wait_for(lambda: redis_client.get(cache_key(1, "absent-id")) == b"", 5)  # written behind
    assert 0 < redis_client.ttl(cache_key(1, "absent-id")) <= 60
    # Were the store asked again, it would now find the row.
    mongo_db[datasets.collection_name(1)].insert_one(
        {"_id": "absent-id", "price": 1.0, "expiration_date": "x", "o": 99}
    )
    assert client.get("/promotions/absent-id").status_code == 404
    counters = client.app.state.services.cache.counters  # type: ignore[attr-defined]
    assert counters.local_negative_hits >= 1  # the process's own cache answered
    # Another process (empty local cache) gets the negative answer from Redis.
    client.app.state.services.lookups.local.clear()  # type: ignore[attr-defined]
    assert client.get("/promotions/absent-id").status_code == 404
    assert counters.negative_hits >= 1


def test_redis_down_lookups_answer_from_the_store(
    clean_state: None, mongo_db: Any, settings: Settings
) -> None:
    load_dataset(mongo_db, 1, [ROW])
    dead = settings.model_copy(
        update={"redis_url": SecretStr(f"redis://127.0.0.1:{free_port()}/0")}
    )
    with TestClient(create_app(dead)) as c:
        for _ in range(3):
            assert c.get(f"/promotions/{KEY}").status_code == 200
        assert c.get("/promotions/absent").status_code == 404
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "degraded"
        assert c.app.state.services.cache.counters.errors >= 1  # type: ignore[attr-defined]


@pytest.mark.slow
def test_store_down_is_503_never_404(clean_state: None, settings: Settings, tmp_path: Any) -> None:
    import pymongo

    port = free_port()
    mongo = Service("mongo-down", mongo_command(port, str(tmp_path / "db")), port=port)
    mongo.start().wait_ready(60)
    try:
        url = f"mongodb://127.0.0.1:{port}"
        own = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
        load_dataset(own[settings.mongo_db], 1, [ROW])
        own.close()
        cfg = settings.model_copy(update={"mongo_url": SecretStr(url), "mongo_timeout_ms": 500})
        with TestClient(create_app(cfg)) as c:
            assert c.get(f"/promotions/{KEY}").status_code == 200
            mongo.stop()
            r = c.get("/promotions/not-cached-id")
            assert r.status_code == 503 and "unavailable" in r.json()["detail"]
            assert c.get("/readyz").status_code == 503
            # A cached answer is still served while the store is down.
            assert c.get(f"/promotions/{KEY}").status_code == 200
    finally:
        mongo.stop()


def test_store_unreachable_at_start_is_503_not_no_dataset(
    clean_state: None, settings: Settings
) -> None:
    dead = settings.model_copy(
        update={
            "mongo_url": SecretStr(f"mongodb://127.0.0.1:{free_port()}"),
            "mongo_timeout_ms": 200,
        }
    )
    with TestClient(create_app(dead)) as c:
        r = c.get(f"/promotions/{KEY}")
        assert r.status_code == 503 and "unavailable" in r.json()["detail"]
