"""A request id on every HTTP request: taken from ``X-Request-ID`` when the caller (or a load
balancer) sent a sane one, generated otherwise, echoed back in the response and put on every
log line of the request through a context variable.

Pure ASGI rather than ``BaseHTTPMiddleware``: no extra task per request on the lookup path.
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.log_context import request_id_var

HEADER = b"x-request-id"
# Anything else (too long, odd characters) could forge log lines; replace it.
_SANE = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


def _incoming(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == HEADER:
            return value.decode("ascii") if _SANE.fullmatch(value) else None
    return None


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming(scope) or uuid.uuid4().hex
        header = (HEADER, request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
