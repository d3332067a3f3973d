"""Rate, ETA and phase durations of a job record (pure arithmetic on its timestamps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shared.dataset.job_progress import phase_durations, progress_fields
from shared.dataset.job_records import new_job, public_job

T0 = datetime(2026, 11, 25, 14, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def loading_job(**over: Any) -> dict[str, Any]:
    doc = new_job("j1", 3, "f.csv", 1000, "upload")
    doc.update(
        created_at=at(0),
        started_at=at(1),
        status="running",
        phase="loading",
        phase_at={"splitting": at(1), "loading": at(2)},
        chunks_total=10,
        chunks_done=4,
        rows_loaded=40_000,
    )
    doc.update(over)
    return doc


def test_while_loading_rate_is_rows_over_loading_time_and_eta_extrapolates_chunks() -> None:
    out = progress_fields(loading_job(), now=at(10))
    assert out["rows_per_s"] == 5000.0  # 40,000 rows in the 8 s since loading began
    assert out["eta_s"] == 12.0  # 4 chunks took 8 s: 6 more take 12 s
    assert out["phase_durations_s"] is None


def test_while_writing_the_eta_extrapolates_partitions_from_the_writing_phase() -> None:
    doc = loading_job(
        phase="writing",
        phase_at={"splitting": at(1), "loading": at(2), "writing": at(12)},
        chunks_done=10,
        partitions_total=8,
        partitions_done=2,
        rows_loaded=100_000,
    )
    out = progress_fields(doc, now=at(15))
    assert out["eta_s"] == 9.0  # 2 partitions took 3 s: 6 more take 9 s
    assert out["rows_per_s"] == round(100_000 / 13, 1)  # loading and writing so far


def test_no_eta_before_the_first_chunk_or_outside_loading() -> None:
    assert progress_fields(loading_job(chunks_done=0, rows_loaded=0), at(5))["eta_s"] is None
    queued = new_job("j2", 4, "f.csv", 10, "upload")
    assert progress_fields(queued, at(5)) == {
        "rows_per_s": None,
        "eta_s": None,
        "phase_durations_s": None,
    }
    splitting = loading_job(phase="splitting", phase_at={"splitting": at(1)})
    assert progress_fields(splitting, at(5))["rows_per_s"] is None
    every_chunk = loading_job(chunks_done=10, rows_loaded=100_000)
    assert progress_fields(every_chunk, at(12))["eta_s"] == 0.0  # waiting for the finalizer


def test_when_done_phase_durations_add_up_and_rate_is_the_loading_average() -> None:
    doc = loading_job(
        status="succeeded",
        phase="done",
        phase_at={"splitting": at(1), "loading": at(1.5), "activating": at(21.5)},
        finished_at=at(22),
        chunks_done=10,
        rows_loaded=100_000,
    )
    out = progress_fields(doc, now=at(500))  # a late poll changes nothing
    assert out["phase_durations_s"] == {
        "queued": 1.0,
        "splitting": 0.5,
        "loading": 20.0,
        "activating": 0.5,
        "total": 22.0,
    }
    assert out["rows_per_s"] == 5000.0 and out["eta_s"] is None


def test_a_job_that_failed_while_splitting_has_only_the_phases_it_reached() -> None:
    doc = new_job("j3", 5, "f.csv", 10, "upload")
    doc.update(
        created_at=at(0),
        status="failed",
        phase="done",
        phase_at={"splitting": at(2)},
        finished_at=at(3),
    )
    assert phase_durations(doc) == {"queued": 2.0, "splitting": 1.0, "total": 3.0}


def test_clock_skew_between_hosts_never_gives_negative_durations_and_naive_is_utc() -> None:
    doc = loading_job(
        status="failed",
        phase="done",
        created_at=at(5).replace(tzinfo=None),  # API host ahead of the worker's clock
        phase_at={"splitting": at(4), "loading": at(4.5)},
        finished_at=at(6),
    )
    assert phase_durations(doc) == {"queued": 0.0, "splitting": 0.5, "loading": 1.5, "total": 1.0}


@given(
    gaps=st.lists(st.floats(min_value=0, max_value=1e5), min_size=5, max_size=5),
    rows=st.integers(min_value=0, max_value=10**9),
)
def test_phase_durations_sum_to_the_total(gaps: list[float], rows: int) -> None:
    marks = [at(sum(gaps[: i + 1])) for i in range(5)]
    doc = loading_job(
        status="succeeded",
        phase="done",
        created_at=marks[0],
        phase_at={"splitting": marks[1], "loading": marks[2], "activating": marks[3]},
        finished_at=marks[4],
        rows_loaded=rows,
    )
    out = progress_fields(doc, now=marks[4])
    durations = dict(out["phase_durations_s"])
    total = durations.pop("total")
    assert abs(sum(durations.values()) - total) < 0.01
    assert out["rows_per_s"] is None or out["rows_per_s"] >= 0


def test_the_public_job_view_carries_the_fields() -> None:
    view = public_job(loading_job())
    assert {"rows_per_s", "eta_s", "phase_durations_s"} <= set(view)
    assert view["rows_per_s"] is not None and view["eta_s"] is not None
