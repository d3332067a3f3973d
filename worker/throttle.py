"""Loads yield to reads: each worker process paces its insert batches by what the readers
see of the store and by how fast the store takes the batches.

Two congestion signals drive one AIMD rate (rows/s per worker process):

- **The readers' signal** (``shared.read_latency``): every API process publishes the p90
  latency of its store reads over the last 0.5 s and its calm baseline. At most every
  ``read_every_s`` the throttle reads them; when any process sees its reads slower than
  ``read_slowdown`` times its baseline (and slower than ``read_floor_ms``), the paced rate is
  halved (at most once per ``HOLD_READINGS`` readings, so the readers' next summary can show
  the effect first); when every process sees healthy reads, the rate grows by ``min_rate``
  per new summary. Measured on the dev store, this is what readers suffer: their reads queue
  behind insert batches inside the store and wait for CPU, while the batches themselves keep
  their speed, so the insert latency alone did not see it (bench/RESULTS.md).
- **The insert latency** (delay-based, TCP Vegas-like), while there is no readers' signal
  (no misses, no API publishing, Redis unreachable): the latency per row of a batch is
  compared with the best of the recent batches (``WINDOW`` of them, so a store that got
  slower for good becomes the new normal). A batch more than ``slowdown`` times slower
  halves the rate; a batch at normal speed adds ``min_rate``. While readers do speak, slower
  batches alone do not slow the load: on a shared, noisy host batch latency varies 2x
  without readers suffering, and halving on it too cost ingest time for nothing (measured).

The rate never goes below ``min_rate``; pacing ends once the rate is faster than the store
takes rows at its best. While pacing, a batch of ``n`` rows takes at least ``n / rate``
seconds (the worker sleeps for the rest), which leaves the store idle gaps for reads.
``max_rate`` (0: none) is a fixed ceiling on top. A failure to read the readers' signal
never fails or stalls a load: it only means no signal for ``RETRY_S``.

Pure logic with an injectable clock, sleep and signal source (unit-tested); one instance
per worker process (``insert_throttle``), so it learns across the chunks that process loads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from redis import Redis

from shared.read_latency import ReadLatency, read_latencies
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

WINDOW = 50  # batches the baseline (best latency per row) is taken over
DECREASE = 0.5
# Batches much smaller than the usual (a chunk's last one) carry the round trip's fixed cost
# in their per-row latency; they are paced but not used as a signal.
SMALL_BATCH = 0.5
# A summary of fewer store reads than this says too little about their p90.
MIN_READS = 5
HOLD_READINGS = 2  # after a slow-down on the readers' signal, readings before the next one
RETRY_S = 5.0  # after a failed read of the signal, no signal for this long
SIGNAL_TIMEOUT_S = 0.25  # per Redis call; a slow Redis costs a load at most this per reading
# A process that wrote nothing for this long starts unpaced again: what it learnt about the
# store and the readers is stale (TCP restarts after idle the same way, RFC 2861).
IDLE_RESET_S = 60.0

ReadSource = Callable[[], Sequence[ReadLatency] | None]


def reads_congested(
    summaries: Sequence[ReadLatency], slowdown: float, floor_ms: float
) -> bool | None:
    """True when some API process sees its store reads slower than its baseline allows,
    False when every process that says enough sees them healthy, None when none does (too
    few reads, or no baseline yet)."""
    known = [s for s in summaries if s.reads >= MIN_READS and s.baseline_ms > 0]
    if not known:
        return None
    return any(s.p90_ms > max(floor_ms, slowdown * s.baseline_ms) for s in known)


class InsertThrottle:
    def __init__(
        self,
        slowdown: float,
        min_rate: float,
        max_rate: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        reads: ReadSource | None = None,
        read_slowdown: float = 2.0,
        read_floor_ms: float = 2.0,
        read_every_s: float = 0.5,
    ) -> None:
        self.slowdown = slowdown
        self.min_rate = min_rate
        self.max_rate = max_rate
        self.clock = clock
        self.sleep = sleep
        self.reads = reads
        self.read_slowdown = read_slowdown
        self.read_floor_ms = read_floor_ms
        self.read_every_s = read_every_s
        self.rate: float | None = None  # rows/s while pacing; None: not pacing
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.largest_batch = 0
        self.achieved = 0.0  # rows/s of the last full batch, unpaced
        self.slept = 0.0  # seconds spent pacing, for logs and benchmarks
        self.decreases = 0
        self.read_decreases = 0
        self.next_reading = 0.0
        self.reads_known = False  # the last reading had a verdict: it steers increases
        self.hold = 0  # readings left before a slow-down on the readers' signal
        self.seen: dict[str, float] = {}  # process -> time of the last summary acted on
        self.last_write = float("-inf")

    @contextlib.contextmanager
    def paced(self, rows: int) -> Iterator[None]:
        """Around one batch write: measures it, then sleeps as the paced rate says."""
        started = self.clock()
        if started - self.last_write > IDLE_RESET_S and self.rate is not None:
            self.rate, self.hold = None, 0
            log.info("no inserts for %.0f s: inserts no longer paced", IDLE_RESET_S)
        yield
        self.last_write = self.clock()
        elapsed = self.last_write - started
        self.observe(rows, elapsed)
        self.check_reads()
        pause = self.pause_for(rows, elapsed)
        if pause > 0:
            self.slept += pause
            self.sleep(pause)

    def observe(self, rows: int, elapsed: float) -> None:
        """The insert-latency rule, on one batch."""
        if rows <= 0 or elapsed <= 0:
            return
        self.largest_batch = max(self.largest_batch, rows)
        if rows < self.largest_batch * SMALL_BATCH:
            return
        per_row = elapsed / rows
        self.achieved = rows / elapsed
        baseline = min(self.recent, default=per_row)
        self.recent.append(per_row)
        if self.reads_known:
            return  # the readers speak for themselves: their signal alone steers the rate
        if per_row > baseline * self.slowdown:
            self.decrease()
            log.info(
                "store slower (%.0f us per row, best %.0f): pacing inserts at %.0f rows/s",
                per_row * 1e6,
                baseline * 1e6,
                self.rate,
            )
        else:
            self.increase()

    def check_reads(self) -> None:
        """The readers' rule, at most every ``read_every_s``."""
        if self.reads is None:
            return
        now = self.clock()
        if now < self.next_reading:
            return
        try:
            summaries = self.reads()
        except Exception:  # never fail a load for want of a signal
            log.warning("reading the readers' latency failed", exc_info=True)
            summaries = None
        if summaries is None:
            self.next_reading = now + RETRY_S
            self.reads_known = False
            return
        self.next_reading = now + self.read_every_s
        fresh = [s for s in summaries if self.seen.get(s.process) != s.at]
        self.seen = {s.process: s.at for s in summaries}
        if not summaries:
            self.reads_known = False  # no API process publishes
            return
        if not fresh:
            return  # nothing new since the last reading: no step, the verdict stands
        verdict = reads_congested(fresh, self.read_slowdown, self.read_floor_ms)
        self.reads_known = verdict is not None
        if verdict is None:
            return
        self.hold = max(0, self.hold - 1)
        if not verdict:
            self.increase()
        elif self.hold == 0:
            self.hold = HOLD_READINGS
            self.read_decreases += 1
            self.decrease()
            worst = max(fresh, key=lambda s: s.p90_ms / s.baseline_ms if s.baseline_ms else 0)
            log.info(
                "reads slower (p90 %.1f ms, calm %.1f ms): pacing inserts at %.0f rows/s",
                worst.p90_ms,
                worst.baseline_ms,
                self.rate,
            )

    def decrease(self) -> None:
        current = self.achieved if self.rate is None else min(self.rate, self.achieved)
        self.rate = max(self.min_rate, current * DECREASE)
        self.decreases += 1

    def increase(self) -> None:
        if self.rate is None:
            return
        self.rate += self.min_rate
        # Faster than the store takes rows at its best: pacing would never bite.
        best = min(self.recent, default=0.0)
        if self.rate * best >= 1.0:
            self.rate = None
            log.info("store and reads back to normal: inserts no longer paced")

    def pause_for(self, rows: int, elapsed: float) -> float:
        limits = [r for r in (self.rate, self.max_rate or None) if r]
        if not limits:
            return 0.0
        return max(0.0, rows / min(limits) - elapsed)


class RedisReads:
    """The readers' signal from the cache's Redis, one client per process (made after fork,
    short timeouts)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: Redis | None = None
        self.pid = 0

    def __call__(self) -> list[ReadLatency] | None:
        if self.client is None or self.pid != os.getpid():
            self.client = Redis.from_url(
                self.url,
                socket_timeout=SIGNAL_TIMEOUT_S,
                socket_connect_timeout=SIGNAL_TIMEOUT_S,
            )
            self.pid = os.getpid()
        return read_latencies(self.client)


def from_settings(settings: Settings) -> InsertThrottle | None:
    if not settings.ingest_throttle:
        return None
    reads = None
    if settings.ingest_read_signal:
        reads = RedisReads(settings.redis_url.get_secret_value())
    return InsertThrottle(
        settings.ingest_throttle_slowdown,
        settings.ingest_min_rows_per_s,
        settings.ingest_max_rows_per_s,
        reads=reads,
        read_slowdown=settings.ingest_read_slowdown,
        read_floor_ms=settings.ingest_read_floor_ms,
        read_every_s=max(0.5, settings.read_latency_publish_s),
    )


_throttle: InsertThrottle | None = None
_loaded = False


def insert_throttle() -> InsertThrottle | None:
    global _throttle, _loaded
    if not _loaded:
        _throttle, _loaded = from_settings(get_settings()), True
    return _throttle


def paced(rows: int) -> contextlib.AbstractContextManager[None]:
    """The call site: ``with paced(len(batch)): write_batch(...)``."""
    throttle = insert_throttle()
    return throttle.paced(rows) if throttle is not None else contextlib.nullcontext()
