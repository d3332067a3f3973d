"""Store outages become 503 with a clear sentence, never a 404 or a 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import Response

from api.responses import json_response
from shared.mongo import UNAVAILABLE_ERRORS

log = logging.getLogger(__name__)

STORE_UNAVAILABLE = "the promotions store is unavailable; retry shortly"


def store_unavailable(method: str, path: str, exc: Exception) -> Response:
    log.warning("store unavailable on %s %s: %s", method, path, exc)
    return json_response(
        {"detail": STORE_UNAVAILABLE}, status_code=503, headers={"Retry-After": "1"}
    )


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    return store_unavailable(request.method, request.url.path, exc)


def install_error_handlers(app: FastAPI) -> None:
    for exc_type in UNAVAILABLE_ERRORS:
        app.add_exception_handler(exc_type, _store_unavailable)
