"""The one ASGI layer every request passes first: request limits, request id, metrics.

One layer with one ``send`` wrapper instead of three stacked middlewares: the lookup path is
hot enough that each extra coroutine frame per request and per message shows. Each concern
keeps its own module (``request_limits``, ``request_id``, ``request_metrics``).
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.middleware.request_id import HEADER, request_id_for
from api.middleware.request_limits import limit_problem
from api.middleware.request_metrics import RequestMetrics
from api.responses import json_response
from shared.infra.log_context import request_id_var


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.metrics = RequestMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_for(scope)
        header = (HEADER, request_id.encode("ascii"))
        status = 500  # an exception that escapes becomes a 500

        async def send_with_context(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = request_id_var.set(request_id)
        try:
            problem = limit_problem(scope)
            if problem is None:
                await self.app(scope, receive, send_with_context)
            else:
                response = json_response({"detail": problem[1]}, status_code=problem[0])
                await response(scope, receive, send_with_context)
        finally:
            request_id_var.reset(token)
            self.metrics.observe(scope, status, time.perf_counter() - started)
