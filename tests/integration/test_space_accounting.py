"""What a job writes on the shared volume is bounded by settings and reserved before it is
written: the plan's estimate does not blow up on blank lines, the reject report lists at
most REJECT_REPORT_MAX_LINES lines (every reject counted by reason), and a file whose
invalid rows already exceed the limit whatever the rest holds stops early instead of being
mapped whole. Job steps against the dev store, small settings."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from shared.dataset import datasets, job_records, lifecycle, reject_report
from shared.settings import Settings
from worker import job_steps, shuffle_files

DATE = "2018-08-04 05:32:31 +0200 CEST"


@pytest.fixture
def space_db(mongo_db: Any) -> Any:
    """A database of its own: the session's Celery worker must not act on these jobs."""
    db = mongo_db.client[f"{mongo_db.name}_space"]
    yield db
    mongo_db.client.drop_database(db.name)


@pytest.fixture
def small(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "data_dir": tmp_path,
            "chunk_size_bytes": 16 * 1024,
            "shuffle_slices": 16,
            "min_partitions": 1,
        }
    )


def start(db: Any, settings: Settings, text: str, job_id: str) -> list[tuple[int, int, int]]:
    version = datasets.allocate_version_sync(db)
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    (settings.uploads_dir / f"{job_id}.csv").write_text(text)
    db[lifecycle.JOBS].insert_one(
        job_records.new_job(job_id, version, f"{job_id}.csv", 10, "upload")
    )
    chunks: list[tuple[int, int, int]] = []
    assert not job_steps.plan(db, settings, job_id, lambda *c: chunks.append(c))
    return chunks


def test_blank_lines_first_do_not_make_the_plan_reserve_a_row_per_byte(
    space_db: Any, small: Settings
) -> None:
    """64 KiB of blank lines, then a valid file: the estimate counts rows, not blank lines
    (it used to reserve ~65x the file and refuse every other plan meanwhile)."""
    rows = "".join(f"id{i:06d},{i}.5,{DATE}\n" for i in range(3000))
    text = "\n" * (64 * 1024) + rows
    no_report = small.model_copy(update={"reject_report_max_lines": 0})
    start(space_db, no_report, text, "blank")
    reserved = int((shuffle_files.job_dir(small.runs_dir, "blank") / "reserved").read_text())
    # At most as if every row were as short as a valid row can be: ~3.7x the file.
    assert reserved <= 4 * len(text), reserved / len(text)


def test_a_hopeless_file_stops_early_instead_of_being_mapped_whole(
    space_db: Any, small: Settings
) -> None:
    # two bad rows in three (a wholly bad start is refused by the plan's sniff already)
    lines = [f"id{i:06d},{i}.5,{DATE}" if i % 3 == 0 else f"bad line {i}" for i in range(30_000)]
    chunks = start(space_db, small, "".join(f"{x}\n" for x in lines), "hopeless")
    assert len(chunks) > 30
    outcomes = []
    for chunk in chunks:
        outcomes.append(job_steps.load(space_db, small, "hopeless", *chunk))
        if outcomes[-1] == "ended":
            break
    job = space_db[lifecycle.JOBS].find_one({"_id": "hopeless"})
    assert job["status"] == lifecycle.FAILED
    assert "stopped early" in job["error"] and "more than the allowed 1.00%" in job["error"]
    assert len(outcomes) <= len(chunks) // 5  # ~6.5 % of the file at the most
    later = job_steps.load(space_db, small, "hopeless", *chunks[-1])
    assert later == "skipped"  # the chunks still queued do nothing


def test_a_job_stopped_early_numbers_its_rejects_only_up_to_the_first_chunk_never_read(
    space_db: Any, small: Settings
) -> None:
    """Chunks finish out of order: chunk 1 is still unread when chunks 0 and 2 prove the
    file hopeless. The lines before chunk 2 are then unknown, so neither the job's preview
    nor the report may number chunk 2's rejects (they came out shifted by chunk 1's lines)."""
    job_id = "6a9" * 10 + "00"  # a job id as the API makes them (the report checks)
    lines = [f"id{i:06d},{i}.5,{DATE}" if i % 5 else f"bad line {i}" for i in range(5_000)]
    chunks = start(space_db, small, "".join(f"{x}\n" for x in lines), job_id)
    order = [chunks[0], *chunks[2:]]
    outcomes = []
    for chunk in order:
        outcomes.append(job_steps.load(space_db, small, job_id, *chunk))
        if outcomes[-1] == "ended":
            break
    assert outcomes[0] == "loaded" and outcomes[-1] == "ended", outcomes
    first = space_db[job_records.CHUNKS].find_one({"job_id": job_id, "index": 0})
    job = space_db[lifecycle.JOBS].find_one({"_id": job_id})
    assert job["rows_rejected"] > job_records.MAX_REJECTS_KEPT > first["rows_rejected"]
    numbered = [r["line"] for r in job["rejects"]]
    assert numbered == [i + 1 for i in range(first["lines"]) if i % 5 == 0]
    for sealed in (False, True):  # from the chunk results, then from the index kept
        if sealed:
            reject_report.seal(space_db, small.rejects_dir, job_id)
            space_db[job_records.CHUNKS].delete_many({"job_id": job_id})
        index = asyncio.run(_index(space_db, small, job_id))
        assert index == reject_report.ReportIndex([(0, 0)], first["lines"]), sealed


async def _index(db: Any, settings: Settings, job_id: str) -> reject_report.ReportIndex | None:
    client: AsyncMongoClient[Any] = AsyncMongoClient(settings.mongo_url.get_secret_value())
    try:
        return await reject_report.chunk_offsets(client[db.name], settings.rejects_dir, job_id)
    finally:
        await client.close()


def test_a_file_that_could_still_pass_is_never_stopped_early(
    space_db: Any, small: Settings
) -> None:
    """Its bad rows all come first: over the limit on the chunks read so far, within it
    for the whole file. Only proof stops a file, never a guess."""
    bad = "".join(f"bad line {i}\n" for i in range(100))
    good = "".join(f"id{i:06d},{i}.5,{DATE}\n" for i in range(20_000))
    chunks = start(space_db, small, bad + good, "burst")
    outcomes = [job_steps.load(space_db, small, "burst", *chunk) for chunk in chunks]
    assert outcomes[-1] == "last" and "ended" not in outcomes


def test_the_reject_report_lists_at_most_its_bound_and_counts_every_reject(
    space_db: Any, small: Settings
) -> None:
    bounded = small.model_copy(update={"reject_report_max_lines": 100, "reject_ratio": 1.0})
    lines = []
    for i in range(9000):
        lines.append(f"id{i:06d},{i}.5,{DATE}")
        lines.append(f"id{i:06d},-{i}.5,{DATE}" if i % 2 else f"bad {i}")
    chunks = start(space_db, bounded, "".join(f"{x}\n" for x in lines), "report")
    assert len(chunks) > 10
    for chunk in chunks:
        job_steps.load(space_db, bounded, "report", *chunk)
    listed = sum(
        len(path.read_text().splitlines()) for path in bounded.rejects_dir.glob("report.*.csv")
    )
    assert 0 < listed <= 100 + len(chunks)
    by_reason = job_records.rejects_by_reason(space_db, "report")
    assert sum(r["rows"] for r in by_reason) == 9000
    assert {r["reason"] for r in by_reason} == {
        "price '…' is negative",
        "expected N fields (id,price,expiration_date), found N",
    }
