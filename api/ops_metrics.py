"""Series for the service-level objectives and their alerts (docs/operations.md), derived on
the API side at scrape time: from the job records, the pointer, the broker, the shared volume
and a ping of the store and the cache.

Deriving them here, instead of exporting from the Celery processes, keeps them correct with
any number of worker nodes and pool processes (no per-process files, no push gateway) and
alive when every worker is gone - exactly when "no worker online" must fire. Every series
is unlabelled or labelled by a fixed set (job status, phase): low cardinality. A source
that cannot be read leaves its series out (the alert rules treat absence explicitly) rather
than reporting a stale value.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from api.active_version import ActiveVersionWatcher
from shared.dataset import job_progress
from shared.dataset.lifecycle import FINISHED, JOBS
from shared.errors import PermanentError, TransientError, store_errors
from shared.infra import worker_presence
from shared.settings import Settings

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 2.0
# The Redis transport keeps one list per priority step; only the default queue is used.
CELERY_QUEUE = "celery"
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED_KEY = "unacked"

_LAST_JOB_FIELDS = {
    "status": 1,
    "created_at": 1,
    "phase_at": 1,
    "finished_at": 1,
    "rows_loaded": 1,
    "rows_rejected": 1,
}


def _queue_keys(queue: str = CELERY_QUEUE) -> list[str]:
    return [queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS]


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, datetime):
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


@dataclass
class OpsState:
    """What the last refresh read; None: that source could not be read."""

    store_up: bool | None = None
    cache_up: bool | None = None
    broker_up: bool | None = None
    last_job: dict[str, Any] | None = None
    progress_age_s: float | None = None  # 0 when no job is unfinished
    queue_depth: int | None = None
    unacked: int | None = None
    workers_online: int | None = None
    volume: tuple[int, int] | None = None  # (free, total) bytes
    read_at: float = field(default=float("-inf"))


class OpsReader:
    """Reads every source at most every ``ops_metrics_ttl_s``, each bounded in time, all
    at once: a scrape never waits on one stuck source for longer than its timeout."""

    def __init__(
        self, db: AsyncDatabase[Any], cache: Redis, broker: Redis, settings: Settings
    ) -> None:
        self.db = db
        self.cache = cache
        self.broker = broker
        self.settings = settings
        self.state = OpsState()
        self._lock = asyncio.Lock()

    async def refresh(self) -> OpsState:
        async with self._lock:
            if time.monotonic() - self.state.read_at >= self.settings.ops_metrics_ttl_s:
                state = OpsState(read_at=time.monotonic())
                await asyncio.gather(
                    self._read_store(state),
                    self._read_cache(state),
                    self._read_broker(state),
                    self._read_volume(state),
                )
                self.state = state
            return self.state

    async def _read_store(self, state: OpsState) -> None:
        try:
            with store_errors():
                await asyncio.wait_for(self.db.command("ping"), PING_TIMEOUT_S)
        except (TimeoutError, TransientError, PermanentError, PyMongoError) as exc:
            log.warning("store unreachable for /metrics: %s", exc)
            state.store_up = False
            return
        state.store_up = True
        try:
            with store_errors():
                state.last_job, state.progress_age_s = await asyncio.wait_for(
                    self._read_jobs(), PING_TIMEOUT_S
                )
        except (TimeoutError, TransientError) as exc:
            log.warning("job records unavailable for /metrics: %s", exc)

    async def _read_jobs(self) -> tuple[dict[str, Any] | None, float]:
        jobs = self.db[JOBS]
        last = await jobs.find_one(
            {"status": {"$in": list(FINISHED)}},
            _LAST_JOB_FIELDS,
            sort=[("finished_at", DESCENDING)],
        )
        newest = await jobs.find_one(
            {"status": {"$nin": list(FINISHED)}},
            {"updated_at": 1},
            sort=[("updated_at", DESCENDING)],
        )
        progressed = _timestamp((newest or {}).get("updated_at"))
        age = 0.0 if progressed is None else max(0.0, time.time() - progressed)
        return last, age

    async def _read_cache(self, state: OpsState) -> None:
        try:
            await asyncio.wait_for(self.cache.ping(), PING_TIMEOUT_S)
            state.cache_up = True
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("cache unreachable for /metrics: %s", exc)
            state.cache_up = False

    async def _read_broker(self, state: OpsState) -> None:
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                pipe = self.broker.pipeline(transaction=False)
                for key in _queue_keys():
                    pipe.llen(key)
                pipe.hlen(UNACKED_KEY)
                *depths, unacked = await pipe.execute()
                online = await worker_presence.count_online(
                    self.broker, self.settings.worker_heartbeat_s
                )
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("broker unreachable for /metrics: %s", exc)
            state.broker_up = False
            return
        state.broker_up = True
        state.queue_depth = sum(int(d) for d in depths)
        state.unacked = int(unacked)
        state.workers_online = online

    async def _read_volume(self, state: OpsState) -> None:
        try:
            usage = await asyncio.to_thread(shutil.disk_usage, self.settings.data_dir)
        except OSError as exc:
            log.warning("shared volume unreadable for /metrics: %s", exc)
            return
        state.volume = (usage.free, usage.total)


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    if value is not None:
        family.add_metric([], value)
    return family


def _up(value: bool | None) -> float | None:
    return None if value is None else float(value)


class OpsCollector:
    """Turns the last read into series; the pointer comes from the process's watcher (no
    store read: the age keeps counting while the store is down)."""

    def __init__(
        self, reader: OpsReader, watcher: ActiveVersionWatcher, settings: Settings
    ) -> None:
        self.reader = reader
        self.watcher = watcher
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        state = self.reader.state
        s = self.settings
        yield _gauge(
            "promotions_upload_period_seconds",
            "How often the partner sends a file (the freshness objective is two periods)",
            s.upload_period_s,
        )
        yield _gauge(
            "promotions_reject_ratio_limit",
            "Share of invalid rows above which a job fails (REJECT_RATIO)",
            s.reject_ratio,
        )
        yield _gauge(
            "promotions_shared_volume_min_free_bytes",
            "Free space kept on the shared volume: uploads that would eat into it are refused",
            s.min_free_bytes,
        )
        active = self.watcher.current
        switched = _timestamp(active.activated_at) if active is not None else None
        yield _gauge(
            "promotions_last_switch_timestamp_seconds",
            "When the live dataset went live (Unix time)",
            switched,
        )
        yield _gauge(
            "promotions_active_dataset_age_seconds",
            "Seconds since the live dataset went live",
            None if switched is None else max(0.0, time.time() - switched),
        )
        yield _gauge("promotions_store_up", "1 if the store answered a ping", _up(state.store_up))
        yield _gauge("promotions_cache_up", "1 if the cache answered a ping", _up(state.cache_up))
        yield _gauge("promotions_broker_up", "1 if the broker answered", _up(state.broker_up))
        yield _gauge(
            "promotions_broker_queue_depth",
            "Tasks waiting on the broker for a worker",
            state.queue_depth,
        )
        yield _gauge(
            "promotions_broker_unacked_tasks",
            "Tasks delivered to workers and not yet acknowledged (running or reserved)",
            state.unacked,
        )
        yield _gauge(
            "promotions_workers_online",
            "Worker nodes whose heartbeat reached the broker recently",
            state.workers_online,
        )
        yield _gauge(
            "promotions_job_progress_age_seconds",
            "Seconds since any unfinished job last made progress (0 when none is unfinished)",
            state.progress_age_s,
        )
        free, total = state.volume if state.volume is not None else (None, None)
        yield _gauge(
            "promotions_shared_volume_free_bytes",
            "Free bytes on the shared volume (uploads, run files, reject reports)",
            free,
        )
        yield _gauge("promotions_shared_volume_size_bytes", "Size of the shared volume", total)
        yield from self._last_job(state.last_job)

    def _last_job(self, doc: dict[str, Any] | None) -> Iterator[Metric]:
        status = GaugeMetricFamily(
            "promotions_last_job_status",
            "1 for the outcome of the job that ended last, 0 for the other outcomes",
            labels=["status"],
        )
        phases = GaugeMetricFamily(
            "promotions_last_job_phase_duration_seconds",
            "Seconds the job that ended last spent in each phase (and in total)",
            labels=["phase"],
        )
        finished = rows = ratio = None
        if doc is not None:
            for outcome in FINISHED:
                status.add_metric([outcome], float(doc.get("status") == outcome))
            for phase, seconds in (job_progress.phase_durations(doc) or {}).items():
                phases.add_metric([phase], seconds)
            finished = _timestamp(doc.get("finished_at"))
            loaded, rejected = int(doc.get("rows_loaded") or 0), int(doc.get("rows_rejected") or 0)
            rows = float(loaded + rejected)
            ratio = rejected / rows if rows else 0.0
        yield status
        yield phases
        yield _gauge(
            "promotions_last_job_finished_timestamp_seconds",
            "When the job that ended last ended (Unix time)",
            finished,
        )
        yield _gauge(
            "promotions_last_job_rows",
            "Data rows the job that ended last read (valid and rejected)",
            rows,
        )
        yield _gauge(
            "promotions_last_job_rejected_ratio",
            "Share of the rows of the job that ended last that were rejected",
            ratio,
        )
