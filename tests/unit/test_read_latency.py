"""The readers' latency summary an API process publishes (shared/readpath/read_latency.py): what one
period says, when a baseline exists, and the wire format. No Redis here (see
tests/integration/test_read_latency.py)."""

from __future__ import annotations

from shared.readpath.read_latency import (
    BASELINE_MIN_PERIODS,
    BASELINE_MIN_READS,
    BUCKETS,
    ReadLatency,
    ReadLatencyPublisher,
    bucket_of,
    bucket_upper_ms,
    quantile,
    window,
)


def publisher(period_s: float = 0.5) -> ReadLatencyPublisher:
    return ReadLatencyPublisher(None, period_s, process="api-test")  # type: ignore[arg-type]


def test_a_summary_holds_every_read_so_far_and_the_periods_p90() -> None:
    p = publisher()
    for ms in range(1, 21):  # 1..20 ms
        p.observe(ms / 1000)
    s = p.summary(at=5.0)
    assert (s.process, s.reads, s.at) == ("api-test", 20, 5.0)
    assert s.p90_ms == bucket_upper_ms(bucket_of(0.019))  # in the histogram's resolution
    assert sum(s.counts.values()) == 20
    p.observe(0.001)
    s2 = p.summary()
    assert s2.reads == 21 and s2.p90_ms == bucket_upper_ms(bucket_of(0.001))
    assert window(s2, s) == (1, bucket_upper_ms(bucket_of(0.001)))  # the reads in between


def test_buckets_are_19_percent_apart_and_bound_their_reads() -> None:
    for ms in (0.05, 0.1, 0.37, 1.0, 2.5, 9.9, 250.0, 5000.0):
        upper = bucket_upper_ms(bucket_of(ms / 1000))
        assert ms <= upper * (1 + 1e-9) and upper <= max(0.1, ms * 1.19 * (1 + 1e-9))
    assert bucket_of(3600.0) == BUCKETS - 1  # an hour: the last bucket


def test_a_window_p90_is_the_bucket_of_the_90th_percentile_read() -> None:
    s0 = ReadLatency("a", 0, {}, 0.0, 1.0, 0.0)
    counts = {bucket_of(0.001): 90, bucket_of(0.050): 10}
    s1 = ReadLatency("a", 100, counts, 0.0, 1.0, 1.0)
    assert window(s1, s0) == (100, bucket_upper_ms(bucket_of(0.001)))
    counts = {bucket_of(0.001): 89, bucket_of(0.050): 11}
    s1 = ReadLatency("a", 100, counts, 0.0, 1.0, 1.0)
    assert window(s1, None) == (100, bucket_upper_ms(bucket_of(0.050)))
    assert window(s1, s1) == (0, 0.0)


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
    assert s.baseline_ms == bucket_upper_ms(bucket_of(0.002))
    assert s.p90_ms == bucket_upper_ms(bucket_of(0.020))


def test_the_baseline_follows_a_store_that_got_slower_for_good() -> None:
    p = publisher(period_s=1.0)  # history: the last 300 periods
    for _ in range(400):
        for _ in range(BASELINE_MIN_READS):
            p.observe(0.004)
        s = p.summary()
    assert s.baseline_ms == bucket_upper_ms(bucket_of(0.004))


def test_publishing_off_collects_nothing() -> None:
    p = publisher(period_s=0)
    assert not p.enabled
    p.observe(0.010)
    assert p.samples == [] and p.reads == 0


def test_the_summary_survives_the_wire() -> None:
    s = ReadLatency("host:1:ab", 12, {3: 10, 40: 2}, 3.5, 1.5, 1700000000.123456)
    assert ReadLatency.decode(s.encode()) == s
    assert ReadLatency.decode(s.encode().encode()) == s


def test_quantile_is_nearest_rank() -> None:
    assert quantile([], 0.9) == 0.0
    assert quantile([3.0, 1.0, 2.0], 0.0) == 1.0
    assert quantile([3.0, 1.0, 2.0], 0.99) == 3.0
    assert quantile([float(i) for i in range(100)], 0.9) == 90.0


def test_periods_a_load_flagged_never_enter_the_baseline_however_long_it_runs() -> None:
    """A 20-minute load filled the whole history (300 s) with its own periods and the calm
    level rose with them (5.4 -> 9.1 ms logged during a 100M-row load): periods that saw
    the loading flag are kept out."""
    p = publisher(period_s=1.0)  # history: the last 300 periods
    for _ in range(BASELINE_MIN_PERIODS):
        for _ in range(BASELINE_MIN_READS):
            p.observe(0.002)
        p.summary()
    for _ in range(1200):  # 20 minutes of a load
        for _ in range(BASELINE_MIN_READS):
            p.observe(0.020)
        s = p.summary(calm=False)
    assert s.baseline_ms == bucket_upper_ms(bucket_of(0.002))
    assert s.p90_ms == bucket_upper_ms(bucket_of(0.020))  # the load's reads still published
