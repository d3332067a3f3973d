"""Bare reference for lookup benchmarks: the same Redis GET (same client options as the API:
timeouts, pool size), the same bytes, no framework beyond Starlette routing. Served with the
API's uvicorn settings (uvloop, httptools, one worker)."""

from __future__ import annotations

import os

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_timeout = float(os.environ.get("REDIS_TIMEOUT_S", "0.5"))  # the API's default
_redis = Redis.from_url(
    os.environ["REDIS_URL"],
    socket_timeout=_timeout,
    socket_connect_timeout=_timeout,
    max_connections=512,
)
_prefix = f"promo:v{os.environ['REF_VERSION']}:"


async def promotion(request: Request) -> Response:
    body = await _redis.get(_prefix + request.path_params["promotion_id"].lower())
    if not body:
        return Response(b'{"detail":"not found"}', status_code=404, media_type="application/json")
    return Response(body, media_type="application/json")


app = Starlette(routes=[Route("/promotions/{promotion_id}", promotion)])
