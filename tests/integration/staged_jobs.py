"""Jobs brought to a given step by calling the worker's steps directly, as the lifecycle
tests replay races step by step."""

from __future__ import annotations

from typing import Any

from shared.dataset import job_records, lifecycle
from shared.settings import Settings
from worker import job_steps


def stored_job(
    db: Any, settings: Settings, job_id: str, version: int, lines: list[str]
) -> list[tuple[int, int, int]]:
    """A job whose file is stored and planned: its chunks, ready to map."""
    (settings.uploads_dir / f"{job_id}.csv").write_text("".join(f"{x}\n" for x in lines))
    db[lifecycle.JOBS].insert_one(
        job_records.new_job(job_id, version, f"{job_id}.csv", 10, "upload")
    )
    chunks: list[tuple[int, int, int]] = []
    assert not job_steps.plan(db, settings, job_id, lambda *c: chunks.append(c))
    return chunks


def mapped_job(
    db: Any, settings: Settings, job_id: str, version: int, lines: list[str]
) -> list[int]:
    """A job whose chunks are all mapped: its partitions, ready to reduce."""
    chunks = stored_job(db, settings, job_id, version, lines)
    assert [job_steps.load(db, settings, job_id, *c) for c in chunks][-1] == "last"
    partitions: list[int] = []
    assert not job_steps.after_loading(db, settings, job_id, partitions.append)
    return partitions
