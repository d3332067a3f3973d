"""A request id on every HTTP request: taken from ``X-Request-ID`` when the caller (or a load
balancer) sent a sane one, generated otherwise, echoed back in the response and put on every
log line of the request through a context variable.

Applied by ``api.request_context``, which also sets the log context variable.
"""

from __future__ import annotations

import re
import uuid

from starlette.types import Scope

HEADER = b"x-request-id"
# Anything else (too long, odd characters) could forge log lines; replace it.
_SANE = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


def request_id_for(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == HEADER:
            if _SANE.fullmatch(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex
