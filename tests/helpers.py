"""Small helpers shared by integration and e2e tests (no mocks: they write real data)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from shared.dataset import datasets, lifecycle
from shared.fileformat.bucket_layout import bucket_count
from shared.fileformat.promotion_rows import ChunkStats, parse_chunk_rows
from shared.settings import Settings
from worker.bucket_writer import write_rows


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1) -> Any:
    """The predicate's first truthy value, polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


def quiet_worker(node: str) -> None:
    """Tasks an earlier test left behind must not act on this test's state: a clean-up
    runs DROP_GRACE_S + 5 s after its job ended and applies the keep policy to whatever
    versions exist then, so it would retire or bar the versions a later test is building
    by hand. Queued tasks are purged, clean-ups the worker ``node`` holds are revoked, one
    already running is let finish."""
    from shared.infra.task_names import CLEANUP_DATASETS
    from worker.celery_app import app

    inspector = app.control.inspect(destination=[node], timeout=10, limit=1)

    def cleanups(tasks: list[dict[str, Any]]) -> list[str]:
        return [task["id"] for task in tasks if task["name"] == CLEANUP_DATASETS]

    def held(found: dict[str, list[dict[str, Any]]] | None) -> list[dict[str, Any]]:
        return [task for tasks in (found or {}).values() for task in tasks]

    app.control.purge()
    waiting = cleanups([entry["request"] for entry in held(inspector.scheduled())])
    waiting += cleanups(held(inspector.reserved()))
    if waiting:
        app.control.revoke(waiting)
    wait_for(lambda: not cleanups(held(inspector.active())), 30)


class StateReset:
    """No datasets, no jobs, an empty cache, no uploads and no reject reports, and no task
    of an earlier test left to run. The version counter stays, as in production.

    One per session (the ``reset_state`` fixture): the ``worker`` fixture sets
    ``worker_node`` while the session's worker runs, so that it is quieted first."""

    def __init__(self) -> None:
        self.worker_node: str | None = None

    def __call__(self, mongo_db: Any, redis_client: redis.Redis, settings: Settings) -> None:
        if self.worker_node is not None:
            quiet_worker(self.worker_node)
        for name in mongo_db.list_collection_names():
            if name == datasets.META_COLLECTION:
                mongo_db[name].delete_many({"_id": {"$ne": datasets.COUNTER_ID}})
            else:
                mongo_db.drop_collection(name)
        redis_client.flushdb()
        shutil.rmtree(settings.uploads_dir, ignore_errors=True)
        shutil.rmtree(settings.inbox_dir, ignore_errors=True)
        shutil.rmtree(settings.rejects_dir, ignore_errors=True)
        shutil.rmtree(settings.runs_dir, ignore_errors=True)
        shutil.rmtree(settings.quarantine_dir, ignore_errors=True)
        settings.uploads_dir.mkdir(parents=True, exist_ok=True)


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
            found = datasets.bucket_layout.row_of(key, row)
            out[key] = (found["id"], found["price"], found["expiration_date"])
    return out


def expected_rows(path: Path) -> dict[str, tuple[str, float, str]]:
    """What the dataset must hold for a valid file: last row per id wins."""
    out: dict[str, tuple[str, float, str]] = {}
    for line in path.read_text().splitlines():
        row_id, price, date = line.split(",")
        out[row_id.lower()] = (row_id, float(price), date)
    return out


# An API process learns of a switch by the pointer channel, or by its poll at the latest
# (POINTER_POLL_SECONDS <= 1 s): a lookup right after the job says "succeeded" may still be
# answered by the version before (docs/lifecycle.md). Waited for, with room on a busy machine.
SERVED_WITHIN_S = 10.0


def wait_job(
    client: Any, job_id: str, timeout: float = 120.0, served: bool = True
) -> dict[str, Any]:
    """Until the job has finished and, if it made its version live (``served``), the API
    process behind ``client`` serves that version (or a newer one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in lifecycle.FINISHED:
            if served and job["status"] == lifecycle.SUCCEEDED and not job.get("superseded"):
                wait_served(client, int(job["dataset_version"]))
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish in {timeout}s: {job}")


def wait_served(client: Any, version: int) -> None:
    seen: list[Any] = []

    def serves() -> bool:
        r = client.get("/datasets/active")
        seen[:] = [r.status_code, r.text[:200]]
        return r.status_code == 200 and int(r.json()["version"]) >= version

    try:
        wait_for(serves, SERVED_WITHIN_S)
    except TimeoutError:
        raise AssertionError(
            f"version {version} is live but the API did not serve it within "
            f"{SERVED_WITHIN_S:.0f} s; /datasets/active said {seen}"
        ) from None
