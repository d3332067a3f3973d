"""Warm before the flip: the ids hot now are looked up in the version about to go live and
written to the Redis cache under that version, so the first seconds after a switch look
like steady state instead of a cold cache.

Bounded in count (``warmup_max_ids``, hottest first) and in time (``warmup_max_seconds``:
whatever is not done by then is left to ordinary misses). It never raises: a failed
warm-up costs only a colder start, never a job or a rollback. Called by the job finalizer
(sync) and the rollback route (async) just before the pointer update; answers are encoded
exactly as the lookup path encodes them (``answer_body``), so a warmed entry and a filled
one are the same bytes.

It yields to the lookups it prepares for: small ``$in`` batches (``warmup_batch_ids``), and
after each batch a pause as long as the batch's read took, so the warm-up holds the store at
most about half of the time: a large batch holds a single-threaded store long while
lookups' own reads wait behind it (docs/decisions/warm-up-batches.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pymongo
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from shared.dataset import datasets, lifecycle
from shared.readpath.cache import NEGATIVE, answer_body, cache_key
from shared.readpath.hot_ids import read_hot_ids, read_hot_ids_async
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

# After a batch, the warm-up pauses this many times as long as the batch's read took.
PAUSE_PER_READ = 1.0
# The most one Redis command of the finalizer's warm-up may take (hot ids, one pipeline of
# warmup_batch_ids SETs, ~1 ms when healthy): all a switch can wait past warmup_max_seconds.
REDIS_TIMEOUT_S = 0.5


@dataclass
class WarmupResult:
    hot_ids: int = 0  # hot ids known
    warmed: int = 0  # of which written to the cache under the new version
    found: int = 0  # of which present in the new version (the rest cached as absent)
    seconds: float = 0.0
    timed_out: bool = False
    error: str | None = None


def ttl_for(body: bytes, settings: Settings) -> int:
    return settings.cache_ttl_seconds if body else settings.negative_cache_ttl_seconds


def batches(ids: list[str], size: int) -> list[list[str]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def bodies_for(batch: list[str], found: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    """Cached bytes of each id of the batch (``NEGATIVE`` when absent)."""
    return {key: answer_body(found[key]) if key in found else NEGATIVE for key in batch}


def run_warmup(
    ids: list[str],
    fetch: Callable[[list[str], float], dict[str, dict[str, Any]]],
    store: Callable[[dict[str, bytes]], None],
    max_seconds: float,
    batch_ids: int,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> WarmupResult:
    """The sync loop: ``fetch(batch, seconds_left)`` reads a batch from the new version,
    ``store`` writes its answers, then a pause (``PAUSE_PER_READ``) leaves the store to the
    lookups. Stops at the deadline (the fetch gets only the time left, a pause never goes
    past it); any error ends the warm-up, recorded in the result, never raised."""
    started = clock()
    deadline = started + max_seconds
    result = WarmupResult(hot_ids=len(ids))
    try:
        for batch in batches(ids, batch_ids):
            left = deadline - clock()
            if left <= 0:
                result.timed_out = True
                break
            began = clock()
            found = fetch(batch, left)
            read_s = clock() - began
            answers = bodies_for(batch, found)
            store(answers)
            result.warmed += len(answers)
            result.found += sum(1 for body in answers.values() if body)
            if result.warmed < len(ids):
                sleep(max(0.0, min(read_s * PAUSE_PER_READ, deadline - clock())))
    except Exception as exc:  # a warm-up must never fail the switch it prepares
        result.error = f"{type(exc).__name__}: {exc}"
    result.seconds = clock() - started
    return result


def _log(version: int, result: WarmupResult) -> None:
    if result.error:
        log.warning("warm-up of version %d stopped: %s (%s)", version, result.error, result)
    else:
        log.info("warm-up of version %d: %s", version, result)


def warm_version(db: Database[Any], redis: Redis, version: int, settings: Settings) -> WarmupResult:
    if settings.warmup_max_ids <= 0:
        return WarmupResult()
    deadline = time.monotonic() + settings.warmup_max_seconds
    buckets = datasets.read_buckets_sync(db, version)

    def fetch(batch: list[str], left: float) -> dict[str, dict[str, Any]]:
        with pymongo.timeout(left):
            return datasets.find_rows_sync(db, version, buckets, batch)

    def store(answers: dict[str, bytes]) -> None:
        pipe = redis.pipeline(transaction=False)
        for key, body in answers.items():
            pipe.set(cache_key(version, key), body, ex=ttl_for(body, settings))
        pipe.execute()

    try:
        ids = read_hot_ids(redis, settings.warmup_max_ids)
    except Exception as exc:
        return WarmupResult(error=f"reading hot ids: {type(exc).__name__}: {exc}")
    left = max(0.0, deadline - time.monotonic())
    return run_warmup(ids, fetch, store, left, settings.warmup_batch_ids)


def warm_before_switch(
    db: Database[Any], version: int, settings: Settings | None = None
) -> WarmupResult:
    """The finalizer's call, just before the pointer moves. Skipped when a newer upload is
    already live (the switch will not happen). Never raises."""
    settings = settings or get_settings()
    if settings.warmup_max_ids <= 0 or settings.warmup_max_seconds <= 0:
        return WarmupResult()
    started = time.monotonic()
    redis_timeout = min(REDIS_TIMEOUT_S, settings.warmup_max_seconds)
    try:
        # Every store command of the warm-up within its bound: a stalled store (server
        # selection, a read that never answers) must not hold the switch.
        with pymongo.timeout(settings.warmup_max_seconds):
            if datasets.newer_version_live(db, version):
                return WarmupResult()
            redis = Redis.from_url(
                settings.redis_url.get_secret_value(),
                socket_timeout=redis_timeout,
                socket_connect_timeout=redis_timeout,
            )
            try:
                result = warm_version(db, redis, version, settings)
            finally:
                redis.close()
    except Exception as exc:
        result = WarmupResult(error=f"{type(exc).__name__}: {exc}")
        result.seconds = time.monotonic() - started
    _log(version, result)
    return result


async def warm_version_async(
    db: AsyncDatabase[Any], redis: AsyncRedis, version: int, settings: Settings
) -> WarmupResult:
    """The rollback route's call: only a complete version (ready, or retired but not yet
    removed) is warmed, since the answers of a version still loading would be wrong. Never
    raises; cut at the deadline."""
    result = WarmupResult()
    if settings.warmup_max_ids <= 0:
        return result
    started = time.monotonic()

    async def warm() -> None:
        meta = db[datasets.META_COLLECTION]
        complete = {
            "_id": datasets.version_doc_id(version),
            "state": {"$in": [lifecycle.READY, lifecycle.RETIRED]},  # what a rollback takes
        }
        if await meta.find_one(complete, {"_id": 1}) is None:
            return
        buckets = await datasets.read_buckets(db, version)
        ids = await read_hot_ids_async(redis, settings.warmup_max_ids)
        result.hot_ids = len(ids)
        for batch in batches(ids, settings.warmup_batch_ids):
            began = time.monotonic()
            found = await datasets.find_rows(db, version, buckets, batch)
            read_s = time.monotonic() - began
            answers = bodies_for(batch, found)
            async with redis.pipeline(transaction=False) as pipe:
                for key, body in answers.items():
                    pipe.set(cache_key(version, key), body, ex=ttl_for(body, settings))
                await pipe.execute()
            result.warmed += len(answers)
            result.found += sum(1 for body in answers.values() if body)
            if result.warmed < len(ids):
                await asyncio.sleep(read_s * PAUSE_PER_READ)  # the deadline cuts it

    try:
        await asyncio.wait_for(warm(), timeout=settings.warmup_max_seconds)
    except TimeoutError:
        result.timed_out = True
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.seconds = time.monotonic() - started
    _log(version, result)
    return result
