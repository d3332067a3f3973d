"""Which ids are hot right now, known cheaply enough to ask on every lookup.

Each API process counts one lookup in ``sample_every`` in a local counter (an integer
decrement per lookup, a dict update per sample) and every ``flush_s`` adds its counts to a
Redis sorted set in one pipeline. The set is bounded (trimmed to the ``max_ids`` highest
scores after each flush) and ages out by time: counts go to the set of the current time
window (``WINDOW_S``), which expires two windows later, and readers merge the current and
the previous window. So an id hot an hour ago but cold now drops out, and the structure
never holds more than ``2 * max_ids`` members.

The warm-up (``shared.readpath.warmup``) reads the top ids before a switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

KEY_PREFIX = "promotions:hot:"
WINDOW_S = 300


def window_key(at: float, offset: int = 0) -> str:
    return f"{KEY_PREFIX}{int(at // WINDOW_S) - offset}"


def merge_ranked(*ranked: list[bytes], limit: int) -> list[str]:
    """Ids in order of first appearance (current window first), without repeats."""
    out: dict[str, None] = {}
    for ids in ranked:
        for raw in ids:
            out.setdefault(raw.decode() if isinstance(raw, bytes) else raw, None)
            if len(out) >= limit:
                return list(out)
    return list(out)


def read_hot_ids(redis: Redis, limit: int, at: float | None = None) -> list[str]:
    """The hottest ``limit`` ids of the current and the previous window (sync: worker)."""
    if limit <= 0:
        return []
    at = time.time() if at is None else at
    pipe = redis.pipeline(transaction=False)
    pipe.zrevrange(window_key(at), 0, limit - 1)
    pipe.zrevrange(window_key(at, 1), 0, limit - 1)
    current, previous = pipe.execute()
    return merge_ranked(current, previous, limit=limit)


async def read_hot_ids_async(redis: AsyncRedis, limit: int, at: float | None = None) -> list[str]:
    """The API's twin of ``read_hot_ids``."""
    if limit <= 0:
        return []
    at = time.time() if at is None else at
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrevrange(window_key(at), 0, limit - 1)
        pipe.zrevrange(window_key(at, 1), 0, limit - 1)
        current, previous = await pipe.execute()
    return merge_ranked(current, previous, limit=limit)


class HotIdSampler:
    """Per API process: samples lookups, flushes counts to Redis in the background."""

    def __init__(self, redis: AsyncRedis, sample_every: int, flush_s: float, max_ids: int) -> None:
        self.redis = redis
        self.sample_every = sample_every
        self.flush_s = flush_s
        self.max_ids = max_ids
        self.counts: Counter[str] = Counter()
        self._countdown = sample_every
        self._task: asyncio.Task[None] | None = None

    def note(self, key: str) -> None:
        self._countdown -= 1
        if self._countdown <= 0:
            self._countdown = self.sample_every
            self.counts[key] += 1

    async def flush(self, at: float | None = None) -> None:
        if not self.counts:
            return
        # Only the heaviest local ids: one flush stays one bounded pipeline.
        counts, self.counts = self.counts.most_common(self.max_ids), Counter()
        name = window_key(time.time() if at is None else at)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, n in counts:
                pipe.zincrby(name, n, key)
            pipe.zremrangebyrank(name, 0, -self.max_ids - 1)
            pipe.expire(name, 2 * WINDOW_S)
            await pipe.execute()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hot-id-flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except (RedisError, OSError) as exc:
                log.debug("could not record hot ids: %s", exc)
            except Exception:
                log.exception("recording hot ids failed")
