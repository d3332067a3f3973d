"""Request count and latency per route *template* (``/promotions/{promotion_id}``, not the
URL), so ids never become label values.

Label children cached per (method, route, status): the lookup route is the hot
path, and this adds two dictionary lookups and two metric updates to it.
"""

from __future__ import annotations

from typing import Any

from starlette.types import Scope

from api.metrics import HTTP_LATENCY, HTTP_REQUESTS

UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or UNMATCHED
        method = scope["method"] if scope["method"] in METHODS else "OTHER"
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                HTTP_REQUESTS.labels(method, route, str(status)),
                HTTP_LATENCY.labels(method, route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
