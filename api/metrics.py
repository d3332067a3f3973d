"""Prometheus series of the API and the registry ``GET /metrics`` serves.

Several uvicorn workers: when ``PROMETHEUS_MULTIPROC_DIR`` is set (read by prometheus_client
itself, before any metric is created), counters and histograms live in per-process files in
that directory and a scrape merges them all; otherwise the process's default registry is
served. Values every process knows alike (the active dataset, job counts) are read at scrape
time by the answering process, so they need no per-process files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pymongo
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from api.active_version import ActiveVersionWatcher
from api.ops_metrics import OpsCollector, OpsReader
from shared.dataset import job_records
from shared.errors import TransientError, store_errors
from shared.readpath.cache import CacheCounters
from shared.settings import Settings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Lookups take well under a millisecond from the cache; uploads take seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

HTTP_REQUESTS = Counter(
    "promotions_http_requests_total",
    "HTTP requests answered, by route template and status code",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "promotions_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
STORE_LOOKUP_LATENCY = Histogram(
    "promotions_store_lookup_duration_seconds",
    "Time of one read in MongoDB for cache misses (one id, or a batch of ids missed together)",
    buckets=LATENCY_BUCKETS,
)
CACHE_LOOKUPS = Counter(
    "promotions_cache_lookups_total",
    "Lookup-cache answers: local_hit, local_negative_hit (the process's own cache), then "
    "for the rest hit, negative_hit (a cached 'not found') or miss (Redis), and coalesced "
    "(joined a read of the same id already in flight)",
    ["result"],
)
# Per process; with several processes a scrape shows the highest of the living ones: 1 when
# any of them refuses store-bound requests (alert rules use this name).
STORE_BREAKER_OPEN = Gauge(
    "promotions_store_breaker_open",
    "1 while this process's circuit breaker in front of the store is open or half-open "
    "(store-bound requests get 503 at once, cache hits still answer), 0 when closed",
    multiprocess_mode="livemax",
)
CACHE_ERRORS = Counter(
    "promotions_cache_errors_total", "Cache operations that failed (Redis unreachable)"
)

JOB_COUNTS_TTL_S = 5.0
# A scrape must answer while the store stalls: the job counts wait at most this long (the
# previous counts are served meanwhile).
JOB_COUNTS_READ_S = 1.0


class CacheCounterMirror:
    """Copies the cache's plain counters (shared/ knows nothing of Prometheus) into the
    Prometheus counters, as deltas: cheap, and correct across processes."""

    def __init__(self, counters: CacheCounters) -> None:
        self.counters = counters
        self._seen = CacheCounters()

    def sync(self) -> None:
        now, seen = self.counters, self._seen
        for field, counter in (
            ("hits", CACHE_LOOKUPS.labels("hit")),
            ("negative_hits", CACHE_LOOKUPS.labels("negative_hit")),
            ("misses", CACHE_LOOKUPS.labels("miss")),
            ("local_hits", CACHE_LOOKUPS.labels("local_hit")),
            ("local_negative_hits", CACHE_LOOKUPS.labels("local_negative_hit")),
            ("coalesced", CACHE_LOOKUPS.labels("coalesced")),
            ("errors", CACHE_ERRORS),
        ):
            value = getattr(now, field)
            delta = value - getattr(seen, field)
            if delta > 0:
                counter.inc(delta)
                setattr(seen, field, value)


class JobCounts:
    """Jobs by status, from one ``$group`` on ``jobs``, re-read at most every few seconds."""

    def __init__(self, db: AsyncDatabase[Any], ttl_s: float = JOB_COUNTS_TTL_S) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.counts: dict[str, int] | None = None
        self._read_at = float("-inf")

    async def refresh(self) -> None:
        if time.monotonic() - self._read_at < self.ttl_s:
            return
        try:
            with store_errors(), pymongo.timeout(JOB_COUNTS_READ_S):
                self.counts = await job_records.count_by_status(self.db)
        except TransientError as exc:
            log.warning("job counts unavailable for /metrics: %s", exc)
        self._read_at = time.monotonic()


class ScrapeTimeCollector:
    """Gauges read when scraped, from the answering process's own state."""

    def __init__(self, watcher: ActiveVersionWatcher, job_counts: JobCounts) -> None:
        self.watcher = watcher
        self.job_counts = job_counts

    def collect(self) -> Iterator[Metric]:
        active = self.watcher.current
        version = GaugeMetricFamily(
            "promotions_active_dataset_version", "Dataset version lookups are served from"
        )
        rows = GaugeMetricFamily("promotions_active_dataset_rows", "Rows in the active dataset")
        if active is not None:
            version.add_metric([], active.version)
            rows.add_metric([], active.rows)
        yield version
        yield rows
        if self.job_counts.counts is not None:
            jobs = GaugeMetricFamily(
                "promotions_jobs", "Ingestion jobs by status", labels=["status"]
            )
            for status, n in sorted(self.job_counts.counts.items()):
                jobs.add_metric([status], n)
            yield jobs


class _ProcessRegistry:
    """The default registry, served through a per-app registry (single-process mode)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class MetricsExporter:
    """What one API process needs to answer a scrape."""

    def __init__(
        self,
        db: AsyncDatabase[Any],
        watcher: ActiveVersionWatcher,
        cache: CacheCounters,
        cache_redis: Redis,
        settings: Settings,
    ) -> None:
        self.job_counts = JobCounts(db)
        self.cache_mirror = CacheCounterMirror(cache)
        # Its own small client: the broker may be another Redis than the cache.
        self.broker = Redis.from_url(
            settings.broker_url.get_secret_value(),
            socket_timeout=2,
            socket_connect_timeout=2,
            max_connections=4,
        )
        self.ops = OpsReader(db, cache_redis, self.broker, settings)
        self.registry = CollectorRegistry()
        if multiprocess_mode():
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        else:
            self.registry.register(_ProcessRegistry())
        self.registry.register(ScrapeTimeCollector(watcher, self.job_counts))
        self.registry.register(OpsCollector(self.ops, watcher, settings))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Other processes' cache counters must reach the shared files without a scrape."""
        self._task = asyncio.create_task(self._mirror_loop(), name="metrics-mirror")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.broker.aclose()

    async def _mirror_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.cache_mirror.sync()
