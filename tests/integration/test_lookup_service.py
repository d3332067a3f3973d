"""The miss path of one API process against the real store and Redis: concurrent misses
share store reads (single flight), misses travel in bounded batches, and a failed read
answers only the callers it concerns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from pymongo import AsyncMongoClient, monitoring
from redis.asyncio import Redis as AsyncRedis

from api import lookup_service
from api.local_cache import LocalCache
from api.lookup_service import MAX_BATCH, LookupService
from api.store_breaker import StoreBreaker
from api.store_gate import StoreGate
from shared.dataset import datasets
from shared.errors import StoreUnavailable
from shared.readpath.cache import NEGATIVE, PromotionCache, cache_key
from shared.readpath.hot_ids import HotIdSampler, window_key
from shared.settings import Settings
from tests.helpers import load_dataset

pytestmark = pytest.mark.usefixtures("clean_state")

DATE = "2018-08-04 05:32:31 +0200 CEST"
PRESENT = [f"id-{n}" for n in range(200)]


class Finds(monitoring.CommandListener):
    """The reads of a version's collection the process sends."""

    def __init__(self) -> None:
        self.collections: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.collections.append(event.command["find"])

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def of(self, version: int) -> int:
        return self.collections.count(datasets.collection_name(version))


def run_with_service(
    settings: Settings,
    scenario: Callable[[LookupService, Finds], Awaitable[None]],
    local: LocalCache | None = None,
    prefill_ids: int = 0,
) -> None:
    """A LookupService built as the app builds it (by default no local cache: every call a
    miss)."""

    async def main() -> None:
        finds = Finds()
        client: AsyncMongoClient[Any] = AsyncMongoClient(
            settings.mongo_url.get_secret_value(), event_listeners=[finds]
        )
        redis = AsyncRedis.from_url(settings.redis_url.get_secret_value())
        cache = PromotionCache(redis, 60, 60)
        sampler = HotIdSampler(redis, 16, 60, 100)
        gate = StoreGate(StoreBreaker(5, 0.5, 2.0))
        service = LookupService(
            client[settings.mongo_db],
            cache,
            LocalCache(0) if local is None else local,
            sampler,
            prefill_ids,
            gate,
            2.0,
        )
        try:
            await scenario(service, finds)
        finally:
            await redis.aclose()
            await client.close()

    asyncio.run(main())


def test_concurrent_misses_of_one_id_share_one_store_read(
    mongo_db: Any, settings: Settings
) -> None:
    assert load_dataset(mongo_db, 1, [f"{i},1.5,{DATE}" for i in PRESENT])

    async def scenario(service: LookupService, finds: Finds) -> None:
        first = [asyncio.ensure_future(service.body(1, "id-7")) for _ in range(25)]
        while not service._flying:  # the read is out: later callers join it
            await asyncio.sleep(0)
        later = [asyncio.ensure_future(service.body(1, "id-7")) for _ in range(25)]
        bodies = await asyncio.gather(*first, *later)
        assert len(set(bodies)) == 1 and b'"id":"id-7"' in bodies[0]
        assert finds.of(1) == 1
        assert service.counters.coalesced == 49

    run_with_service(settings, scenario)


def test_misses_of_one_loop_turn_go_together_in_bounded_batches(
    mongo_db: Any, settings: Settings
) -> None:
    assert load_dataset(mongo_db, 1, [f"{i},1.5,{DATE}" for i in PRESENT])
    absent = [f"absent-{n}" for n in range(100)]

    async def scenario(service: LookupService, finds: Finds) -> None:
        keys = PRESENT + absent
        bodies = await asyncio.gather(*(service.body(1, k) for k in keys))
        for key, body in zip(keys, bodies, strict=True):
            assert (body == NEGATIVE) == key.startswith("absent"), key
            assert body == NEGATIVE or f'"id":"{key}"'.encode() in body
        assert finds.of(1) == -(-len(keys) // MAX_BATCH)  # 300 ids: 2 reads, not 300

    run_with_service(settings, scenario)


def test_a_failed_read_of_one_version_fails_only_that_versions_callers(
    mongo_db: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after a switch one batch holds ids of the old and the new version; a store
    error reading the old one must not turn the new one's answers into 503s."""
    assert load_dataset(mongo_db, 2, [f"{i},2.5,{DATE}" for i in PRESENT])
    real_find_rows = lookup_service.datasets.find_rows

    async def old_version_unreadable(
        db: Any, version: int, buckets: int | None, keys: list[str]
    ) -> dict[str, dict[str, Any]]:
        if version == 1:
            raise StoreUnavailable("the store did not answer")
        return await real_find_rows(db, version, buckets, keys)

    monkeypatch.setattr(lookup_service.datasets, "find_rows", old_version_unreadable)

    async def scenario(service: LookupService, finds: Finds) -> None:
        old = [asyncio.ensure_future(service.body(1, k)) for k in PRESENT[:5]]
        new = [asyncio.ensure_future(service.body(2, k)) for k in PRESENT[:5]]
        answers = await asyncio.gather(*new)
        assert all(b'"price":2.5' in body for body in answers)
        for future in old:
            with pytest.raises(StoreUnavailable):
                await future

    run_with_service(settings, scenario)


def test_a_switch_replaces_the_local_cache_whole_with_the_new_versions_hot_answers(
    mongo_db: Any, settings: Settings
) -> None:
    """The previous version's entries go at once (freed together, not evicted one by one
    into fragmented memory), the warm-up's answers of the hot ids come in; the process
    keeps the one cache object (its bound, other holders)."""
    hot = PRESENT[:20]
    shared = redis.Redis.from_url(settings.redis_url.get_secret_value())
    shared.zadd(window_key(time.time()), {key: 100 - n for n, key in enumerate(hot)})
    for key in hot:
        shared.set(cache_key(2, key), f'{{"id":"{key}","v":2}}'.encode())
    shared.close()
    local = LocalCache(1 << 20)
    for key in PRESENT:
        local.put(1, key, b'{"v":1}')

    async def scenario(service: LookupService, finds: Finds) -> None:
        await service.prefill(2)
        assert service.local is local
        assert len(local) == len(hot)
        assert all(local.get(1, key) is None for key in PRESENT)
        assert all(local.get(2, key) == f'{{"id":"{key}","v":2}}'.encode() for key in hot)

    run_with_service(settings, scenario, local=local, prefill_ids=100)
