"""The nginx edge (deploy/nginx/edge/lookup-cache*.conf) in front of a real API process.

Freshness contract (docs/http-caching.md): through a switch and a rollback no answer older
than ``max-age`` + 1 s is served; with stale-if-error configured, a store outage serves the
last good answers. Each test has its own store (so it can stop it), API process and nginx.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pymongo
import pytest
import redis

from devstack.edge import edge_service, nginx_binary
from devstack.services import Service, api_command, free_port, mongo_command
from shared.dataset import lifecycle
from shared.settings import Settings
from tests.helpers import load_dataset, wait_for

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")

MAX_AGE = 2
# The API learns of a switch within 1 s (pointer poll <= 1 s): the contract's extra second.
PROPAGATION = 1.0
CACHE_DB = 7
IDS = [f"edge-{i:02d}" for i in range(24)]


def _rows(price: float, ids: list[str] = IDS) -> list[str]:
    return [f"{i},{price},2030-01-01 00:00:00 +0000 UTC" for i in ids]


@dataclass
class Edge:
    url: str
    db: Any
    store: Service
    api: Service


@contextmanager
def _stack(
    tmp_path: Path, settings: Settings, redis_port: int, extra: dict[str, str], stale: bool
) -> Iterator[Edge]:
    mongo_port, api_port, edge_port = free_port(), free_port(), free_port()
    store = Service("edge-store", mongo_command(mongo_port, ":memory:"), port=mongo_port)
    api = Service(
        "edge-api",
        api_command("127.0.0.1", api_port),
        env={
            "MONGO_URL": f"mongodb://127.0.0.1:{mongo_port}",
            "MONGO_TIMEOUT_MS": "200",  # each lookup in the outage waits this long
            # A Redis database of its own: versions start at 1 in this store too.
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/{CACHE_DB}",
            "LOOKUP_MAX_AGE_S": str(MAX_AGE),
            "LOOKUP_NEGATIVE_MAX_AGE_S": "1",
            "LOOKUP_STALE_IF_ERROR_S": "60",
            **extra,
        },
        port=api_port,
        log_path=tmp_path / "api.log",
    )
    edge = edge_service(tmp_path / "edge", edge_port, [api_port], stale_on_503=stale)
    client: pymongo.MongoClient[Any] | None = None
    try:
        store.start().wait_ready(60)
        # Short selection timeout: closing the client after the outage test stopped the
        # store must not wait 30 s for it.
        client = pymongo.MongoClient(
            f"mongodb://127.0.0.1:{mongo_port}", serverSelectionTimeoutMS=1000
        )
        client[settings.mongo_db].command("dropDatabase")
        api.start().wait_ready(60)
        edge.start().wait_ready(20)
        yield Edge(f"http://127.0.0.1:{edge_port}", client[settings.mongo_db], store, api)
    finally:
        if client is not None:
            client.close()
        for svc in (edge, api, store):
            svc.stop()


@pytest.fixture
def redis_port(services: None, settings: Settings) -> int:
    """The session's redis-server; the edge's API uses database ``CACHE_DB`` of it."""
    port = urlsplit(settings.redis_url.get_secret_value()).port
    assert port is not None
    redis.Redis(port=port, db=CACHE_DB).flushdb()
    return port


def _price(r: httpx.Response) -> float | None:
    return float(r.json()["price"]) if r.status_code == 200 else None


def test_no_answer_older_than_max_age_plus_a_second_through_switch_and_rollback(
    tmp_path: Path, settings: Settings, redis_port: int
) -> None:
    with _stack(tmp_path, settings, redis_port, {}, stale=False) as edge:
        assert load_dataset(edge.db, 1, _rows(1.0))
        seen: list[tuple[float, str, int, float | None, str]] = []
        stop = threading.Event()

        def poll(edge: Edge = edge) -> None:
            with httpx.Client(base_url=edge.url, timeout=5) as http:
                while not stop.is_set():
                    for key in IDS:
                        sent = time.monotonic()
                        r = http.get(f"/promotions/{key}")
                        seen.append(
                            (sent, key, r.status_code, _price(r), r.headers["x-cache-status"])
                        )

        with httpx.Client(base_url=edge.url) as http:
            wait_for(lambda: _price(http.get(f"/promotions/{IDS[0]}")) == 1.0, 10)
        poller = threading.Thread(target=poll)
        poller.start()
        try:
            time.sleep(1.0)
            assert load_dataset(edge.db, 2, _rows(2.0))  # the switch
            switched = time.monotonic()
            time.sleep(MAX_AGE + PROPAGATION + 1.0)
            rollback_started = time.monotonic()
            assert lifecycle.activate_by_hand(edge.db, 1).version == 1  # the rollback
            rolled_back = time.monotonic()
            time.sleep(MAX_AGE + PROPAGATION + 1.0)
        finally:
            stop.set()
            poller.join()

    assert seen and all(status == 200 for _, _, status, _, _ in seen)
    bound = MAX_AGE + PROPAGATION
    late = [s for s in seen if switched + bound < s[0] < rollback_started and s[3] != 2.0]
    assert not late, f"answers older than the switch served after max-age + 1 s: {late[:5]}"
    late = [s for s in seen if s[0] > rolled_back + bound and s[3] != 1.0]
    assert not late, f"answers older than the rollback served after max-age + 1 s: {late[:5]}"
    # The edge did absorb lookups, so the bound above is the cache's, not the API's.
    hits = sum(1 for s in seen if s[4] == "HIT")
    assert hits > len(seen) / 2, (hits, len(seen))
    assert any(s[3] == 1.0 for s in seen if switched < s[0] < switched + MAX_AGE)


def test_a_store_outage_with_stale_if_error_serves_the_last_good_answers(
    tmp_path: Path, settings: Settings, redis_port: int
) -> None:
    # No process-memory cache: the API itself must go to Redis and the store, and fail.
    extra = {"LOCAL_CACHE_MAX_BYTES": "0"}
    with _stack(tmp_path, settings, redis_port, extra, stale=True) as edge:
        assert load_dataset(edge.db, 1, _rows(1.0))
        with httpx.Client(base_url=edge.url, timeout=5) as http:
            wait_for(lambda: http.get(f"/promotions/{IDS[0]}").status_code == 200, 10)
            for key in IDS:
                assert _price(http.get(f"/promotions/{key}")) == 1.0
            edge.store.stop()
            redis.Redis(port=redis_port, db=CACHE_DB).flushdb()  # Redis kept no answer
            assert http.get("/promotions/never-asked").status_code == 503  # the API's answer
            time.sleep(MAX_AGE + 0.5)  # every edge entry is past max-age
            for key in IDS[:6]:
                r = http.get(f"/promotions/{key}")
                assert r.status_code == 200 and _price(r) == 1.0, r.text
                assert r.headers["x-cache-status"] == "STALE"
            r = http.get("/promotions/never-asked")
            assert r.status_code == 503 and r.headers["cache-control"] == "no-store"
            # The API process itself down: nginx keeps the answers within stale-if-error.
            edge.api.stop()
            r = http.get(f"/promotions/{IDS[0]}")
            assert r.status_code == 200 and r.headers["x-cache-status"] == "STALE"
