"""Bounds on the request line and headers.

uvicorn's httptools parser enforces neither, so a client could send megabytes of headers to
every worker; these are refused (414/431) before any route runs. A proxy in front should
bound them too, since by now the bytes were already read.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.responses import json_response

MAX_URL_BYTES = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024


class RequestLimits:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = None
            if len(scope.get("raw_path") or b"") + len(scope["query_string"]) > MAX_URL_BYTES:
                problem = (414, f"the request URL is longer than {MAX_URL_BYTES} bytes")
            elif sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
                problem = (431, f"the request headers are larger than {MAX_HEADER_BYTES} bytes")
            if problem:
                response = json_response({"detail": problem[1]}, status_code=problem[0])
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
