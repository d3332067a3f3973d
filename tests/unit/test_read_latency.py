"""The readers' latency summary an API process publishes (shared/read_latency.py): what one
period says, when a baseline exists, and the wire format. No Redis here (see
tests/integration/test_read_latency.py)."""

from __future__ import annotations

import pytest

from shared.read_latency import (
    BASELINE_MIN_PERIODS,
    BASELINE_MIN_READS,
    ReadLatency,
    ReadLatencyPublisher,
    quantile,
)


def publisher(period_s: float = 0.5) -> ReadLatencyPublisher:
    return ReadLatencyPublisher(None, period_s, process="api-test")  # type: ignore[arg-type]


def test_a_period_is_summarised_by_its_reads_p90_and_max() -> None:
    p = publisher()
    for ms in range(1, 21):  # 1..20 ms
        p.observe(ms / 1000)
    s = p.summary(at=5.0)
    assert (s.process, s.reads, s.at) == ("api-test", 20, 5.0)
    assert s.p90_ms == pytest.approx(19.0)
    assert s.max_ms == pytest.approx(20.0)
    assert p.summary().reads == 0  # the next period starts empty


def test_the_baseline_comes_from_calm_periods_with_enough_reads() -> None:
    p = publisher()
    for _ in range(BASELINE_MIN_PERIODS - 1):
        for _ in range(BASELINE_MIN_READS):
            p.observe(0.002)
        assert p.summary().baseline_ms == 0.0  # not enough history yet
    for _ in range(BASELINE_MIN_READS - 1):
        p.observe(0.5)
    assert p.summary().baseline_ms == 0.0  # too few reads: not part of the history
    for _ in range(BASELINE_MIN_READS):
        p.observe(0.002)
    p.summary()
    # Now 10 calm periods; then a load makes reads 10x slower for a while: the baseline
    # stays at the calm level (a low quantile of the periods' p90s).
    for _ in range(30):
        for _ in range(BASELINE_MIN_READS):
            p.observe(0.020)
        s = p.summary()
    assert s.baseline_ms == pytest.approx(2.0)
    assert s.p90_ms == pytest.approx(20.0)


def test_the_baseline_follows_a_store_that_got_slower_for_good() -> None:
    p = publisher(period_s=1.0)  # history: the last 300 periods
    for _ in range(400):
        for _ in range(BASELINE_MIN_READS):
            p.observe(0.004)
        s = p.summary()
    assert s.baseline_ms == pytest.approx(4.0)


def test_publishing_off_collects_nothing() -> None:
    p = publisher(period_s=0)
    assert not p.enabled
    p.observe(0.010)
    assert p.samples == []


def test_the_summary_survives_the_wire() -> None:
    s = ReadLatency("host:1:ab", 12, 3.5, 9.25, 1.5, 1700000000.123456)
    assert ReadLatency.decode(s.encode()) == s
    assert ReadLatency.decode(s.encode().encode()) == s


def test_quantile_is_nearest_rank() -> None:
    assert quantile([], 0.9) == 0.0
    assert quantile([3.0, 1.0, 2.0], 0.0) == 1.0
    assert quantile([3.0, 1.0, 2.0], 0.99) == 3.0
    assert quantile([float(i) for i in range(100)], 0.9) == 90.0
