"""Small helpers shared by integration and e2e tests (no mocks: they write real data)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from shared import datasets, lifecycle
from shared.bucket_layout import bucket_count
from shared.promotion_rows import ChunkStats, parse_chunk_rows
from worker.bucket_writer import write_rows


def write_version(db: Any, version: int, lines: list[str], job_id: str = "fixture") -> int:
    """Write rows straight into a new version (bucketed, as a job would); returns its
    distinct rows. The version stays building."""
    data = "".join(f"{line}\n" for line in lines).encode()
    keys, elements = parse_chunk_rows(data, 0, ChunkStats())
    buckets = bucket_count(len(data), len(data) / max(1, len(lines)), 100)
    lifecycle.register_version(db, version, job_id, buckets=buckets)
    coll = db[datasets.collection_name(version)]
    return write_rows(coll, keys, elements, buckets, 5000).rows


def load_dataset(db: Any, version: int, lines: list[str], job_id: str = "fixture") -> bool:
    """Load rows straight into a version collection and try to make it live."""
    rows = write_version(db, version, lines, job_id)
    assert lifecycle.mark_ready(db, version, rows)
    return lifecycle.activate_if_newest(db, version, rows, job_id) in ("switched", "already")


def stored_rows(db: Any, version: int) -> dict[str, tuple[str, float, str]]:
    """Everything a version holds, by key: (id as written, price, expiration_date)."""
    buckets = datasets.read_buckets_sync(db, version)
    coll = db[datasets.collection_name(version)]
    if buckets is None:
        return {
            d["_id"]: (d.get("id", d["_id"]), d["price"], d["expiration_date"])
            for d in coll.find({}, {"o": 0})
        }
    out: dict[str, tuple[str, float, str]] = {}
    for doc in coll.find():
        for key, row in doc["r"].items():
            assert datasets.bucket_layout.bucket_of(key, buckets) == doc["_id"], key
            out[key] = (row.get("i", key), row["p"], row["e"])
    return out


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
        if job["status"] in lifecycle.FINISHED:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish in {timeout}s: {job}")
