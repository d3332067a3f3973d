"""The insert throttle's AIMD, on a fake clock: no sleeping, no store, and a readers'
signal given as data (what the API processes would have published)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from shared.read_latency import ReadLatency
from worker.throttle import (
    HOLD_READINGS,
    IDLE_RESET_S,
    MIN_READS,
    RETRY_S,
    WINDOW,
    InsertThrottle,
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


# The readers' signal (worker/throttle.py, shared/read_latency.py).


def summary(
    p90_ms: float,
    baseline_ms: float = 2.0,
    reads: int = 25,
    at: float = 0.0,
    process: str = "api-1",
) -> ReadLatency:
    return ReadLatency(process, reads, p90_ms, p90_ms * 2, baseline_ms, at)


class FakeReads:
    """What Redis would hold: the latest summary of each API process."""

    def __init__(self, t: FakeTime) -> None:
        self.t = t
        self.p90_ms: float | None = 2.0  # None: nothing published
        self.baseline_ms = 2.0
        self.reads = 25
        self.fail: Exception | None = None
        self.unreadable = False
        self.calls = 0

    def __call__(self) -> Sequence[ReadLatency] | None:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        if self.unreadable:
            return None
        if self.p90_ms is None:
            return []
        # A new summary every 0.5 s (the publisher's period).
        at = int(self.t.now / 0.5) * 0.5
        return [summary(self.p90_ms, self.baseline_ms, self.reads, at)]


def with_reads(**kw: float) -> tuple[InsertThrottle, FakeTime, FakeReads]:
    t = FakeTime()
    reads = FakeReads(t)
    args = {"slowdown": 2.0, "min_rate": 1000.0, "read_slowdown": 2.0, "read_floor_ms": 2.0, **kw}
    throttle = InsertThrottle(clock=t.clock, sleep=t.sleep, reads=reads, **args)  # type: ignore[arg-type]
    return throttle, t, reads


def test_the_verdict_needs_enough_reads_and_a_baseline() -> None:
    assert reads_congested([], 2.0, 2.0) is None
    assert reads_congested([summary(50.0, reads=MIN_READS - 1)], 2.0, 2.0) is None
    assert reads_congested([summary(50.0, baseline_ms=0.0)], 2.0, 2.0) is None
    assert reads_congested([summary(50.0)], 2.0, 2.0) is True
    assert reads_congested([summary(4.0)], 2.0, 2.0) is False  # 2x its baseline: still fine
    assert reads_congested([summary(4.1)], 2.0, 2.0) is True


def test_reads_faster_than_the_floor_are_never_congestion() -> None:
    # A real MongoDB: reads at 0.3 ms, 3x their 0.1 ms baseline, are still healthy.
    assert reads_congested([summary(0.3, baseline_ms=0.1)], 2.0, 2.0) is False
    assert reads_congested([summary(2.5, baseline_ms=0.1)], 2.0, 2.0) is True


def test_one_suffering_api_process_is_enough() -> None:
    calm = summary(2.0, process="api-1")
    slow = summary(20.0, process="api-2")
    quiet = summary(90.0, reads=1, process="api-3")  # too few reads to say anything
    assert reads_congested([calm, slow], 2.0, 2.0) is True
    assert reads_congested([calm, quiet], 2.0, 2.0) is False


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
    assert pause == pytest.approx(5000 / 5000.0 - 0.5)


def test_slow_reads_halve_at_most_once_per_hold_down_to_the_floor() -> None:
    throttle, t, reads = with_reads()
    write(throttle, t, 5000, 0.5)
    reads.p90_ms = 20.0
    rates = []
    for _ in range(40):
        write(throttle, t, 5000, 0.5)
        rates.append(throttle.rate)
    assert min(r for r in rates if r is not None) == 1000.0  # never below the floor
    # Fresh summaries arrive every batch here (each batch plus its pause takes >= 0.5 s);
    # a halving waits for HOLD_READINGS of them.
    assert throttle.read_decreases <= 40 // HOLD_READINGS + 1
    assert rates[1] == rates[0]  # the summary right after a halving does not halve again


def test_healthy_reads_raise_the_rate_per_summary_and_pacing_ends() -> None:
    throttle, t, reads = with_reads()
    write(throttle, t, 5000, 0.5)
    reads.p90_ms = 20.0
    for _ in range(20):
        write(throttle, t, 5000, 0.5)
    assert throttle.rate == 1000.0
    reads.p90_ms = 2.0
    rates = []
    while throttle.rate is not None:
        write(throttle, t, 5000, 0.5)
        rates.append(throttle.rate)
    assert rates[:3] == [2000.0, 3000.0, 4000.0]  # +min_rate per healthy summary
    assert len(rates) == 9  # until faster than the store takes rows at its best (10k/s)


def test_the_same_summary_read_twice_is_one_step() -> None:
    throttle, t, reads = with_reads(read_every_s=0.1)
    write(throttle, t, 5000, 0.5)
    reads.p90_ms = 20.0
    write(throttle, t, 5000, 0.5)
    assert throttle.rate == 5000.0
    reads.p90_ms = 2.0
    throttle.rate = 3000.0
    # Two readings within one publisher period: the second one sees the same summary.
    t.now = (int(t.now / 0.5) + 1) * 0.5 + 0.05
    write(throttle, t, 100, 0.0001)
    assert throttle.rate == 4000.0
    t.now += 0.2
    write(throttle, t, 100, 0.0001)
    assert throttle.rate == 4000.0


def test_the_signal_is_read_at_most_every_period() -> None:
    throttle, t, reads = with_reads(read_every_s=0.5)
    for _ in range(100):
        write(throttle, t, 500, 0.01)  # 1 s of batches
    assert reads.calls == 2


def test_no_signal_means_the_insert_rule_alone() -> None:
    throttle, t, reads = with_reads()
    reads.p90_ms = None  # no API process publishes (no misses, or publishing off)
    for _ in range(5):
        write(throttle, t, 5000, 0.5)
    write(throttle, t, 5000, 1.5)  # the store slower: the insert rule still paces
    assert throttle.rate == pytest.approx(5000 / 1.5 * 0.5)
    write(throttle, t, 5000, 0.5)  # and a normal batch adds to the rate, as before
    assert throttle.rate == pytest.approx(5000 / 1.5 * 0.5 + 1000)


def test_while_reads_speak_normal_batches_do_not_raise_the_rate() -> None:
    throttle, t, reads = with_reads(read_every_s=10.0)
    write(throttle, t, 5000, 0.5)  # a reading: reads healthy
    throttle.rate = 3000.0
    for _ in range(5):
        write(throttle, t, 5000, 0.5)  # normal batches, no reading due yet
    assert throttle.rate == 3000.0
    assert reads.calls == 1


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


def test_while_readers_are_healthy_slower_batches_alone_do_not_pace() -> None:
    throttle, t, reads = with_reads()
    for _ in range(5):
        write(throttle, t, 5000, 0.5)
    assert write(throttle, t, 5000, 1.5) == 0.0  # 3x slower, but readers see no harm
    assert throttle.rate is None and throttle.decreases == 0
    reads.p90_ms = None  # the readers fall silent: from the next batch, the insert rule
    write(throttle, t, 5000, 1.5)
    assert throttle.rate is None
    write(throttle, t, 5000, 1.5)
    assert throttle.rate == pytest.approx(5000 / 1.5 * 0.5)
