"""Every store call an API request makes goes through here: past the circuit breaker and
within the request's deadline.

The deadline is the driver's client-side operation timeout (``pymongo.timeout``): server
selection, checking out or opening a connection, the command and the driver's one retry
all share the one budget, and the server gets the rest as ``maxTimeMS``. Stacking socket
timeouts and retries instead let a paused store hold a lookup for 9 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pymongo
from pymongo.errors import PyMongoError

from api.store_breaker import StoreBreaker
from shared.errors import CircuitOpen, DeadlineExceeded, TransientError, store_errors

T = TypeVar("T")

# How often a caller waiting out an open breaker looks again while a probe is out.
WAIT_STEP_S = 0.05


def deadline_in(seconds: float) -> float:
    """A deadline on ``time.monotonic()``, the clock the driver's timeout uses."""
    return time.monotonic() + seconds


def left(deadline: float) -> float:
    """Seconds left before ``deadline``; raises ``DeadlineExceeded`` when none are."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded("the request's deadline passed before the store answered")
    return remaining


class StoreGate:
    def __init__(self, breaker: StoreBreaker) -> None:
        self.breaker = breaker

    @contextmanager
    def call(self, deadline: float) -> Iterator[None]:
        """One store call (or a few in a row) that must finish by ``deadline``. Raises
        ``CircuitOpen`` without calling, ``DeadlineExceeded`` when time ran out, the other
        ``TransientError`` kinds for other store failures; each of them counts against the
        breaker, any answer (a 404 too) for it."""
        budget = left(deadline)
        if not self.breaker.admit():
            raise CircuitOpen(
                f"the store failed repeatedly; retrying it in {self.breaker.retry_after_s():.2f} s"
            )
        try:
            try:
                with store_errors(), pymongo.timeout(budget):
                    yield
            except TransientError as exc:
                cause = exc.__cause__
                if isinstance(cause, PyMongoError) and cause.timeout:
                    raise DeadlineExceeded(
                        f"the store did not answer within {budget * 1000:.0f} ms ({cause})"
                    ) from cause
                raise
        except TransientError:
            self.breaker.failed()
            raise
        except Exception:
            self.breaker.succeeded()  # the store answered, with an error of ours or its data
            raise
        else:
            self.breaker.succeeded()

    async def call_waiting(self, deadline: float, op: Callable[[], Awaitable[T]]) -> T:
        """``op`` through ``call``, waiting out an open breaker until ``deadline`` instead of
        failing at once: for an upload whose file is already stored (refusing it would
        throw away gigabytes for a store hiccup of a second or two, as a 100M-row upload
        was; the lookups that opened the breaker keep their fast 503). Only a refusal is
        waited out: a call that went to the store and failed is not repeated."""
        while True:
            try:
                with self.call(deadline):
                    return await op()
            except CircuitOpen:
                pause = max(WAIT_STEP_S, self.breaker.retry_after_s())
                if time.monotonic() + pause >= deadline:
                    raise
                await asyncio.sleep(pause)
