"""The read path behind ``GET /promotions/{id}``: two cache levels and few store reads.

1. The process's own cache (``LocalCache``): a dict probe, no I/O; hits never leave the
   process.
2. Redis, shared by every process: the answer another process (or the warm-up) already
   built.
3. The store.

Misses of level 1 are read in batches: every id missed in one event-loop turn (while at
most ``MAX_FLIGHTS`` batches wait for Redis) joins one Redis ``MGET`` and, for what Redis
lacks, one ``find({_id: {$in: [...]}})`` (at most ``MAX_FLIGHTS`` of them out at once).
Concurrent misses of the same ``(version, id)`` share one read (single flight). The Redis
fill is written behind (``put_later``), never waited for. Batching because one ``$in``
reads many ids for about the cost of one, and one MGET costs the API far less CPU than one
GET per id (docs/decisions/batched-misses.md); an idle process still sends a batch of one
at once.

Every lookup has a deadline (``LOOKUP_TIMEOUT_MS``, from the request's start): the caller
waits for its answer at most until then (``DeadlineExceeded``, a 503); a batch's Redis
read and store read finish by the latest deadline of its callers, the store read through
the driver's client-side timeout and behind the process's circuit breaker
(``api.store_gate``). A store that fails answers nobody with a 404 and caches nothing;
callers whose ids Redis had are answered before the store is asked.

Keys carry the dataset version at every level, so a switch can never serve an answer of the
previous version: the lookup asks for other keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from api.local_cache import LocalCache
from api.metrics import STORE_LOOKUP_LATENCY
from api.store_gate import StoreGate, deadline_in, left
from shared.dataset import datasets
from shared.dataset.datasets import ActiveDataset
from shared.errors import DeadlineExceeded
from shared.readpath.cache import PromotionCache, answer_body
from shared.readpath.hot_ids import HotIdSampler, read_hot_ids_async
from shared.readpath.read_latency import ReadLatencyPublisher

log = logging.getLogger(__name__)
# The part of a lookup's remaining budget its Redis read may take (a hit takes well under a
# millisecond; the rest is the store's).
CACHE_SHARE = 1 / 3

# How long a process may spend filling its own cache for a new version before serving it:
# it still serves the previous version meanwhile, so this adds to the 1 s propagation bound.
PREFILL_SECONDS = 0.25
PREFILL_BATCH = 500
MAX_BATCH = 256  # ids per MGET / $in
MAX_FLIGHTS = 4  # batches out at once (and store reads); more misses wait for the next batch
KNOWN_LAYOUTS = 64  # versions whose bucket count a process keeps (a few are ever read)

Key = tuple[int, str]


def _fail(futures: list[asyncio.Future[bytes]], exc: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)


def _retrieved(future: asyncio.Future[bytes]) -> None:
    if not future.cancelled():
        future.exception()


class LookupService:
    def __init__(
        self,
        db: AsyncDatabase[Any],
        cache: PromotionCache,
        local: LocalCache,
        sampler: HotIdSampler,
        prefill_ids: int,
        gate: StoreGate,
        timeout_s: float,
        read_latency: ReadLatencyPublisher | None = None,
    ) -> None:
        self.db = db
        self.gate = gate
        self.timeout_s = timeout_s  # a lookup's budget (LOOKUP_TIMEOUT_MS)
        self.read_latency = read_latency  # published for the loaders (worker/throttle.py)
        self.cache = cache
        self.local = local
        self.sampler = sampler
        self.prefill_ids = prefill_ids
        self.counters = cache.counters
        self._waiting: dict[Key, asyncio.Future[bytes]] = {}  # for the next batch
        self._flying: dict[Key, asyncio.Future[bytes]] = {}  # in a batch being read
        self._deadlines: dict[Key, float] = {}  # the latest deadline of each waiting key
        self._flights = 0  # batches between launch and Redis's answer
        self._store_slots = asyncio.Semaphore(MAX_FLIGHTS)  # store reads out at once
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Bucket count by version (None: one document per row); fixed for a version. The
        # live version's comes with the pointer (``current``, set by the app), others' from
        # their record.
        self._buckets: dict[int, int | None] = {}
        self.current: Callable[[], ActiveDataset | None] = lambda: None

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

    def deadline(self) -> float:
        """The deadline of a lookup that starts now."""
        return deadline_in(self.timeout_s)

    async def body(self, version: int, key: str, deadline: float | None = None) -> bytes:
        """Levels 2 and 3 for a level-1 miss, shared by concurrent callers; by
        ``deadline`` (``time.monotonic()``; default: ``LOOKUP_TIMEOUT_MS`` from now) or
        ``DeadlineExceeded``."""
        if deadline is None:
            deadline = self.deadline()
        flight_key = (version, key)
        future = self._waiting.get(flight_key)
        if future is not None:
            self.counters.coalesced += 1
            if deadline > self._deadlines[flight_key]:
                self._deadlines[flight_key] = deadline
        else:
            future = self._flying.get(flight_key)
            if future is not None:
                self.counters.coalesced += 1
            else:
                future = asyncio.get_running_loop().create_future()
                # Its callers may all have given up (deadline, disconnect): an error
                # nobody awaits is no news for asyncio's log.
                future.add_done_callback(_retrieved)
                self._waiting[flight_key] = future
                self._deadlines[flight_key] = deadline
                self._schedule()
        try:
            async with asyncio.timeout(left(deadline)):
                # A caller that goes away (client disconnect, its deadline) must not cancel
                # the others' answer.
                return await asyncio.shield(future)
        except TimeoutError:
            raise DeadlineExceeded(
                f"no answer within the lookup's {self.timeout_s * 1000:.0f} ms"
            ) from None

    def _schedule(self) -> None:
        if not self._scheduled and self._flights < MAX_FLIGHTS:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._launch)

    def _launch(self) -> None:
        """Runs one loop turn after the first miss: everything missed meanwhile goes along."""
        self._scheduled = False
        while self._waiting and self._flights < MAX_FLIGHTS:
            batch: dict[Key, asyncio.Future[bytes]] = {}
            deadline = 0.0
            for flight_key in list(self._waiting)[:MAX_BATCH]:
                batch[flight_key] = self._flying[flight_key] = self._waiting.pop(flight_key)
                deadline = max(deadline, self._deadlines.pop(flight_key))
            self._flights += 1
            task = asyncio.get_running_loop().create_task(self._read(batch, deadline))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _read(self, batch: dict[Key, asyncio.Future[bytes]], deadline: float) -> None:
        """Redis for the whole batch, then the store for what it lacked. The batch gives
        its flight back once Redis has answered: the next batch's cache hits must not wait
        behind this one's store read (a stalled store would hold them for their whole
        deadline). Store reads have slots of their own (``MAX_FLIGHTS``)."""
        flying = True
        try:
            by_version: dict[int, list[str]] = {}
            for version, key in batch:
                by_version.setdefault(version, []).append(key)
            misses: list[tuple[int, list[tuple[str, asyncio.Future[bytes]]]]] = []
            # Right after a switch a batch holds ids of both versions: a failed read of
            # one (the old one's layout, say) answers only its own callers with the error.
            for version, keys in by_version.items():
                futures = [batch[(version, key)] for key in keys]
                try:
                    missing = await self._from_cache(version, keys, futures, deadline)
                except Exception as exc:  # deadline spent: these callers get it (503)
                    _fail(futures, exc)
                    continue
                if missing:
                    misses.append((version, missing))
            flying = False
            self._land()
            for version, missing in misses:
                try:
                    await self._from_store(version, missing, deadline)
                except Exception as exc:  # store unavailable: these callers get it (503)
                    _fail([future for _, future in missing], exc)
        finally:
            for future in batch.values():
                if not future.done():  # cancelled (shutdown)
                    future.cancel()
            for flight_key in batch:
                self._flying.pop(flight_key, None)
            if flying:
                self._land()

    def _land(self) -> None:
        self._flights -= 1
        if self._waiting:
            self._schedule()

    async def _from_cache(
        self,
        version: int,
        keys: list[str],
        futures: list[asyncio.Future[bytes]],
        deadline: float,
    ) -> list[tuple[str, asyncio.Future[bytes]]]:
        """Answers what Redis has (cache hits answer 200 while the store stalls or the
        breaker is open); returns the rest. Redis gets a share of what is left: an
        unreachable cache (a partition: connects hang until REDIS_TIMEOUT_S) must leave the
        store the rest of the budget, and counts as down for its cool-down, so the lookups
        after it go straight to the store instead of each spending the whole deadline."""
        try:
            async with asyncio.timeout(left(deadline) * CACHE_SHARE):
                bodies = await self.cache.get_many(version, keys)
        except TimeoutError:
            self.cache.unavailable("no answer within the lookup's share of its deadline")
            bodies = [None] * len(keys)
        missing: list[tuple[str, asyncio.Future[bytes]]] = []
        for key, body, future in zip(keys, bodies, futures, strict=True):
            if body is None:
                missing.append((key, future))
                continue
            self.local.put(version, key, body)
            if not future.done():
                future.set_result(body)
        return missing

    async def _from_store(
        self, version: int, missing: list[tuple[str, asyncio.Future[bytes]]], deadline: float
    ) -> None:
        try:
            async with asyncio.timeout(left(deadline)):
                await self._store_slots.acquire()
        except TimeoutError:
            raise DeadlineExceeded("no store read could start within the deadline") from None
        try:
            with self.gate.call(deadline):
                stored = await self._read_store(version, [key for key, _ in missing])
        finally:
            self._store_slots.release()
        for key, future in missing:
            body = answer_body(stored.get(key))
            self.cache.put_later(version, key, body)
            self.local.put(version, key, body)
            if not future.done():
                future.set_result(body)

    async def _read_store(self, version: int, keys: list[str]) -> dict[str, dict[str, Any]]:
        """Runs inside ``StoreGate.call``: bounded by the batch's deadline."""
        started = time.perf_counter()
        active = self.current()
        if active is not None and active.version == version and active.buckets is not None:
            buckets: int | None = active.buckets
        else:
            if version not in self._buckets:
                if len(self._buckets) >= KNOWN_LAYOUTS:
                    self._buckets.clear()
                self._buckets[version] = await datasets.read_buckets(self.db, version)
            buckets = self._buckets[version]
        found = await datasets.find_rows(self.db, version, buckets, keys)
        elapsed = time.perf_counter() - started
        STORE_LOOKUP_LATENCY.observe(elapsed)
        if self.read_latency is not None:
            self.read_latency.observe(elapsed)
        return found

    async def prefill(self, version: int) -> None:
        """Before this process serves ``version``: a new local cache replaces the previous
        version's, holding the hot ids' answers that the warm-up put in Redis. Filled aside
        (the previous version is served from the old one meanwhile) and swapped in whole,
        so the old entries are freed at once (``LocalCache.adopt``). Bounded by
        ``PREFILL_SECONDS``; failures only mean a colder start."""
        if self.local.max_bytes <= 0:
            return
        fresh = LocalCache(self.local.max_bytes)
        if self.prefill_ids <= 0:
            self.local.adopt(fresh)
            return
        started = time.monotonic()
        copied = 0

        async def copy() -> None:
            nonlocal copied
            ids = await read_hot_ids_async(self.cache.redis, self.prefill_ids)
            for i in range(0, len(ids), PREFILL_BATCH):
                batch = ids[i : i + PREFILL_BATCH]
                bodies = await self.cache.get_many(version, batch, count=False)
                for key, body in zip(batch, bodies, strict=True):
                    if body is not None:
                        fresh.put(version, key, body)
                        copied += 1

        try:
            await asyncio.wait_for(copy(), PREFILL_SECONDS)
        except TimeoutError:
            log.info("local cache prefill for version %d cut at %.2f s", version, PREFILL_SECONDS)
        except Exception as exc:
            log.warning("local cache prefill for version %d failed: %s", version, exc)
        self.local.adopt(fresh)
        log.info(
            "local cache: %d answers of version %d copied in %.3f s",
            copied,
            version,
            time.monotonic() - started,
        )
