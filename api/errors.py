"""Store outages become 503 with a clear sentence, never a 404 or a 500.

The 503 list names the service's own kinds (``shared.errors``); a driver error that escapes a
route is translated here, once, by the same rules the worker uses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pymongo.errors import PyMongoError

from api.responses import json_response
from shared.errors import CircuitOpen, DeadlineExceeded, TransientError, translate

log = logging.getLogger(__name__)

STORE_UNAVAILABLE = "the promotions store is unavailable; retry shortly"
DEADLINE_EXCEEDED = (
    "the promotions store is unavailable: it did not answer within the request's deadline; "
    "retry shortly"
)
CIRCUIT_OPEN = (
    "the promotions store is unavailable: it failed repeatedly and requests that need it are "
    "refused for a moment; retry shortly"
)


def store_unavailable(method: str, path: str, exc: Exception) -> Response:
    """A 503 a client can retry after a second. Refusals of an open breaker are not logged
    one by one (it logs opening and closing): during a stall they come thousands a second."""
    if isinstance(exc, CircuitOpen):
        detail = CIRCUIT_OPEN
    elif isinstance(exc, DeadlineExceeded):
        detail = DEADLINE_EXCEEDED
        log.info("deadline exceeded on %s %s: %s", method, path, exc)
    else:
        detail = STORE_UNAVAILABLE
        log.warning("store unavailable on %s %s: %s", method, path, exc)
    return json_response(
        {"detail": detail},
        status_code=503,
        # Never kept by an edge or browser: the next request must reach the API again.
        headers={"Retry-After": "1", "Cache-Control": "no-store"},
    )


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    return store_unavailable(request.method, request.url.path, exc)


async def _driver_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PyMongoError)
    if isinstance(translate(exc), TransientError):
        return store_unavailable(request.method, request.url.path, exc)
    raise exc  # a programming or data error: a 500, logged as such


async def _internal_error(request: Request, exc: Exception) -> Response:
    """Every error answer has the same JSON shape, a 500 too (Starlette still logs the
    traceback and re-raises after sending this)."""
    return json_response(
        {"detail": "internal error; the request was not completed (see the API's log)"},
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TransientError, _store_unavailable)
    app.add_exception_handler(PyMongoError, _driver_error)
    app.add_exception_handler(Exception, _internal_error)
