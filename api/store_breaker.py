"""The circuit breaker in front of the store, one per API process.

A stalled store (election, long GC, saturated disk) would otherwise make every uncached
request wait out its whole deadline, holding a connection, a coroutine and memory each: a
stall of seconds piles up. After ``failures`` store calls in a row failed or ran out of
time the breaker opens and store-bound requests are refused at once (503); cache hits
never ask it. After ``open_s`` it is half-open: one call at a time goes through as a
probe; a probe that succeeds closes it, one that fails opens it again for ``open_s``.

States: closed -> open (failures in a row) -> half_open (``open_s`` later, on the clock)
-> closed (a probe succeeded) or open (a probe failed). A probe whose caller went away
without reporting (cancelled) frees its slot after ``probe_timeout_s``.

A small state machine of our own rather than a library's: the breaker libraries on PyPI
(pybreaker, aiobreaker, circuitbreaker) wrap a call, count every exception of it and keep
state in their own storage; here a failure is a store-side outcome decided by the caller
(a 404 is a success), calls are batched reads shared by many requests, and the clock must
be a parameter for the tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

log = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open"]


class StoreBreaker:
    def __init__(
        self,
        failures: int,
        open_s: float,
        probe_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
        enabled: bool = True,
    ) -> None:
        self.failures = failures
        self.open_s = open_s
        self.probe_timeout_s = probe_timeout_s
        self.clock = clock
        # Called with True when the breaker leaves "closed", False when it is back (the gauge).
        self.on_change = on_change
        self.enabled = enabled
        self._failed_in_row = 0
        self._opened_at: float | None = None  # None: closed
        self._probe_since: float | None = None  # a half-open probe is out since then
        self.opened = 0  # times it opened (logs, tests, the benchmark)

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self.clock() - self._opened_at < self.open_s:
            return "open"
        return "half_open"

    def retry_after_s(self) -> float:
        """How long until a probe may go (0 when closed or half-open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.open_s - self.clock())

    def admit(self) -> bool:
        """May a store call go now? In half-open, True makes the caller the probe: it
        must report ``succeeded`` or ``failed``."""
        if not self.enabled:
            return True
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        now = self.clock()
        if self._probe_since is not None and now - self._probe_since < self.probe_timeout_s:
            return False  # one probe at a time
        self._probe_since = now
        return True

    def succeeded(self) -> None:
        self._failed_in_row = 0
        self._probe_since = None
        if self._opened_at is not None:
            self._opened_at = None
            log.warning("store breaker closed: the store answers again")
            if self.on_change is not None:
                self.on_change(False)

    def failed(self) -> None:
        if not self.enabled:
            return
        self._failed_in_row += 1
        was_open = self._opened_at is not None
        if was_open and self._probe_since is None:
            return  # a call admitted before the breaker opened: no news
        if was_open or self._failed_in_row >= self.failures:
            self._opened_at = self.clock()
            self._probe_since = None
            if not was_open:
                self.opened += 1
                log.warning(
                    "store breaker open: %d store calls in a row failed; store-bound "
                    "requests get 503 at once, a probe goes in %.2f s",
                    self._failed_in_row,
                    self.open_s,
                )
                if self.on_change is not None:
                    self.on_change(True)
