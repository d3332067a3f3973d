"""The insert throttle's AIMD, on a fake clock: no sleeping, no store, and a readers'
signal given as data (what the API processes would have published)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from shared.readpath.read_latency import (
    BASELINE_MIN_PERIODS,
    BASELINE_QUANTILE,
    LOADING_TTL_S,
    ReadLatency,
    ReadLatencyPublisher,
    bucket_of,
    quantile,
)
from worker.throttle import (
    FLAG_EVERY_S,
    IDLE_RESET_S,
    MIN_READS,
    RETRY_S,
    VERDICT_TTL_S,
    WINDOW,
    InsertThrottle,
    from_settings,
    reads_congested,
)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def write(throttle: InsertThrottle, t: FakeTime, rows: int, seconds: float) -> float:
    """One batch of ``rows`` that the store takes ``seconds`` for; returns the pause."""
    before = len(t.slept)
    with throttle.paced(rows):
        t.now += seconds
    return sum(t.slept[before:])


def throttle_and_time(**kw: float) -> tuple[InsertThrottle, FakeTime]:
    t = FakeTime()
    args = {"slowdown": 2.0, "min_rate": 1000.0, **kw}
    return InsertThrottle(clock=t.clock, sleep=t.sleep, **args), t  # type: ignore[arg-type]


def test_a_store_at_its_usual_speed_is_never_paced() -> None:
    throttle, t = throttle_and_time()
    for _ in range(200):
        assert write(throttle, t, 5000, 0.5) == 0.0  # 10k rows/s, steady
    assert throttle.rate is None and throttle.decreases == 0


def test_a_slower_store_halves_the_rate_and_batches_are_spread_out() -> None:
    throttle, t = throttle_and_time()
    for _ in range(5):
        write(throttle, t, 5000, 0.5)  # best: 100 us per row
    pause = write(throttle, t, 5000, 1.5)  # 3x slower: reads are queueing
    assert throttle.rate == pytest.approx(5000 / 1.5 * 0.5)  # half of what it achieved
    assert pause == pytest.approx(5000 / throttle.rate - 1.5)
    # Each further slow batch halves again, down to the floor and never below.
    for _ in range(20):
        write(throttle, t, 5000, 1.5)
    assert throttle.rate == 1000.0
    assert write(throttle, t, 5000, 1.5) == pytest.approx(5.0 - 1.5)  # 5000 rows at 1000/s


def test_the_rate_climbs_back_additively_and_pacing_ends() -> None:
    throttle, t = throttle_and_time()
    for _ in range(3):
        write(throttle, t, 5000, 0.5)
    for _ in range(10):
        write(throttle, t, 5000, 2.0)
    assert throttle.rate == 1000.0
    rates = []
    while throttle.rate is not None:
        write(throttle, t, 5000, 0.5)  # back to normal
        rates.append(throttle.rate)
    # +min_rate per batch until it passes what the store takes at its best (10k rows/s).
    assert rates[:3] == [2000.0, 3000.0, 4000.0]
    assert len(rates) == 9


def test_a_permanently_slower_store_becomes_the_new_normal() -> None:
    throttle, t = throttle_and_time()
    for _ in range(5):
        write(throttle, t, 5000, 0.5)
    for _ in range(WINDOW + 20):
        write(throttle, t, 5000, 1.2)  # 2.4x slower from now on (a bigger collection)
    assert throttle.rate is None  # the old best left the window; no pacing any more


def test_small_batches_do_not_count_as_a_slowdown() -> None:
    throttle, t = throttle_and_time()
    for _ in range(5):
        write(throttle, t, 5000, 0.5)
    write(throttle, t, 10, 0.01)  # a chunk's last batch: 1 ms per row of fixed costs
    assert throttle.rate is None and throttle.decreases == 0


def test_a_ceiling_paces_even_a_fast_store() -> None:
    throttle, t = throttle_and_time(max_rate=2000.0)
    assert write(throttle, t, 5000, 0.5) == pytest.approx(2.0)  # 5000 rows in >= 2.5 s
    assert throttle.slept == pytest.approx(2.0)


# The readers' signal (worker/throttle.py, shared/readpath/read_latency.py).

PERIOD_S = 0.5


class FakeReads:
    """An API process publishing every PERIOD_S (the real publisher's summaries), whose
    store reads take ``p90_ms`` from now on; returns what Redis would hold."""

    def __init__(self, t: FakeTime, calm_ms: float = 2.0, reads_per_period: int = 25) -> None:
        self.t = t
        self.publisher = ReadLatencyPublisher(None, PERIOD_S, process="api-1")  # type: ignore[arg-type]
        self.reads_per_period = reads_per_period
        for _ in range(BASELINE_MIN_PERIODS):  # calm history: the baseline
            self.period(calm_ms)
        self.p90_ms: float | None = calm_ms  # None: the API stopped publishing
        self.published_until = 0.0
        self.fail: Exception | None = None
        self.unreadable = False
        self.calls = 0

    def period(self, ms: float) -> ReadLatency:
        for _ in range(self.reads_per_period):
            self.publisher.observe(ms / 1000)
        return self.publisher.summary()

    def __call__(self) -> Sequence[ReadLatency] | None:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        if self.unreadable:
            return None
        if self.p90_ms is None:
            return []
        latest = None
        while self.published_until + PERIOD_S <= self.t.now:
            self.published_until += PERIOD_S
            latest = self.period(self.p90_ms)
        return [latest or self.publisher.summary()] if latest else [self.last()]

    def last(self) -> ReadLatency:
        """No period ended since the last call: the same summary again."""
        return ReadLatency(
            "api-1",
            self.publisher.reads,
            dict(self.publisher.counts),
            0.0,
            quantile(self.publisher.p90s, BASELINE_QUANTILE),
            self.published_until,
        )


def with_reads(**kw: float) -> tuple[InsertThrottle, FakeTime, FakeReads]:
    t = FakeTime()
    reads = FakeReads(t)
    args = {"slowdown": 2.0, "min_rate": 1000.0, "read_slowdown": 2.0, "read_floor_ms": 2.0, **kw}
    throttle = InsertThrottle(clock=t.clock, sleep=t.sleep, reads=reads, **args)  # type: ignore[arg-type]
    return throttle, t, reads


def summary(
    counts: dict[int, int], baseline_ms: float = 2.0, process: str = "api-1"
) -> ReadLatency:
    return ReadLatency(process, sum(counts.values()), counts, 0.0, baseline_ms, 0.0)


def at_ms(ms: float, n: int) -> dict[int, int]:
    return {bucket_of(ms / 1000): n}


def plus(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in a.keys() | b.keys()}


def test_the_verdict_is_the_p90_of_the_reads_since_the_last_one() -> None:
    marks: dict[str, ReadLatency] = {}
    calm = at_ms(1.0, 100)
    assert reads_congested([summary(calm)], marks, 2.0, 2.0) is None  # first sight: the mark
    # Since the mark: 10 reads, 2 of them slow (20 %): p90 slow.
    now = plus(calm, plus(at_ms(1.0, 8), at_ms(50.0, 2)))
    assert reads_congested([summary(now)], marks, 2.0, 2.0) is True
    # Since then: 20 reads, 1 slow (5 %): p90 healthy. What came before the mark is gone.
    later = plus(now, plus(at_ms(1.0, 19), at_ms(50.0, 1)))
    assert reads_congested([summary(later)], marks, 2.0, 2.0) is False


def test_a_window_with_too_few_reads_or_no_baseline_waits() -> None:
    marks: dict[str, ReadLatency] = {}
    reads_congested([summary({})], marks, 2.0, 2.0)
    few = at_ms(50.0, MIN_READS - 1)
    assert reads_congested([summary(few)], marks, 2.0, 2.0) is None
    enough = plus(few, at_ms(50.0, 1))  # the window grew: still counted from the old mark
    assert reads_congested([summary(enough)], marks, 2.0, 2.0) is True
    marks.clear()
    reads_congested([summary({}, baseline_ms=0)], marks, 2.0, 2.0)
    assert reads_congested([summary(at_ms(50, 9), baseline_ms=0)], marks, 2.0, 2.0) is None


def test_reads_faster_than_the_floor_are_never_congestion() -> None:
    # A real MongoDB: reads at 0.4 ms, 4x their 0.1 ms baseline, are still healthy.
    marks: dict[str, ReadLatency] = {}
    reads_congested([summary({}, 0.1)], marks, 2.0, 2.0)
    assert reads_congested([summary(at_ms(0.4, 20), 0.1)], marks, 2.0, 2.0) is False
    marks.clear()
    reads_congested([summary({}, 0.1)], marks, 2.0, 2.0)
    assert reads_congested([summary(at_ms(3.0, 20), 0.1)], marks, 2.0, 2.0) is True


def test_one_suffering_api_process_is_enough_and_gone_ones_are_forgotten() -> None:
    marks: dict[str, ReadLatency] = {}
    first = [summary({}, process=p) for p in ("api-1", "api-2", "api-3")]
    reads_congested(first, marks, 2.0, 2.0)
    calm = summary(at_ms(1.0, 20), process="api-1")
    slow = summary(at_ms(20.0, 20), process="api-2")
    quiet = summary(at_ms(90.0, 1), process="api-3")  # too few reads to say anything
    assert reads_congested([calm, slow, quiet], marks, 2.0, 2.0) is True
    assert reads_congested([calm, quiet], marks, 2.0, 2.0) is None  # api-1: no new reads
    assert set(marks) == {"api-1", "api-3"}


def test_slow_reads_pace_inserts_that_keep_their_speed() -> None:
    """The gap this signal closes: readers suffer while the insert batches do not slow down,
    so the insert rule alone never paces."""
    throttle, t, reads = with_reads()
    for _ in range(5):
        assert write(throttle, t, 5000, 0.5) == 0.0  # 10k rows/s, reads healthy
    reads.p90_ms = 20.0  # readers now wait 10x their baseline
    write(throttle, t, 5000, 0.5)  # the batch itself as fast as ever
    assert throttle.rate == pytest.approx(5000.0)  # half of what it achieved
    assert throttle.read_decreases == 1
    pause = write(throttle, t, 5000, 0.5)
    assert pause == pytest.approx(5000 / 2500.0 - 0.5)  # halved again: still slow


def test_slow_reads_halve_down_to_the_floor_once_per_window() -> None:
    throttle, t, reads = with_reads()
    write(throttle, t, 5000, 0.5)
    reads.p90_ms = 20.0
    rates = []
    for _ in range(10):
        write(throttle, t, 5000, 0.5)
        rates.append(throttle.rate)
    assert rates[:3] == [5000.0, 2500.0, 1250.0]  # one halving per batch cycle
    assert rates[-1] == 1000.0  # and never below the floor


def test_the_window_spans_the_pause_not_only_the_moment_after_a_batch() -> None:
    """Readers slow only while a batch runs and calm in the pause after it: the window since
    the previous decision holds both, so the verdict is about the whole cycle."""
    throttle, t, reads = with_reads()
    write(throttle, t, 5000, 0.5)
    throttle.rate = 1000.0  # 5000 rows per 5 s: 0.5 s of insert, 4.5 s of pause

    def cycle() -> None:
        reads.p90_ms = 2.0
        reads()  # the pause that just passed: calm periods published
        reads.p90_ms = 20.0
        write(throttle, t, 5000, 0.5)  # the batch: one slow period; then its pause

    cycle()  # the first window: just the first batch
    cycle()  # 1 slow period in 10 (10 % of reads): the cycle's p90 is calm
    assert throttle.rate == 2000.0
    cycle()  # at 2000 rows/s, 1 slow period in 5 (20 %): the p90 is slow
    assert throttle.rate == 1000.0 and throttle.read_decreases == 2


def test_healthy_reads_raise_the_rate_per_window_and_pacing_ends() -> None:
    throttle, t, reads = with_reads()
    write(throttle, t, 5000, 0.5)
    reads.p90_ms = 20.0
    for _ in range(10):
        write(throttle, t, 5000, 0.5)
    assert throttle.rate == 1000.0
    reads.p90_ms = 2.0
    rates = []
    while throttle.rate is not None:
        write(throttle, t, 5000, 0.5)
        rates.append(throttle.rate)
    assert rates[:3] == [2000.0, 3000.0, 4000.0]  # +min_rate per healthy window
    assert len(rates) == 9  # until faster than the store takes rows at its best (10k/s)


def test_the_signal_is_read_at_most_every_period() -> None:
    throttle, t, reads = with_reads(read_every_s=0.5)
    for _ in range(100):
        write(throttle, t, 500, 0.01)  # 1 s of batches
    assert reads.calls == 2


def test_no_reader_of_the_store_means_nobody_to_protect() -> None:
    """The signal is read, but no API process publishes (no API, or no misses): slower
    batches do not pace (the insert rule would only slow the load: two loaders on one store
    make batches 2x slower by themselves), and a rate paced earlier recovers."""
    throttle, t, reads = with_reads()
    reads.p90_ms = None
    for _ in range(5):
        write(throttle, t, 5000, 0.5)
    assert write(throttle, t, 5000, 1.5) == 0.0
    assert throttle.rate is None and throttle.decreases == 0
    throttle.rate = 2000.0  # paced while readers suffered, then they went quiet
    write(throttle, t, 5000, 0.5)
    assert throttle.rate == pytest.approx(3000.0)


def test_without_a_signal_source_the_insert_rule_paces() -> None:
    throttle, t = throttle_and_time()  # INGEST_READ_SIGNAL=false: no source at all
    for _ in range(5):
        write(throttle, t, 5000, 0.5)
    write(throttle, t, 5000, 1.5)  # the store slower: the insert rule paces
    assert throttle.rate == pytest.approx(5000 / 1.5 * 0.5)
    write(throttle, t, 5000, 0.5)  # and a normal batch adds to the rate
    assert throttle.rate == pytest.approx(5000 / 1.5 * 0.5 + 1000)


def test_while_reads_speak_normal_batches_do_not_raise_the_rate() -> None:
    throttle, t, reads = with_reads(read_every_s=10.0)
    write(throttle, t, 5000, 0.5)  # first sight of the API process: its mark
    t.now += 10
    write(throttle, t, 5000, 0.5)  # a verdict: reads healthy
    throttle.rate = 3000.0
    for _ in range(5):
        write(throttle, t, 5000, 0.5)  # normal batches, no reading due yet
    assert throttle.rate == 3000.0
    assert reads.calls == 2


def test_while_readers_are_healthy_slower_batches_alone_do_not_pace() -> None:
    throttle, t, reads = with_reads()
    for _ in range(5):
        write(throttle, t, 5000, 0.5)
    assert write(throttle, t, 5000, 1.5) == 0.0  # 3x slower, but readers see no harm
    assert throttle.rate is None and throttle.decreases == 0
    reads.p90_ms = None  # the readers fall silent: still nobody to protect
    write(throttle, t, 5000, 1.5)
    write(throttle, t, 5000, 1.5)
    assert throttle.rate is None


def test_a_verdict_that_stays_pending_too_long_means_nobody_reads() -> None:
    throttle, t, reads = with_reads()
    for _ in range(3):
        write(throttle, t, 5000, 0.5)
    assert throttle.reads_known
    reads.reads_per_period = 0  # the API still publishes, but nothing misses any more
    for _ in range(int(VERDICT_TTL_S / 0.5) + 1):
        write(throttle, t, 5000, 0.5)
    assert not throttle.reads_known and throttle.reads_quiet
    write(throttle, t, 5000, 1.5)
    assert throttle.rate is None  # nobody reads from the store: no pacing


@pytest.mark.parametrize("failure", ["unreadable", "raises"])
def test_a_failing_signal_never_fails_or_stalls_a_load(failure: str) -> None:
    throttle, t, reads = with_reads()
    if failure == "raises":
        reads.fail = RuntimeError("broken")
    else:
        reads.unreadable = True
    for _ in range(5):
        assert write(throttle, t, 5000, 0.5) == 0.0  # no pause, no exception
    assert reads.calls == 1  # not asked again before RETRY_S
    write(throttle, t, 5000, 1.5)  # the insert rule still works
    assert throttle.rate == pytest.approx(5000 / 1.5 * 0.5)
    reads.fail, reads.unreadable = None, False
    t.now += RETRY_S
    write(throttle, t, 5000, 0.5)
    assert reads.calls == 2  # asked again once RETRY_S has passed


def test_a_long_idle_gap_starts_unpaced() -> None:
    throttle, t, reads = with_reads()
    write(throttle, t, 5000, 0.5)
    reads.p90_ms = 20.0
    write(throttle, t, 5000, 0.5)
    assert throttle.rate is not None
    reads.p90_ms = 2.0
    t.now += IDLE_RESET_S + 1  # the next file, much later
    assert write(throttle, t, 5000, 0.5) == 0.0
    assert throttle.rate is None


@pytest.mark.parametrize(
    ("rows_per_s", "most_steps"),
    [(10_000, 10), (300_000, 17)],  # row documents; bucket documents (30x the rows a second)
)
def test_a_halved_rate_recovers_in_a_few_batches_at_any_store_speed(
    rows_per_s: float, most_steps: int
) -> None:
    throttle, t = throttle_and_time()
    for _ in range(10):
        write(throttle, t, 5000, 5000 / rows_per_s)
    write(throttle, t, 5000, 3 * 5000 / rows_per_s)  # one slow batch: the store was busy
    assert throttle.rate is not None and throttle.rate <= rows_per_s / 2
    steps = 0
    while throttle.rate is not None:
        write(throttle, t, 5000, 5000 / rows_per_s)
        steps += 1
        assert steps <= most_steps  # a fixed 1,000 rows/s step took ~150 at bucket speed


def test_with_publishing_off_the_workers_pace_on_insert_latency() -> None:
    """READ_LATENCY_PUBLISH_S=0: no API process ever publishes, so the readers' signal would
    always be empty ("nobody reads") and a slower store would never pace a load."""
    from shared.settings import Settings

    quiet = from_settings(Settings(read_latency_publish_s=0))
    assert quiet is not None and quiet.reads is None and quiet.flag is None
    listening = from_settings(Settings(read_latency_publish_s=0.5))
    assert listening is not None and listening.reads is not None
    assert listening.flag is not None  # a load flags itself for those readers
    assert from_settings(Settings(ingest_read_signal=False)).reads is None  # type: ignore[union-attr]


def test_a_load_flags_itself_for_the_readers_at_most_every_few_seconds() -> None:
    """The readers keep the time a load works out of their calm baseline
    (shared/readpath/read_latency.py, LOADING_KEY): the flag is renewed by batches and
    tasks alike, well within its TTL, and a failing flag never fails a batch."""
    t = FakeTime()
    flags: list[float] = []
    throttle = InsertThrottle(
        2.0, 1000.0, clock=t.clock, sleep=t.sleep, flag=lambda: flags.append(t.now)
    )
    for _ in range(100):  # 10 s of batches
        write(throttle, t, 500, 0.1)
    throttle.note_loading()  # a map task starting: within FLAG_EVERY_S of the last flag
    assert flags[0] == 0.0 and len(flags) == 2
    assert all(b - a >= FLAG_EVERY_S for a, b in itertools.pairwise(flags))
    assert FLAG_EVERY_S * 3 <= LOADING_TTL_S  # renewed long before it expires

    def broken() -> None:
        raise ConnectionError("redis is down")

    failing = InsertThrottle(2.0, 1000.0, clock=t.clock, sleep=t.sleep, flag=broken)
    write(failing, t, 500, 0.1)  # no exception
