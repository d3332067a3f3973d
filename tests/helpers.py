"""Small helpers shared by integration and e2e tests (no mocks: they write real data)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from shared import datasets, lifecycle
from shared.promotion_rows import ChunkStats, parse_chunk
from worker.chunk_writer import write_batch


def load_dataset(db: Any, version: int, lines: list[str], job_id: str = "fixture") -> bool:
    """Load rows straight into a version collection and try to make it live."""
    lifecycle.register_version(db, version, job_id)
    stats = ChunkStats()
    coll = db[datasets.collection_name(version)]
    for batch in parse_chunk("".join(f"{line}\n" for line in lines).encode(), 0, 1000, stats):
        write_batch(coll, list(batch.values()))
    rows = coll.estimated_document_count()
    assert lifecycle.mark_ready(db, version, rows)
    return lifecycle.activate_if_newest(db, version, rows, job_id) in ("switched", "already")


def expected_rows(path: Path) -> dict[str, tuple[str, float, str]]:
    """What the dataset must hold for a valid file: last row per id wins."""
    out: dict[str, tuple[str, float, str]] = {}
    for line in path.read_text().splitlines():
        row_id, price, date = line.split(",")
        out[row_id.lower()] = (row_id, float(price), date)
    return out


def wait_job(client: Any, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish in {timeout}s: {job}")
