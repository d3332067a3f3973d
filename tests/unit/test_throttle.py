"""The insert throttle's AIMD, on a fake clock: no sleeping, no store."""

from __future__ import annotations

import pytest

from worker.throttle import WINDOW, InsertThrottle


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
