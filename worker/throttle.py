"""Loads yield to reads: each worker process paces its insert batches by how fast the store
takes them, so lookups that miss the cache keep their latency while a file loads.

Delay-based AIMD (the congestion control of TCP Vegas, on insert batches): the latency per
row of a batch is compared with the best of the recent batches (``WINDOW`` of them, so a
store that got slower for good becomes the new normal). A batch more than ``slowdown``
times slower than that means the store is queueing work (readers, other loaders): the
paced rate is halved (multiplicative decrease, down to ``min_rate``). A batch at normal
speed raises it by ``min_rate`` rows/s (additive increase) until pacing is off again. When
pacing is on, a batch of ``n`` rows takes at least ``n / rate`` seconds (the worker sleeps
for the rest), which leaves the store idle gaps for reads. ``max_rate`` (0: none) is a
fixed ceiling on top.

Pure logic with an injectable clock and sleep (unit-tested); one instance per worker
process (``insert_throttle``), so it learns across the chunks that process loads.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator

from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

WINDOW = 50  # batches the baseline (best latency per row) is taken over
DECREASE = 0.5
# Batches much smaller than the usual (a chunk's last one) carry the round trip's fixed cost
# in their per-row latency; they are paced but not used as a signal.
SMALL_BATCH = 0.5


class InsertThrottle:
    def __init__(
        self,
        slowdown: float,
        min_rate: float,
        max_rate: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.slowdown = slowdown
        self.min_rate = min_rate
        self.max_rate = max_rate
        self.clock = clock
        self.sleep = sleep
        self.rate: float | None = None  # rows/s while pacing; None: not pacing
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.largest_batch = 0
        self.slept = 0.0  # seconds spent pacing, for logs and benchmarks
        self.decreases = 0

    @contextlib.contextmanager
    def paced(self, rows: int) -> Iterator[None]:
        """Around one batch write: measures it, then sleeps as the paced rate says."""
        started = self.clock()
        yield
        elapsed = self.clock() - started
        self.observe(rows, elapsed)
        pause = self.pause_for(rows, elapsed)
        if pause > 0:
            self.slept += pause
            self.sleep(pause)

    def observe(self, rows: int, elapsed: float) -> None:
        if rows <= 0 or elapsed <= 0:
            return
        self.largest_batch = max(self.largest_batch, rows)
        if rows < self.largest_batch * SMALL_BATCH:
            return
        per_row = elapsed / rows
        baseline = min(self.recent, default=per_row)
        self.recent.append(per_row)
        if per_row > baseline * self.slowdown:
            achieved = rows / elapsed
            current = achieved if self.rate is None else min(self.rate, achieved)
            self.rate = max(self.min_rate, current * DECREASE)
            self.decreases += 1
            log.info(
                "store slower (%.0f us per row, best %.0f): pacing inserts at %.0f rows/s",
                per_row * 1e6,
                baseline * 1e6,
                self.rate,
            )
        elif self.rate is not None:
            self.rate += self.min_rate
            # Faster than the store takes rows at its best: pacing would never bite.
            if self.rate * baseline >= 1.0:
                self.rate = None
                log.info("store back to its usual speed: inserts no longer paced")

    def pause_for(self, rows: int, elapsed: float) -> float:
        limits = [r for r in (self.rate, self.max_rate or None) if r]
        if not limits:
            return 0.0
        return max(0.0, rows / min(limits) - elapsed)


def from_settings(settings: Settings) -> InsertThrottle | None:
    if not settings.ingest_throttle:
        return None
    return InsertThrottle(
        settings.ingest_throttle_slowdown,
        settings.ingest_min_rows_per_s,
        settings.ingest_max_rows_per_s,
    )


_throttle: InsertThrottle | None = None
_loaded = False


def insert_throttle() -> InsertThrottle | None:
    global _throttle, _loaded
    if not _loaded:
        _throttle, _loaded = from_settings(get_settings()), True
    return _throttle


def paced(rows: int) -> contextlib.AbstractContextManager[None]:
    """The call site: ``with paced(rows): write_buckets(...)``."""
    throttle = insert_throttle()
    return throttle.paced(rows) if throttle is not None else contextlib.nullcontext()
