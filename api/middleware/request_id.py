"""A request id on every HTTP request: taken from ``X-Request-ID`` when the caller (or a load
balancer) sent a sane one, generated otherwise, echoed back in the response and put on every
log line of the request through a context variable.

Applied by ``api.middleware.request_context``, which also sets the log context variable.
"""

from __future__ import annotations

import itertools
import os
import re

from starlette.types import Scope

HEADER = b"x-request-id"
# Anything else (too long, odd characters) could forge log lines; replace it.
_SANE = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


def _reseed() -> None:
    """A random 64-bit prefix per process, then a counter: unique ids (32 hex digits, like
    a uuid4's) for one ``os.urandom`` per process instead of one per request, a syscall
    that is a visible share of a cache hit's CPU (docs/decisions/request-id-counter.md).
    Ids need to be unique, not unguessable. Re-seeded in forked children so that they
    never share a prefix."""
    global _prefix, _counter
    _prefix = os.urandom(8).hex()
    _counter = itertools.count()


_prefix = ""
_counter = itertools.count()
_reseed()
os.register_at_fork(after_in_child=_reseed)


def request_id_for(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == HEADER:
            if _SANE.fullmatch(value):
                return str(value.decode("ascii"))
            break
    return f"{_prefix}{next(_counter):016x}"
