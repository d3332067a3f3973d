"""Bounds on the request line and headers.

uvicorn's httptools parser enforces neither, so a client could send megabytes of headers to
every worker; these are refused (414/431) before any route runs. A proxy in front should
bound them too, since by now the bytes were already read. Applied by
``api.middleware.request_context``.
"""

from __future__ import annotations

from starlette.types import Scope

MAX_URL_BYTES = 8 * 1024
MAX_HEADER_BYTES = 16 * 1024


def limit_problem(scope: Scope) -> tuple[int, str] | None:
    """The status and sentence refusing an oversized request line or headers, if any."""
    if len(scope.get("raw_path") or b"") + len(scope["query_string"]) > MAX_URL_BYTES:
        return 414, f"the request URL is longer than {MAX_URL_BYTES} bytes"
    if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
        return 431, f"the request headers are larger than {MAX_HEADER_BYTES} bytes"
    return None
