"""Loads yield to reads: each worker process paces its insert batches by what the readers
see of the store and by how fast the store takes the batches.

Two congestion signals drive one AIMD rate (rows/s per worker process):

- **The readers' signal** (``shared.readpath.read_latency``): every API process publishes a
  histogram of its store reads' latencies and its calm baseline (the p90 it sees when
  nothing loads). At most every ``read_every_s`` (and so at least once per paced batch) the
  throttle reads them and takes, per process, the p90 of the reads *since its previous
  decision* (the difference of the two histograms: the whole cycle of insert and pause, not
  only the moment after a batch). When any process's p90 is above ``read_slowdown`` times
  its baseline (and above ``read_floor_ms``), the paced rate is halved; when all are
  healthy it grows by an additive step (``min_rate``, or 1/16 of the store's best rate
  when that is more). A window of fewer than ``MIN_READS`` reads waits for
  more. This is what readers suffer: their reads can queue behind insert batches inside the
  store while the batches keep their own speed, so the insert latency alone does not see it
  (docs/decisions/throttle-signals.md).
- **The insert latency** (delay-based, TCP Vegas-like), while the readers' signal cannot be
  read (Redis unreachable, or ``INGEST_READ_SIGNAL`` off). When it can be read but no API
  process reads enough from the store to judge (every lookup a cache hit, no API running),
  nobody is there to protect: batches only recover the rate (loaders slowing each other
  down are no reason to pace).
  Otherwise: the latency per row of a batch is
  compared with the best of the recent batches (``WINDOW`` of them, so a store that got
  slower for good becomes the new normal). A batch more than ``slowdown`` times slower
  halves the rate; a batch at normal speed adds the same step. While readers do speak, slower
  batches alone do not slow the load: batch latency varies on a noisy host without readers
  suffering, and halving on it would cost ingest time for nothing.

A load flags itself for the readers (``note_loading``, at each task and paced batch): the
periods it covers stay out of their calm baseline, however long it runs.

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
from redis.exceptions import RedisError

from shared.readpath.read_latency import (
    LOADING_TTL_S,
    ReadLatency,
    flag_loading,
    read_latencies,
    window,
)
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

WINDOW = 50  # batches the baseline (best latency per row) is taken over
DECREASE = 0.5
# Each additive step is at least this share of the store's best rate (rows/s) seen lately.
INCREASE_SHARE = 1 / 16
# Batches much smaller than the usual (a chunk's last one) carry the round trip's fixed cost
# in their per-row latency; they are paced but not used as a signal.
SMALL_BATCH = 0.5
# A window of fewer store reads than this says too little about their p90: it grows.
MIN_READS = 5
# The readers' verdict steers the rate until it is this old (a window still too short
# after this long: too few misses to say anything, the insert rule again).
VERDICT_TTL_S = 10.0
RETRY_S = 5.0  # after a failed read of the signal, no signal for this long
SIGNAL_TIMEOUT_S = 0.25  # per Redis call; a slow Redis costs a load at most this per reading
# A process that wrote nothing for this long starts unpaced again: what it learnt about the
# store and the readers is stale (TCP restarts after idle the same way, RFC 2861).
IDLE_RESET_S = 60.0

# The loading flag is renewed at most this often per process, well within its TTL.
FLAG_EVERY_S = LOADING_TTL_S / 6

ReadSource = Callable[[], Sequence[ReadLatency] | None]


def reads_congested(
    summaries: Sequence[ReadLatency],
    marks: dict[str, ReadLatency],
    slowdown: float,
    floor_ms: float,
) -> bool | None:
    """Over each process's reads since its mark: True when some process's p90 is slower
    than its baseline allows, False when every process with enough reads is healthy, None
    when none has enough reads (or a baseline) yet. Moves the marks of the processes that
    had their say to now; a process seen for the first time gets its mark."""
    verdicts = []
    for s in summaries:
        mark = marks.get(s.process)
        if mark is None:
            marks[s.process] = s
            continue
        reads, p90_ms = window(s, mark)
        if reads < MIN_READS or s.baseline_ms <= 0:
            continue
        marks[s.process] = s
        verdicts.append(p90_ms > max(floor_ms, slowdown * s.baseline_ms))
    for gone in set(marks) - {s.process for s in summaries}:
        del marks[gone]
    if not verdicts:
        return None
    return any(verdicts)


class InsertThrottle:
    def __init__(
        self,
        slowdown: float,
        min_rate: float,
        max_rate: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        reads: ReadSource | None = None,
        read_slowdown: float = 4.0,
        read_floor_ms: float = 5.0,
        read_every_s: float = 0.5,
        flag: Callable[[], None] | None = None,
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
        self.flag = flag  # tells the readers a load is working (their calm excludes it)
        self.flagged_at = float("-inf")
        self.rate: float | None = None  # rows/s while pacing; None: not pacing
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.largest_batch = 0
        self.achieved = 0.0  # rows/s of the last full batch, unpaced
        self.slept = 0.0  # seconds spent pacing, for logs and benchmarks
        self.decreases = 0
        self.read_decreases = 0
        self.next_reading = 0.0
        self.reads_known = False  # the last reading had a verdict: it steers increases
        # The signal was read, but no API process reads enough from the store to judge (all
        # cache hits, or no API at all): nobody to protect, so batches only recover the rate.
        self.reads_quiet = False
        self.marks: dict[str, ReadLatency] = {}  # process -> its summary at the last verdict
        self.verdict_at = float("-inf")
        self.last_write = float("-inf")

    def note_loading(self) -> None:
        """At each task and each batch: the readers keep the time a load works out of their
        calm baseline (``shared.readpath.read_latency.LOADING_KEY``). Best effort."""
        now = self.clock()
        if self.flag is None or now - self.flagged_at < FLAG_EVERY_S:
            return
        self.flagged_at = now
        try:
            self.flag()
        except Exception:  # never fail a load for want of a signal
            log.debug("could not flag the load for the readers", exc_info=True)

    @contextlib.contextmanager
    def paced(self, rows: int) -> Iterator[None]:
        """Around one batch write: measures it, then sleeps as the paced rate says."""
        self.note_loading()
        started = self.clock()
        if started - self.last_write > IDLE_RESET_S:
            self.marks.clear()  # the readers' window starts with this load
            if self.rate is not None:
                self.rate = None
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
        if self.reads_quiet:
            self.increase()  # no reader of the store to protect
            return
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
            self.reads_known = self.reads_quiet = False  # no signal: the insert rule
            return
        self.next_reading = now + self.read_every_s
        if not summaries:
            self.reads_known, self.reads_quiet = False, True  # no API process publishes
            self.marks.clear()
            return
        worst = max(summaries, key=lambda s: window(s, self.marks.get(s.process))[1])
        worst_p90 = window(worst, self.marks.get(worst.process))[1]
        verdict = reads_congested(summaries, self.marks, self.read_slowdown, self.read_floor_ms)
        if verdict is None:
            if now - self.verdict_at > VERDICT_TTL_S:
                self.reads_known, self.reads_quiet = False, True  # too few reads to judge
            return
        self.reads_known, self.reads_quiet, self.verdict_at = True, False, now
        if not verdict:
            self.increase()
            return
        self.read_decreases += 1
        self.decrease()
        log.info(
            "reads slower (p90 %.1f ms, calm %.1f ms): pacing inserts at %.0f rows/s",
            worst_p90,
            worst.baseline_ms,
            self.rate,
        )

    def decrease(self) -> None:
        current = self.achieved if self.rate is None else min(self.rate, self.achieved)
        self.rate = max(self.min_rate, current * DECREASE)
        self.decreases += 1

    def increase(self) -> None:
        """Additive, by ``min_rate`` or a share of the store's best rate if that is more:
        the same rule paces a store that takes 10k row documents a second and one that
        takes 300k rows a second in bucket documents, and recovers from a halving in about
        ``1 / INCREASE_SHARE`` steps either way (a fixed step is too small at bucket speed:
        a load paced once would stay paced to its end; docs/decisions/throttle-signals.md)."""
        if self.rate is None:
            return
        best = min(self.recent, default=0.0)
        self.rate += max(self.min_rate, INCREASE_SHARE / best if best > 0 else 0.0)
        # Faster than the store takes rows at its best: pacing would never bite.
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

    def _client(self) -> Redis:
        if self.client is None or self.pid != os.getpid():
            self.client = Redis.from_url(
                self.url,
                socket_timeout=SIGNAL_TIMEOUT_S,
                socket_connect_timeout=SIGNAL_TIMEOUT_S,
            )
            self.pid = os.getpid()
        return self.client

    def __call__(self) -> list[ReadLatency] | None:
        return read_latencies(self._client())

    def flag(self) -> None:
        try:
            flag_loading(self._client())
        except (RedisError, OSError) as exc:
            log.debug("could not flag the load for the readers: %s", exc)


def from_settings(settings: Settings) -> InsertThrottle | None:
    if not settings.ingest_throttle:
        return None
    reads = None
    # The API processes read the same settings: publishing off means no reader will ever
    # speak, and an empty signal would read as "nobody to protect" (never paced).
    if settings.ingest_read_signal and settings.read_latency_publish_s > 0:
        reads = RedisReads(settings.redis_url.get_secret_value())
    return InsertThrottle(
        settings.ingest_throttle_slowdown,
        settings.ingest_min_rows_per_s,
        settings.ingest_max_rows_per_s,
        reads=reads,
        read_slowdown=settings.ingest_read_slowdown,
        read_floor_ms=settings.ingest_read_floor_ms,
        read_every_s=max(0.5, settings.read_latency_publish_s),
        flag=reads.flag if reads is not None else None,
    )


_throttle: InsertThrottle | None = None
_loaded = False


def insert_throttle() -> InsertThrottle | None:
    global _throttle, _loaded
    if not _loaded:
        _throttle, _loaded = from_settings(get_settings()), True
    return _throttle


def note_loading() -> None:
    """A task of a load starts (a map task never paces): see ``InsertThrottle.note_loading``."""
    throttle = insert_throttle()
    if throttle is not None:
        throttle.note_loading()


def paced(rows: int) -> contextlib.AbstractContextManager[None]:
    """The call site: ``with paced(rows): write_buckets(...)``."""
    throttle = insert_throttle()
    return throttle.paced(rows) if throttle is not None else contextlib.nullcontext()
