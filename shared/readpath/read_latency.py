"""What readers see of the store, published for the loaders: loads yield to *reads*.

A loader's own insert latency does not show what readers suffer: on a busy host the readers
wait for CPU and behind the store's write queue while insert batches keep their speed. So
each API process measures its store reads (cache misses, ``observe``) and every
``period_s`` publishes to Redis a histogram of all its reads so far (cumulative counts per
latency bucket, buckets 19 % apart) and its *baseline*, the p90 it sees when reads are calm
(a low percentile of its recent calm periods' p90s, those no load flagged: ``LOADING_KEY``;
none until it has enough periods). A worker
subtracts the histogram it saw at its previous decision from the current one and so gets
the readers' latency over exactly the time since (``window``), pauses included, whenever it
happens to look. Each process writes its own key with a short TTL, so a process that dies
or stalls stops counting within seconds; a Redis set lists the publishing processes, so a
worker finds the keys without scanning the key space (which holds the cache).

Publishing and reading are best effort: a failure only means no signal, and the worker
falls back to its insert-latency rule (``worker.throttle``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

KEY_PREFIX = "promotions:read-latency:"
INDEX_KEY = "promotions:read-latency"  # set of the ids of publishing processes
INDEX_TTL_S = 24 * 3600  # the set itself goes once nobody has published for a day
# Worker processes set this key while they load or remove a version (``flag_loading``):
# a period that begins or ends while it is set is not calm, so it stays out of the
# baseline however long a load runs (a 20-minute load used to fill the whole history, and
# the "calm" level rose with it: 5.4 -> 9.1 ms during a 100M-row load). Longer than a map
# task takes, so a load renews it at each task and each paced batch.
LOADING_KEY = "promotions:loading"
LOADING_TTL_S = 30.0
# Periods with fewer reads than this say too little about a p90 to enter the baseline.
BASELINE_MIN_READS = 5
BASELINE_S = 300.0  # the baseline is taken over this much recent history
# Of the calm periods' p90s: a low quantile, so that reads slowed by a load that left no
# flag (a worker that cannot reach this Redis) barely move it.
BASELINE_QUANTILE = 0.1
BASELINE_MIN_PERIODS = 10
MAX_SAMPLES = 100_000  # per period: bounded memory whatever the miss rate
# Histogram buckets: upper bounds BUCKET_BASE_MS * BUCKET_FACTOR**i, 0.1 ms to ~10 s; the
# last bucket also takes anything slower.
BUCKET_BASE_MS = 0.1
BUCKET_FACTOR = 2**0.25
BUCKETS = 68


def key_for(process: str) -> str:
    return f"{KEY_PREFIX}{process}"


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of unsorted values (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def bucket_of(seconds: float) -> int:
    ms = seconds * 1000
    if ms <= BUCKET_BASE_MS:
        return 0
    return min(BUCKETS - 1, math.ceil(math.log(ms / BUCKET_BASE_MS, BUCKET_FACTOR) - 1e-9))


def bucket_upper_ms(index: int) -> float:
    return float(BUCKET_BASE_MS * BUCKET_FACTOR**index)


@dataclass(frozen=True)
class ReadLatency:
    """What one API process published: all its store reads so far, and its latest period."""

    process: str
    reads: int  # since the process started
    counts: dict[int, int]  # bucket -> reads since the process started (zeros left out)
    p90_ms: float  # of the latest period (for people and benchmarks)
    baseline_ms: float  # 0: not known yet
    at: float  # publisher's wall clock, for people and benchmarks only

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> ReadLatency:
        d = json.loads(raw)
        return cls(
            process=str(d["process"]),
            reads=int(d["reads"]),
            counts={int(k): int(v) for k, v in d["counts"].items()},
            p90_ms=float(d["p90_ms"]),
            baseline_ms=float(d["baseline_ms"]),
            at=float(d["at"]),
        )


def window(now: ReadLatency, before: ReadLatency | None) -> tuple[int, float]:
    """Reads of one process between two of its summaries, and their p90 in ms (the upper
    bound of its bucket; 0 for no reads)."""
    old = before.counts if before is not None else {}
    delta = {i: n - old.get(i, 0) for i, n in now.counts.items()}
    reads = sum(n for n in delta.values() if n > 0)
    if reads <= 0:
        return 0, 0.0
    rank = math.ceil(reads * 0.9)
    seen = 0
    for i in sorted(delta):
        seen += max(0, delta[i])
        if seen >= rank:
            return reads, bucket_upper_ms(i)
    return reads, bucket_upper_ms(BUCKETS - 1)


class ReadLatencyPublisher:
    """Per API process: collects store-read latencies, publishes a summary every period
    (``period_s`` 0: never, and collects nothing)."""

    def __init__(self, redis: AsyncRedis, period_s: float, process: str | None = None) -> None:
        self.redis = redis
        self.period_s = period_s
        self.enabled = period_s > 0
        self.ttl_ms = int(max(2.0, 4 * period_s) * 1000)
        self.process = process or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.samples: list[float] = []
        self.reads = 0
        self.counts: dict[int, int] = {}
        periods = int(BASELINE_S / period_s) if self.enabled else 0
        self.p90s: deque[float] = deque(maxlen=max(BASELINE_MIN_PERIODS, periods))
        self.loading = False  # the loading flag was there at the previous publish
        self._task: asyncio.Task[None] | None = None

    def observe(self, seconds: float) -> None:
        if not self.enabled:
            return
        self.reads += 1
        bucket = bucket_of(seconds)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(seconds)

    def summary(self, at: float | None = None, calm: bool = True) -> ReadLatency:
        """Closes the current period: every read so far, the period's p90 and the baseline
        before this period. Only a ``calm`` period (no load flagged) enters the baseline."""
        samples, self.samples = self.samples, []
        baseline = 0.0
        if len(self.p90s) >= BASELINE_MIN_PERIODS:
            baseline = quantile(self.p90s, BASELINE_QUANTILE)
        # In the histogram's resolution, as the workers see the readers' p90.
        p90 = bucket_upper_ms(bucket_of(quantile(samples, 0.9))) if samples else 0.0
        if calm and len(samples) >= BASELINE_MIN_READS:
            self.p90s.append(p90)
        return ReadLatency(
            process=self.process,
            reads=self.reads,
            counts=dict(self.counts),
            p90_ms=p90,
            baseline_ms=baseline,
            at=time.time() if at is None else at,
        )

    async def publish(self) -> None:
        loading = bool(await self.redis.exists(LOADING_KEY))
        summary = self.summary(calm=not (loading or self.loading))
        self.loading = loading
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(key_for(self.process), summary.encode(), px=self.ttl_ms)
            pipe.sadd(INDEX_KEY, self.process)
            pipe.expire(INDEX_KEY, INDEX_TTL_S)
            await pipe.execute()

    async def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._run(), name="read-latency-publish")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(RedisError, OSError):  # else its key expires by itself
            await self.redis.delete(key_for(self.process))
            await self.redis.srem(INDEX_KEY, self.process)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            try:
                await self.publish()
            except (RedisError, OSError) as exc:
                log.debug("could not publish read latency: %s", exc)
            except Exception:
                log.exception("publishing read latency failed")


def flag_loading(redis: Redis) -> None:
    """Worker side: a load or a removal is working now (``LOADING_KEY``)."""
    redis.set(LOADING_KEY, b"1", px=int(LOADING_TTL_S * 1000))


def read_latencies(redis: Redis) -> list[ReadLatency] | None:
    """Every live API process's latest summary (worker side, sync); None when Redis could
    not be read. Processes whose key expired are dropped from the set on the way."""
    try:
        processes = sorted(p.decode() for p in redis.smembers(INDEX_KEY))  # type: ignore[union-attr]
        if not processes:
            return []
        raws = redis.mget([key_for(p) for p in processes])
        gone = [p for p, raw in zip(processes, raws, strict=True) if raw is None]
        if gone:
            redis.srem(INDEX_KEY, *gone)
        return [ReadLatency.decode(raw) for raw in raws if raw is not None]
    except (RedisError, OSError, ValueError, KeyError, TypeError) as exc:
        log.debug("could not read the readers' latency: %s", exc)
        return None
