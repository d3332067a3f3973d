"""The hottest request, ``GET /promotions/<valid id>``, answered before FastAPI's routing.

For a cached lookup, FastAPI's exception middleware, router, route matching and dependency
injection cost about as much as the Redis GET itself. This pure ASGI middleware sits inside
the service's own middlewares (metrics, request id, limits: they still see every request)
and answers GETs whose id passes the route's own constraints with the same ``lookup`` code
and the same responses; it sets ``scope["route"]`` to the documented route, so metrics are
labelled as before, and turns store outages into the same 503 as the exception handler.
Both send the caching headers of ``api.http_caching`` (ETag, Cache-Control, 304).
Everything else, including ids that fail validation (the 422 body stays FastAPI's), goes on
to FastAPI unchanged. These lookups skip FastAPI's native per-request telemetry spans.
"""

from __future__ import annotations

from typing import Any

from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import store_unavailable
from api.http_caching import etag, if_none_match_of, none_match
from api.routes.promotions import (
    active_version,
    answer_response,
    get_promotion,
    no_dataset_response,
    router,
)
from shared.errors import TransientError, store_errors
from shared.fileformat.promotion_rows import is_valid_id

PREFIX = "/promotions/"
_PREFIX_LENGTH = len(PREFIX)
_JSON = (b"content-type", b"application/json")


def _documented_route() -> APIRoute:
    return next(r for r in router.routes if isinstance(r, APIRoute) and r.endpoint is get_promotion)


class FastLookupMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = _documented_route()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            path: str = scope["path"]
            promotion_id = path[_PREFIX_LENGTH:]
            # A valid id has no "/", so this is exactly the route's one-segment match.
            if path.startswith(PREFIX) and is_valid_id(promotion_id):
                scope["route"] = self.route
                scope["path_params"] = {"promotion_id": promotion_id}
                services: Any = scope["app"].state.services
                try:
                    version = active_version(services)
                    if version is None:
                        response = no_dataset_response(services.http_cache)
                    else:
                        key = promotion_id.lower()
                        if_none_match = if_none_match_of(scope["headers"])
                        body = services.lookups.local_body(version, key)
                        if body:
                            # A hit in process memory: two messages, no Response object.
                            # Same headers, in the same order, as the route's Response.
                            tag = etag(version, key)
                            headers = services.http_cache.found_headers(tag)
                            if if_none_match is not None and not none_match(if_none_match, tag):
                                status, body = 304, b""
                            else:
                                status = 200
                                headers.append((b"content-length", str(len(body)).encode()))
                                headers.append(_JSON)
                            await send(
                                {
                                    "type": "http.response.start",
                                    "status": status,
                                    "headers": headers,
                                }
                            )
                            await send({"type": "http.response.body", "body": body})
                            return
                        if body is None:
                            with store_errors():
                                body = await services.lookups.body(version, key)
                        response = answer_response(
                            services.http_cache, version, promotion_id, body, if_none_match
                        )
                except TransientError as exc:
                    response = store_unavailable("GET", path, exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
