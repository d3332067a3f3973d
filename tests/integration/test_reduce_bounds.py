"""A reduce task holds at most about ROWS_PER_PARTITION rows whatever the file's shape.

Each file is loaded through the job steps (plan, every chunk, the layout, every partition,
the finalizer) against the dev store, with small settings; the rows each reduce holds in
memory are counted where they are held: the in-memory merge's input and each sorted run of
the external merge. The shapes are the ones that broke the plan's guess from the first
64 KiB: long valid lines first, one long junk line first, one id repeated all through the
file; and a file whose rows all fall in one slice, reduced by the external merge. A plain
file is the control.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.dataset import datasets, job_records, lifecycle
from shared.settings import Settings
from tests.helpers import stored_rows
from worker import external_merge, job_steps
from worker.finalizing import finalize_steps

BOUND = 1000  # ROWS_PER_PARTITION: its smallest allowed value
ROWS = 20_000
DATE = "2018-08-04 05:32:31 +0200 CEST"


def _plain(n: int, start: int = 0) -> list[str]:
    return [f"id{i:07d},{i}.5,{DATE}" for i in range(start, start + n)]


SHAPES = {
    "plain": _plain(ROWS),
    # 64 long valid lines first: the first 64 KiB held 12x fewer rows than the rest
    "long lines first": [f"L{i:063d},{'0' * 900}1.5,{DATE}" for i in range(64)] + _plain(ROWS),
    # one 70 KB junk line first: the first 64 KiB held one (rejected) row
    "junk line first": ["x" * 70_000, *_plain(ROWS)],
    # one id all through the file: every row in one partition
    "one id repeated": [f"same,{i}.5,{DATE}" for i in range(ROWS)] + _plain(50),
    # one slice holding every row (SHUFFLE_SLICES=1): the external merge
    "one slice": _plain(ROWS),
}


@pytest.fixture
def bounds_db(mongo_db: Any) -> Any:
    """A database of its own: the session's Celery worker must not act on these jobs."""
    db = mongo_db.client[f"{mongo_db.name}_bounds"]
    yield db
    mongo_db.client.drop_database(db.name)


def load_file(db: Any, settings: Settings, lines: list[str], job_id: str) -> dict[str, Any]:
    version = datasets.allocate_version_sync(db)
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    (settings.uploads_dir / f"{job_id}.csv").write_text("".join(f"{line}\n" for line in lines))
    db[lifecycle.JOBS].insert_one(
        job_records.new_job(job_id, version, f"{job_id}.csv", 10, "upload")
    )
    chunks: list[tuple[int, int, int]] = []
    assert not job_steps.plan(db, settings, job_id, lambda *c: chunks.append(c))
    partitions: list[int] = []
    for chunk in chunks:
        if job_steps.load(db, settings, job_id, *chunk) == "last":
            assert not job_steps.after_loading(db, settings, job_id, partitions.append)
    for partition in partitions:
        job_steps.write_partition(db, settings, job_id, partition)
    for _ in finalize_steps(db, settings, job_id, lambda v: None):
        pass
    job = db[lifecycle.JOBS].find_one({"_id": job_id})
    assert job["status"] == lifecycle.SUCCEEDED, job.get("error")
    return dict(job)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_reduce_holds_at_most_about_rows_per_partition_rows_whatever_the_file(
    bounds_db: Any, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    small = settings.model_copy(
        update={
            "data_dir": tmp_path,
            "rows_per_partition": BOUND,
            "chunk_size_bytes": 64 * 1024,
            "min_partitions": 1,
            "shuffle_slices": 1 if shape == "one slice" else 64,
            "insert_batch_rows": 500,
        }
    )
    held: list[int] = []

    def counted(real: Any) -> Any:
        def wrapper(rows: Any, *args: Any, **kwargs: Any) -> Any:
            held.append(len(rows.keys))
            return real(rows, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(job_steps, "merge", counted(job_steps.merge))
    monkeypatch.setattr(
        external_merge, "_spill", counted(getattr(external_merge, "_spill", None)), raising=False
    )
    lines = SHAPES[shape]
    job = load_file(bounds_db, small, lines, f"bounds{abs(hash(shape)) % 10**6:06d}")
    chunk_rows = max(c["rows_valid"] for c in bounds_db[job_records.CHUNKS].find({}))
    assert held, "no reduce ran"
    if shape == "one slice":
        # sorted runs of at most the bound and one chunk each
        assert len(held) >= ROWS // (BOUND + chunk_rows)
    # At most the bound, plus the rows of one chunk read on top of it before a spill.
    assert max(held) <= BOUND + chunk_rows, (shape, max(held), sorted(held)[-5:])
    valid = [line for line in lines if not line.startswith("x")]
    assert job["rows_loaded"] == len(valid)
    want = {}
    for line in valid:
        rid, price, date = line.split(",")
        want[rid.lower()] = (rid, float(price), date)
    assert job["duplicates"] == len(valid) - len(want)
    assert stored_rows(bounds_db, job["version"]) == want
