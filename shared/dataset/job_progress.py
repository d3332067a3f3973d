"""Rate, ETA and phase durations of a job, derived from what its record already keeps.

Pure (the clock is an argument): the job view calls it on every poll, and tests pin the
arithmetic without a running job. Counters move once per finished chunk, so the figures move
per chunk too (a file is split into at least a few dozen chunks unless it is tiny).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.dataset.lifecycle import FINISHED, JOB_PHASES, JobPhase

# The timed phases, in the order a job goes through them (shared.dataset.lifecycle.JobPhase).
PHASES: tuple[JobPhase, ...] = tuple(p for p in JOB_PHASES if p != "done")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _utc(value: Any) -> datetime | None:
    return _aware(value) if isinstance(value, datetime) else None


def _seconds(start: datetime, end: datetime) -> float:
    # Timestamps come from several hosts (API and workers): a little skew must not go negative.
    return max(0.0, (end - start).total_seconds())


def phase_starts(doc: dict[str, Any]) -> dict[str, datetime]:
    """When each phase the job reached began (``queued`` is its creation)."""
    marks = doc.get("phase_at") or {}
    starts: dict[str, datetime] = {}
    for phase in PHASES:
        at = _utc(doc.get("created_at") if phase == "queued" else marks.get(phase))
        if at is not None:
            starts[phase] = at
    return starts


def phase_durations(doc: dict[str, Any]) -> dict[str, float] | None:
    """Seconds spent in each phase, and ``total``; None until the job has ended."""
    finished = _utc(doc.get("finished_at"))
    if doc.get("status") not in FINISHED or finished is None:
        return None
    starts = phase_starts(doc)
    reached = [p for p in PHASES if p in starts]
    out: dict[str, float] = {}
    for i, phase in enumerate(reached):
        end = starts[reached[i + 1]] if i + 1 < len(reached) else finished
        out[phase] = round(_seconds(starts[phase], end), 3)
    if "queued" in starts:
        out["total"] = round(_seconds(starts["queued"], finished), 3)
    return out


def progress_fields(doc: dict[str, Any], now: datetime) -> dict[str, Any]:
    """``rows_per_s``: rows loaded per second of loading and writing (so far while they run,
    their average once they are over). ``eta_s``: the seconds left in the current phase if
    its remaining chunks (loading) or partitions (writing) go as fast as the finished ones
    did; None before the first one ends and outside those phases. ``phase_durations_s``:
    once the job has ended."""
    starts = phase_starts(doc)
    finished = _utc(doc.get("finished_at"))
    loading_from = starts.get("loading")
    rows_per_s: float | None = None
    eta_s: float | None = None
    if loading_from is not None:
        loading_until = starts.get("activating") or finished or _aware(now)
        elapsed = _seconds(loading_from, loading_until)
        rows = int(doc.get("rows_loaded") or 0)
        rows_per_s = round(rows / elapsed, 1) if elapsed > 0 else None
        phase = doc.get("phase")
        unit = {"loading": "chunks", "writing": "partitions"}.get(str(phase))
        phase_from = starts.get(str(phase))
        if doc.get("status") == "running" and unit and phase_from is not None:
            total = int(doc.get(f"{unit}_total") or 0)
            done = int(doc.get(f"{unit}_done") or 0)
            if total and done:
                spent = _seconds(phase_from, _aware(now))
                eta_s = round(spent * max(0, total - done) / done, 1)
    return {"rows_per_s": rows_per_s, "eta_s": eta_s, "phase_durations_s": phase_durations(doc)}
