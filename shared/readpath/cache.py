"""Redis cache of lookup answers, keyed by dataset version.

Keys carry the version, so a dataset switch never serves stale answers and needs no mass
invalidation: old keys simply expire. A miss is cached too (as an empty value, for a shorter
time) so that scans of random ids do not all reach the store. Redis being down is never an
error for readers: the cache steps aside for a short cool-down and lookups go to the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

NEGATIVE = b""
# Fills waiting for the write-behind flush; beyond this (Redis stalled) new fills are
# dropped: an entry can always be rebuilt from the store.
MAX_PENDING_FILLS = 10_000


def cache_key(version: int, key: str) -> str:
    return f"promo:v{version}:{key}"


def answer_body(promotion: dict[str, Any] | None) -> bytes:
    """The cached bytes of one answer, the same in every writer (lookups, warm-up).

    Copied to a bytes object of its own length: orjson hands its output back in the buffer
    it wrote it into, at least ~4 KiB however short the answer (tracemalloc: 4,089 B held
    for a 105-byte answer), and caches keep answers by the hundred thousand."""
    return memoryview(orjson.dumps(promotion)).tobytes() if promotion else NEGATIVE


@dataclass
class CacheCounters:
    hits: int = 0  # Redis
    negative_hits: int = 0
    misses: int = 0
    errors: int = 0
    local_hits: int = 0  # the process's own cache
    local_negative_hits: int = 0
    coalesced: int = 0  # lookups that joined a read of the same id already in flight


class PromotionCache:
    def __init__(
        self, redis: Redis, ttl_s: int, negative_ttl_s: int, cooldown_s: float = 1.0
    ) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.cooldown_s = cooldown_s
        self.counters = CacheCounters()
        self._skip_until = 0.0
        self._pending: list[tuple[str, bytes, int]] = []
        self._flusher: asyncio.Task[None] | None = None

    @property
    def degraded(self) -> bool:
        return time.monotonic() < self._skip_until

    def unavailable(self, reason: str) -> None:
        """A caller gave up waiting on Redis: the same cool-down as an error."""
        self._failed(TimeoutError(reason))

    def _failed(self, exc: Exception) -> None:
        self.counters.errors += 1
        if not self.degraded:
            log.warning("cache unavailable, serving from the store: %s", exc)
        self._skip_until = time.monotonic() + self.cooldown_s

    async def get(self, version: int, key: str) -> bytes | None:
        """Cached body (``NEGATIVE`` for a known miss) or None when not cached/unavailable."""
        if self.degraded:
            return None
        try:
            raw = await self.redis.get(cache_key(version, key))
            value: bytes | None = raw.encode() if isinstance(raw, str) else raw
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._count(value)
        return value

    def _count(self, value: bytes | None) -> None:
        """One lookup's outcome in the counters (a miss, a known miss, a hit)."""
        if value is None:
            self.counters.misses += 1
        elif value == NEGATIVE:
            self.counters.negative_hits += 1
        else:
            self.counters.hits += 1

    async def put(self, version: int, key: str, body: bytes) -> None:
        if self.degraded:
            return
        ttl = self.ttl_s if body else self.negative_ttl_s
        try:
            await self.redis.set(cache_key(version, key), body, ex=ttl)
        except (RedisError, OSError) as exc:
            self._failed(exc)

    def put_later(self, version: int, key: str, body: bytes) -> None:
        """Fire-and-forget fill: the answer goes out without waiting for Redis, and fills
        made while a flush is under way share the next pipeline (one round trip for many)."""
        if self.degraded or len(self._pending) >= MAX_PENDING_FILLS:
            return
        ttl = self.ttl_s if body else self.negative_ttl_s
        self._pending.append((cache_key(version, key), body, ttl))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending and not self.degraded:
                batch, self._pending = self._pending, []
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for name, body, ttl in batch:
                            pipe.set(name, body, ex=ttl)
                        await pipe.execute()
                except (RedisError, OSError) as exc:
                    self._failed(exc)
        finally:
            self._pending = []
            self._flusher = None

    async def flush(self) -> None:
        """Wait for the fills made so far (tests, shutdown)."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def get_many(
        self, version: int, keys: list[str], count: bool = True
    ) -> list[bytes | None]:
        """Bodies of ``keys`` (None where not cached) in one MGET; all None when Redis is
        unavailable. ``count=False``: not a lookup (prefill), left out of the counters."""
        if self.degraded or not keys:
            return [None] * len(keys)
        try:
            raw = await self.redis.mget([cache_key(version, k) for k in keys])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return [None] * len(keys)
        values: list[bytes | None] = [v.encode() if isinstance(v, str) else v for v in raw]
        if count:
            for value in values:
                self._count(value)
        return values
