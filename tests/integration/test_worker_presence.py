"""Worker presence on the broker (shared/infra/worker_presence.py, worker/heartbeat.py) with a real
Redis: what promotions_workers_online counts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from shared.infra import worker_presence
from shared.settings import Settings
from tests.helpers import wait_for
from worker.heartbeat import Heartbeat


@pytest.fixture
def url(services: None, settings: Settings) -> Iterator[str]:
    """A database of its own on the session's Redis, emptied before and after."""
    url = settings.redis_url.get_secret_value().rsplit("/", 1)[0] + "/9"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    yield url
    with redis.Redis.from_url(url) as client:
        client.flushdb()


@pytest.fixture
def broker(url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(url) as client:
        yield client


def _online(url: str, heartbeat_s: float) -> int:
    """What the API counts (its asyncio client)."""

    async def count() -> int:
        reader = AsyncRedis.from_url(url)
        try:
            return await worker_presence.count_online(reader, heartbeat_s)
        finally:
            await reader.aclose()

    return asyncio.run(count())


def test_nodes_count_while_they_beat_and_leave_when_stopped(url: str) -> None:
    first = Heartbeat(redis.Redis.from_url(url), "w1@host", 0.2)
    second = Heartbeat(redis.Redis.from_url(url), "w2@host", 0.2)
    first.start()
    second.start()
    wait_for(lambda: _online(url, 0.2) == 2, 5)
    first.stop()  # a clean stop leaves at once
    assert _online(url, 0.2) == 1
    second.stop()
    assert _online(url, 0.2) == 0


def test_a_node_that_stops_beating_drops_out_after_three_periods(
    url: str, broker: redis.Redis
) -> None:
    worker_presence.beat(broker, "killed@host")  # beats once, then is gone without leaving
    assert _online(url, 0.3) == 1
    time.sleep(1.0)  # > 3 x 0.3 s
    assert _online(url, 0.3) == 0
    # ... and is forgotten by the next beat of any node once it is a day old.
    broker.zadd(worker_presence.WORKERS_KEY, {"killed@host": 1.0})
    worker_presence.beat(broker, "alive@host")
    assert broker.zrange(worker_presence.WORKERS_KEY, 0, -1) == [b"alive@host"]
