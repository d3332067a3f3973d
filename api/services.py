"""Connections one API process holds for its lifetime (one pool each, made at start-up)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.database import Database
from redis.asyncio import Redis

from api.active_version import ActiveVersionWatcher
from api.http_caching import LookupCachePolicy
from api.job_queue import JobQueue
from api.lookup_service import LookupService
from api.metrics import MetricsExporter
from api.store_gate import StoreGate
from shared.readpath.cache import PromotionCache
from shared.readpath.hot_ids import HotIdSampler
from shared.readpath.read_latency import ReadLatencyPublisher
from shared.settings import Settings


@dataclass
class Services:
    settings: Settings
    mongo: AsyncMongoClient[Any]
    db: AsyncDatabase[Any]
    # Rare operator actions (rollback) run ``shared.dataset.lifecycle``, the one implementation of
    # every state change, in a thread on this small synchronous client.
    lifecycle_db: Database[Any]
    redis: Redis
    cache: PromotionCache
    # Store calls of requests: past the circuit breaker, within the request's deadline.
    gate: StoreGate
    lookups: LookupService
    sampler: HotIdSampler
    read_latency: ReadLatencyPublisher
    watcher: ActiveVersionWatcher
    queue: JobQueue
    metrics: MetricsExporter
    http_cache: LookupCachePolicy  # lookups' Cache-Control (api.http_caching)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
