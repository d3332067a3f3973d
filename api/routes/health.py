"""Liveness and readiness, as load balancers and orchestrators expect them."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from redis.exceptions import RedisError

from api.responses import json_response
from api.schemas import Health, Readiness
from api.services import Services, get_services
from api.store_gate import deadline_in
from shared.errors import TransientError

READY_STORE_S = 2.0

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check_store(services: Services) -> str:
    """Through the breaker, as a request would: refused while it is open, its probe when
    half-open (so readiness polls close it once the store answers, traffic or not)."""
    try:
        with services.gate.call(deadline_in(READY_STORE_S)):
            await services.db.command("ping")
    except TransientError as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"


async def _check_cache(services: Services) -> str:
    try:
        await asyncio.wait_for(services.redis.ping(), timeout=1)
    except (TimeoutError, RedisError, OSError) as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Store or cache unreachable"}},
    summary="Store and cache are reachable",
)
async def readyz(services: Services = Depends(get_services)) -> Response:
    store, cache = await asyncio.gather(_check_store(services), _check_cache(services))
    checks = {"store": store, "cache": cache, "breaker": services.gate.breaker.state}
    if store != "ok":
        status = "unavailable"
    elif cache != "ok":
        status = "degraded"  # lookups still answer, from the store
    else:
        status = "ready"
    return json_response(
        {"status": status, "checks": checks}, status_code=200 if status == "ready" else 503
    )
