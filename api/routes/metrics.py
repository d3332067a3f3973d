"""Prometheus scrape endpoint (text exposition format)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.services import Services, get_services

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
async def metrics(services: Services = Depends(get_services)) -> Response:
    exporter = services.metrics
    await asyncio.gather(exporter.job_counts.refresh(), exporter.ops.refresh())
    exporter.cache_mirror.sync()
    # Multi-process mode reads every worker's files: keep that off the event loop.
    body = await asyncio.to_thread(generate_latest, exporter.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
