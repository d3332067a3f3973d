"""Redis cache of lookup answers, keyed by dataset version.

Keys carry the version, so a dataset switch never serves stale answers and needs no mass
invalidation: old keys simply expire. A miss is cached too (as an empty value, for a shorter
time) so that scans of random ids do not all reach the store. Redis being down is never an
error for readers: the cache steps aside for a short cool-down and lookups go to the store.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

NEGATIVE = b""


def cache_key(version: int, key: str) -> str:
    return f"promo:v{version}:{key}"


@dataclass
class CacheCounters:
    hits: int = 0
    negative_hits: int = 0
    misses: int = 0
    errors: int = 0


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

    @property
    def degraded(self) -> bool:
        return time.monotonic() < self._skip_until

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
        if value is None:
            self.counters.misses += 1
        elif value == NEGATIVE:
            self.counters.negative_hits += 1
        else:
            self.counters.hits += 1
        return value

    async def put(self, version: int, key: str, body: bytes) -> None:
        if self.degraded:
            return
        ttl = self.ttl_s if body else self.negative_ttl_s
        try:
            await self.redis.set(cache_key(version, key), body, ex=ttl)
        except (RedisError, OSError) as exc:
            self._failed(exc)
