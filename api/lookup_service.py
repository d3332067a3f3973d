"""The read path behind ``GET /promotions/{id}``: two cache levels and one store read per id.

1. The process's own cache (``LocalCache``): a dict probe, no I/O; hits never leave the
   process.
2. Redis, shared by every process: the answer another process (or the warm-up) already
   built.
3. The store. Concurrent misses of the same ``(version, id)`` share one task for levels 2
   and 3 (single flight), so a burst on one cold id costs one Redis GET and at most one
   store read per process; the Redis fill is written behind (``put_later``), never waited
   for.

Keys carry the dataset version at every level, so a switch can never serve an answer of the
previous version: the lookup asks for other keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from api.metrics import STORE_LOOKUP_LATENCY
from shared.cache import PromotionCache, answer_body
from shared.datasets import find_promotion
from shared.hot_ids import HotIdSampler, read_hot_ids_async
from shared.local_cache import LocalCache

log = logging.getLogger(__name__)

# How long a process may spend filling its own cache for a new version before serving it:
# it still serves the previous version meanwhile, so this adds to the 1 s propagation bound.
PREFILL_SECONDS = 0.25
PREFILL_BATCH = 500

Key = tuple[int, str]


class LookupService:
    def __init__(
        self,
        db: AsyncDatabase[Any],
        cache: PromotionCache,
        local: LocalCache,
        sampler: HotIdSampler,
        prefill_ids: int,
    ) -> None:
        self.db = db
        self.cache = cache
        self.local = local
        self.sampler = sampler
        self.prefill_ids = prefill_ids
        self.counters = cache.counters
        self._inflight: dict[Key, asyncio.Future[bytes]] = {}

    def local_body(self, version: int, key: str) -> bytes | None:
        """Level 1 only (synchronous): the cached body, ``NEGATIVE`` or None."""
        self.sampler.note(key)
        body = self.local.get(version, key)
        if body is not None:
            if body:
                self.counters.local_hits += 1
            else:
                self.counters.local_negative_hits += 1
        return body

    async def body(self, version: int, key: str) -> bytes:
        """Levels 2 and 3 for a level-1 miss, shared by concurrent callers."""
        flight_key = (version, key)
        task = self._inflight.get(flight_key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(version, key))
            self._inflight[flight_key] = task
            task.add_done_callback(lambda t: self._landed(flight_key, t))
        else:
            self.counters.coalesced += 1
        # A caller that goes away (client disconnect) must not cancel the others' read.
        return await asyncio.shield(task)

    def _landed(self, flight_key: Key, task: asyncio.Future[bytes]) -> None:
        self._inflight.pop(flight_key, None)
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" noise if every caller left

    async def _fetch(self, version: int, key: str) -> bytes:
        body = await self.cache.get(version, key)
        if body is None:
            started = time.perf_counter()
            body = answer_body(await find_promotion(self.db, version, key))
            STORE_LOOKUP_LATENCY.observe(time.perf_counter() - started)
            self.cache.put_later(version, key, body)
        self.local.put(version, key, body)
        return body

    async def prefill(self, version: int) -> None:
        """Before this process serves ``version``: copy the hot ids' answers that the
        warm-up put in Redis into the local cache. Bounded by ``PREFILL_SECONDS``; failures
        only mean a colder start."""
        if self.local.max_bytes <= 0 or self.prefill_ids <= 0:
            return
        started = time.monotonic()
        copied = 0

        async def copy() -> None:
            nonlocal copied
            ids = await read_hot_ids_async(self.cache.redis, self.prefill_ids)
            for i in range(0, len(ids), PREFILL_BATCH):
                batch = ids[i : i + PREFILL_BATCH]
                for key, body in zip(batch, await self.cache.get_many(version, batch), strict=True):
                    if body is not None:
                        self.local.put(version, key, body)
                        copied += 1

        try:
            await asyncio.wait_for(copy(), PREFILL_SECONDS)
        except TimeoutError:
            log.info("local cache prefill for version %d cut at %.2f s", version, PREFILL_SECONDS)
        except Exception as exc:
            log.warning("local cache prefill for version %d failed: %s", version, exc)
        log.info(
            "local cache: %d answers of version %d copied in %.3f s",
            copied,
            version,
            time.monotonic() - started,
        )
