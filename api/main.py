"""The HTTP API: lookups, health, datasets, and (for writers) uploads and jobs."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.types import ASGIApp, Receive, Scope, Send

from api.active_version import ActiveVersionWatcher
from api.auth import READ_REFUSALS, ReadGuard, require_reader
from api.errors import install_error_handlers
from api.fast_lookup import FastLookupMiddleware
from api.http_caching import LookupCachePolicy
from api.job_queue import JobQueue
from api.local_cache import LocalCache
from api.lookup_service import LookupService
from api.metrics import STORE_BREAKER_OPEN, MetricsExporter
from api.middleware.request_context import RequestContextMiddleware
from api.middleware.security_headers import SecurityHeaders
from api.openapi_doc import install as install_openapi_doc
from api.routes import datasets, health, jobs, metrics, promotions, ui, uploads
from api.services import Services
from api.store_breaker import StoreBreaker
from api.store_gate import StoreGate
from api.upload_stream import UPLOAD_ROLE
from shared.fileformat.gunzip_file_writer import sweep_orphan_parts
from shared.infra.logging_setup import configure_logging
from shared.infra.mongo import async_client, sync_client
from shared.readpath.cache import PromotionCache
from shared.readpath.hot_ids import HotIdSampler
from shared.readpath.read_latency import ReadLatencyPublisher
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

SHUTDOWN_STEP_S = 5.0


def build_services(settings: Settings) -> Services:
    mongo = async_client(settings)
    redis = Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        max_connections=512,
        # One immediate retry replaces a pooled connection that went stale (Redis restarted);
        # no backoff, so an outage costs readers milliseconds, not seconds.
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    db = mongo[settings.mongo_db]
    lifecycle_db = sync_client(settings, connect=False)[settings.mongo_db]
    cache = PromotionCache(redis, settings.cache_ttl_seconds, settings.negative_cache_ttl_seconds)
    sampler = HotIdSampler(
        redis, settings.hot_id_sample_every, settings.hot_id_flush_seconds, settings.hot_id_max
    )
    read_latency = ReadLatencyPublisher(redis, settings.read_latency_publish_s)
    STORE_BREAKER_OPEN.set(0)
    breaker = StoreBreaker(
        settings.breaker_failures,
        settings.breaker_open_ms / 1000,
        # A probe whose caller vanished frees its slot once its deadline is surely over.
        probe_timeout_s=max(settings.lookup_timeout_ms, settings.upload_record_timeout_ms) / 1000,
        on_change=lambda is_open: STORE_BREAKER_OPEN.set(1 if is_open else 0),
        enabled=settings.store_breaker,
    )
    gate = StoreGate(breaker)
    lookups = LookupService(
        db,
        cache,
        LocalCache(settings.local_cache_max_bytes),
        sampler,
        settings.warmup_max_ids,
        gate,
        settings.lookup_timeout_ms / 1000,
        read_latency,
    )
    watcher = ActiveVersionWatcher(
        db, redis, settings.pointer_poll_seconds, on_switch=lookups.prefill
    )
    lookups.current = lambda: watcher.current
    return Services(
        settings=settings,
        mongo=mongo,
        db=db,
        lifecycle_db=lifecycle_db,
        redis=redis,
        cache=cache,
        gate=gate,
        lookups=lookups,
        sampler=sampler,
        read_latency=read_latency,
        watcher=watcher,
        queue=JobQueue(settings),
        metrics=MetricsExporter(db, watcher, cache.counters, redis, settings),
        http_cache=LookupCachePolicy.from_settings(settings),
    )


class PromotionsAPI(FastAPI):
    """HTTP requests enter through ``front`` (request limits, id and metrics, then the
    lookup fast path) before FastAPI's own per-request layers, which cost a cache hit a
    large share of its CPU (docs/decisions/front-asgi-layers.md). Everything but a valid
    lookup continues into FastAPI unchanged; an exception escaping it still becomes
    FastAPI's 500, now with the request id header."""

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is not None and scope["type"] == "http" and not self.root_path:
            scope["app"] = self
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def behind_front(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, fast_lookups: bool = True) -> FastAPI:
    """``fast_lookups=False`` serves lookups through FastAPI only (tests compare the two)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings)
        app.state.services = services
        log.info("starting API with %s", settings.safe_summary())
        removed = await asyncio.to_thread(sweep_orphan_parts, settings.uploads_dir, UPLOAD_ROLE)
        if removed:
            log.warning("removed %d partial uploads left by a stopped API process", len(removed))
        await services.watcher.start()
        await services.metrics.start()
        await services.sampler.start()
        await services.read_latency.start()
        # Everything loaded so far (modules, app, clients) lives as long as the process: keep
        # it out of the collector's full passes, which otherwise show up as tail latency.
        gc.freeze()
        try:
            yield
        finally:
            # Each step bounded: a store or cache that stopped answering must not keep the
            # process from exiting (the orchestrator would have to kill it).
            for name, step in (
                ("sampler", services.sampler.stop()),
                ("read latency", services.read_latency.stop()),
                ("metrics", services.metrics.stop()),
                ("watcher", services.watcher.stop()),
                ("cache flush", services.cache.flush()),
                ("queue", asyncio.to_thread(services.queue.close)),
                ("redis", services.redis.aclose()),
                ("mongo", services.mongo.close()),
                ("lifecycle client", asyncio.to_thread(services.lifecycle_db.client.close)),
            ):
                try:
                    await asyncio.wait_for(step, SHUTDOWN_STEP_S)
                except Exception as exc:  # shutting down: report and go on with the rest
                    log.warning("shutdown step %s did not finish: %r", name, exc)

    # Swagger UI and ReDoc load their scripts and styles from this app, never from a CDN:
    # /docs and /redoc work on machines without internet access.
    app = FastAPIOffline(
        title="Promotions service",
        version="1.0.0",
        description="Look promotions up by id; upload partner CSV files that replace the dataset.",
        lifespan=lifespan,
    )
    # FastAPIOffline is a factory that returns a plain FastAPI: give that object the class
    # with the front door (same layout, one method and one attribute more).
    app.__class__ = PromotionsAPI
    assert isinstance(app, PromotionsAPI)
    install_error_handlers(app)
    inner: ASGIApp = app.behind_front
    if fast_lookups:
        inner = FastLookupMiddleware(inner)  # innermost: the context layer sees every request
    app.front = RequestContextMiddleware(inner)  # outermost: limits, request id, metrics
    app.add_middleware(ReadGuard, settings=settings)  # the docs FastAPI serves itself
    app.add_middleware(SecurityHeaders)
    readers = [Depends(require_reader)]  # lookups and health stay open (api/auth.py)
    app.include_router(promotions.router)
    app.include_router(uploads.router)
    app.include_router(jobs.router, dependencies=readers, responses=READ_REFUSALS)
    app.include_router(datasets.router, dependencies=readers, responses=READ_REFUSALS)
    app.include_router(health.router)
    app.include_router(metrics.router, dependencies=readers, responses=READ_REFUSALS)
    ui.mount(app)
    install_openapi_doc(app)
    return app


app = create_app()
