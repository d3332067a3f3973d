"""Faults with real processes: killed workers, concurrent uploads, a switch under load, an
API killed mid-upload, the cache going away and coming back, the watchdog."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pymongo
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.main import create_app
from cli.generate import generate
from devstack.services import Service, api_command, free_port, redis_command
from shared.dataset import datasets, job_records, lifecycle
from shared.infra.timeutil import now
from shared.readpath.cache import cache_key
from shared.settings import Settings
from tests.helpers import expected_rows, load_dataset, stored_rows, wait_for, wait_job
from worker import upkeep

pytestmark = [pytest.mark.usefixtures("worker", "clean_state"), pytest.mark.slow]


def _post_file(http: httpx.Client | TestClient, path: Path) -> str:
    with path.open("rb") as f:
        r = http.post("/add-promotions/", files={"file": (path.name, f, "text/csv")})
    assert r.status_code == 202, r.text
    job_id: str = r.json()["job_id"]
    return job_id


def _dataset(mongo_db: Any, version: int) -> dict[str, tuple[str, float, str]]:
    return stored_rows(mongo_db, version)


@pytest.fixture
def http(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=30) as client:
        yield client


def test_worker_process_killed_mid_chunk_loses_and_duplicates_nothing(
    worker: Service, http: httpx.Client, mongo_db: Any, tmp_path: Path
) -> None:
    path = tmp_path / "big.csv"
    generate(60_000, path, seed=31, duplicate_ratio=0.05)
    job_id = _post_file(http, path)
    wait_for(lambda: (http.get(f"/jobs/{job_id}").json()["chunks_done"] or 0) >= 2, 60, 0.05)
    assert worker.proc is not None
    children = psutil.Process(worker.proc.pid).children()
    assert children, "the worker has no pool processes"
    victim = children[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    job = wait_job(http, job_id, timeout=180)
    assert job["status"] == "succeeded", job
    want = expected_rows(path)
    assert job["rows_loaded"] == 60_000 and job["rows_rejected"] == 0
    assert job["duplicates"] == 60_000 - len(want)
    assert job["chunks_done"] == job["chunks_total"]
    assert _dataset(mongo_db, job["dataset_version"]) == want
    assert worker.log_path is not None
    assert "signal 9" in worker.log_path.read_text()  # the kill did land on a pool process


@pytest.mark.parametrize("uploads", [2, 5])
def test_concurrent_uploads_the_newest_submitted_wins(
    http: httpx.Client, mongo_db: Any, tmp_path: Path, uploads: int
) -> None:
    paths = []
    for i in range(uploads):
        paths.append(tmp_path / f"f{i}.csv")
        generate(2_000 + 500 * i, paths[-1], seed=40 + i)
    with ThreadPoolExecutor(uploads) as pool:
        job_ids = list(pool.map(lambda p: _post_file(http, p), paths))
    jobs = [wait_job(http, job_id, timeout=180) for job_id in job_ids]
    # Older uploads either loaded, or stopped early because a newer one was already live.
    for job in jobs:
        assert job["status"] == "succeeded" or (
            job["superseded"] and job["error"].startswith("superseded: a newer upload")
        ), job
    # Submission order is the order versions were handed out, as the uploads started.
    versions = [mongo_db["jobs"].find_one({"_id": j["job_id"]})["version"] for j in jobs]
    newest_index = versions.index(max(versions))
    newest, newest_file = jobs[newest_index], paths[newest_index]
    assert newest["status"] == "succeeded" and not newest["superseded"]
    assert newest["dataset_version"] == max(versions)
    wait_for(lambda: http.get("/datasets/active").json()["version"] == max(versions))
    # The live dataset is exactly the newest submitted file: no mixture, nothing missing.
    assert _dataset(mongo_db, max(versions)) == expected_rows(newest_file)
    # Every other version still kept holds exactly its own file.
    for version, path in zip(versions, paths, strict=True):
        state = datasets.get_version(mongo_db, version)
        if state and state["state"] == lifecycle.READY:
            assert _dataset(mongo_db, version) == expected_rows(path)


def test_lookups_through_a_dataset_switch_are_always_old_or_new(
    http: httpx.Client, tmp_path: Path
) -> None:
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    generate(1_500, old, seed=51)
    generate(6_000, new, seed=52)
    old_rows, new_rows = expected_rows(old), expected_rows(new)
    # Ids in both files, with different values.
    shared_ids = list(old_rows)[:300]
    lines = new.read_text().splitlines()
    for i, key in enumerate(shared_ids):
        _, _, date = old_rows[key]
        lines[i] = f"{key},{1000 + i}.25,{date}"
    new.write_text("\n".join(lines) + "\n")
    new_rows = expected_rows(new)
    assert wait_job(http, _post_file(http, old))["status"] == "succeeded"
    wait_for(lambda: http.get("/datasets/active").json().get("rows") == len(old_rows))

    ids = list(old_rows) + list(new_rows)[300:1500]
    answers: list[tuple[float, str, int, Any]] = []
    errors: list[str] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=str(http.base_url), timeout=10) as c:
            while not stop.is_set():
                key = rng.choice(ids)
                started = time.monotonic()
                try:
                    r = c.get(f"/promotions/{key}")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    continue
                body = r.json() if r.status_code == 200 else None
                answers.append((started, key, r.status_code, body))

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    try:
        job = wait_job(http, _post_file(http, new), timeout=180)
        done_seen = time.monotonic()
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert job["status"] == "succeeded"
    assert not errors

    def value(rows: dict[str, tuple[str, float, str]], key: str) -> Any:
        if key not in rows:
            return None
        row_id, price, date = rows[key]
        return {"id": row_id, "price": price, "expiration_date": date}

    late = 0
    for started, key, status, body in answers:
        assert status in (200, 404), (key, status)
        assert body in (value(old_rows, key), value(new_rows, key)), key
        if started > done_seen + 1.0:  # past the documented propagation bound
            late += 1
            assert body == value(new_rows, key), key
    assert late > 50 and len(answers) > 500


def test_api_killed_mid_upload_leaves_no_file_and_no_job(
    services: None, settings: Settings, mongo_db: Any, logs_dir: Path
) -> None:
    port = free_port()
    log = logs_dir / "api-killed.log"

    def start() -> Service:
        return Service("api-k", api_command("127.0.0.1", port), port=port, log_path=log).start()

    api = start().wait_ready(60)
    sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="p.csv"\r\n\r\n'
        for _ in range(2_000):
            yield b"d018ef0b-dbd9-48f1-ac1a-eb4d90e57118,60.68,2018-08-04 05:32:31 +0200\n" * 1000
            sent.set()
            time.sleep(0.05)

    def upload() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server dies under it
            httpx.post(
                f"http://127.0.0.1:{port}/add-promotions/",
                content=slow_body(),
                headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
                timeout=60,
            )

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        parts = lambda: list(settings.uploads_dir.glob(".upload-*.part"))  # noqa: E731
        wait_for(lambda: sent.is_set() and parts() and parts()[0].stat().st_size > 2_000_000, 30)
        api.signal_group(signal.SIGKILL)
        assert api.proc is not None
        api.proc.wait(10)
        uploader.join(60)
        assert parts(), "the killed API left its partial file (as a real crash would)"
        api = start().wait_ready(60)
        wait_for(lambda: not parts(), 10)
        assert list(settings.uploads_dir.iterdir()) == []
        assert mongo_db["jobs"].count_documents({}) == 0
    finally:
        api.stop()


def test_cache_outage_and_recovery(
    services: None, settings: Settings, mongo_db: Any, tmp_path: Path
) -> None:
    row = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118,60.683466,2018-08-04 05:32:31 +0200 CEST"
    key = row.split(",")[0]
    load_dataset(mongo_db, 1, [row])
    port = free_port()
    (tmp_path / "r").mkdir()
    cache = Service("redis-outage", redis_command(port, str(tmp_path / "r")), port=port)
    cache.start().wait_ready(20)
    cfg = settings.model_copy(update={"redis_url": SecretStr(f"redis://127.0.0.1:{port}/0")})
    try:
        with TestClient(create_app(cfg)) as c:
            counters = c.app.state.services.cache.counters  # type: ignore[attr-defined]
            # The process's own cache is emptied where Redis is to be asked, as it would be
            # in another process.
            local = c.app.state.services.lookups.local  # type: ignore[attr-defined]
            shared = redis.Redis(port=port)
            assert c.get(f"/promotions/{key}").status_code == 200
            wait_for(lambda: shared.get(cache_key(1, key.lower())) is not None, 5)
            local.clear()
            assert c.get(f"/promotions/{key}").status_code == 200
            assert counters.hits == 1
            assert c.get("/readyz").json()["status"] == "ready"

            cache.stop()
            local.clear()
            for _ in range(5):
                assert c.get(f"/promotions/{key}").json()["price"] == 60.683466
            assert c.get("/promotions/absent").status_code == 404
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "degraded"
            assert counters.errors >= 1

            cache.start().wait_ready(20)
            time.sleep(1.2)  # the cache's cool-down after an error
            local.clear()
            assert c.get(f"/promotions/{key}").status_code == 200  # fills the new cache
            wait_for(lambda: shared.get(cache_key(1, key.lower())) is not None, 5)
            assert c.get("/readyz").status_code == 200
            hits = counters.hits
            local.clear()
            assert c.get(f"/promotions/{key}").status_code == 200
            assert counters.hits == hits + 1  # served from Redis again
    finally:
        cache.stop()


def test_watchdog_fails_a_job_nobody_works_on_and_sweeps_its_file(
    settings: Settings, mongo_db: Any
) -> None:
    from worker.tasks import fail_stalled_jobs

    load_dataset(mongo_db, 1, ["a,1,2018-08-04 05:32:31 +0200"])
    long_ago = now() - timedelta(seconds=settings.job_stall_timeout_s + 60)
    lost = job_records.new_job("lost", 2, "lost.csv", 10, "upload")
    lost.update(status=lifecycle.RUNNING, phase="loading", updated_at=long_ago)
    mongo_db[lifecycle.JOBS].insert_one(lost)
    stale_file = settings.uploads_dir / "orphan.csv"
    stale_file.write_text("x")
    os.utime(stale_file, (long_ago.timestamp(), long_ago.timestamp()))
    fresh_file = settings.uploads_dir / "fresh.csv"
    fresh_file.write_text("x")

    assert fail_stalled_jobs() == 1
    job = mongo_db[lifecycle.JOBS].find_one({"_id": "lost"})
    assert job["status"] == "failed" and "made no progress" in job["error"]
    assert datasets.read_active_sync(mongo_db).version == 1  # type: ignore[union-attr]
    assert not stale_file.exists() and fresh_file.exists()

    # A quiet job is left alone while a job that may hold tasks ahead of its own in the
    # queue (created before its last progress) moves: it is only waiting its turn.
    waiting = job_records.new_job("waiting", 3, "w.csv", 10, "upload")
    waiting.update(status=lifecycle.RUNNING, created_at=long_ago, updated_at=long_ago)
    busy = job_records.new_job("busy", 4, "b.csv", 10, "upload")
    busy.update(status=lifecycle.RUNNING, created_at=long_ago - timedelta(seconds=1))
    mongo_db[lifecycle.JOBS].insert_many([waiting, busy])
    assert fail_stalled_jobs() == 0

    # Jobs created after its last progress queue behind its tasks: they do not hide a job
    # whose tasks were lost (back-to-back loads used to keep such a job waiting forever).
    mongo_db[lifecycle.JOBS].update_one(
        {"_id": "busy"}, {"$set": {"created_at": long_ago + timedelta(seconds=1)}}
    )
    assert fail_stalled_jobs() == 1
    assert mongo_db[lifecycle.JOBS].find_one({"_id": "waiting"})["status"] == "failed"
    assert mongo_db[lifecycle.JOBS].find_one({"_id": "busy"})["status"] == "running"


@dataclass
class OwnStack:
    """A store the test stops and starts (its data kept on disk) and a worker of its own on
    a broker database of its own, with a small retry budget (2 retries, 0.5 s backoff) and
    1 s store timeouts, so a task uses up its retries within seconds of the store going."""

    store: Service
    worker: Service
    cfg: Settings
    broker: redis.Redis

    def gave_up_unrecorded(self, step: str) -> int:
        """How often a ``step`` task gave up and could not record it (then went back)."""
        assert self.worker.log_path is not None
        return sum(
            "could not record it" in line and f"during {step}" in line
            for line in self.worker.log_path.read_text(errors="replace").splitlines()
        )

    def broker_idle(self) -> bool:
        """Nothing waiting, nothing taken and unacknowledged (ETA tasks count as taken)."""
        return self.broker.llen("celery") == 0 and self.broker.hlen("unacked") == 0


@contextlib.contextmanager
def own_stack(
    settings: Settings,
    tmp_path: Path,
    logs: Path,
    name: str,
    broker_db: int,
    stall_timeout_s: int,
    fail_points: bool = False,
) -> Iterator[OwnStack]:
    """``fail_points``: the store accepts ``configureFailPoint`` (as mongod with test
    commands enabled), so the test can make it refuse commands while it answers."""
    from devstack.services import mongo_command, worker_command

    mongo_port = free_port()
    test_commands = ["--enable-test-commands"] if fail_points else []
    store = Service(
        f"mongo-{name}",
        [*mongo_command(mongo_port, str(tmp_path / "db")), *test_commands],
        port=mongo_port,
        log_path=logs / f"mongo-{name}.log",
    )
    store.start().wait_ready(60)
    mongo_url = f"mongodb://127.0.0.1:{mongo_port}"
    broker_url = settings.broker_url.get_secret_value().rsplit("/", 1)[0] + f"/{broker_db}"
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    env = {
        "MONGO_URL": mongo_url,
        "BROKER_URL": broker_url,
        "TASK_MAX_RETRIES": "2",
        "TASK_RETRY_BACKOFF_S": "0.5",
        "JOB_STALL_TIMEOUT_S": str(stall_timeout_s),
        "MONGO_TIMEOUT_MS": "1000",
    }
    worker = Service(
        f"worker-{name}", worker_command(2, name), env=env, log_path=logs / f"worker-{name}.log"
    ).start()
    cfg = settings.model_copy(
        update={
            "mongo_url": SecretStr(mongo_url),
            "broker_url": SecretStr(broker_url),
            "mongo_timeout_ms": 1000,
            "job_stall_timeout_s": stall_timeout_s,
        }
    )
    try:
        yield OwnStack(store, worker, cfg, broker)
    finally:
        worker.signal_group(signal.SIGCONT)  # a test that froze it may have failed meanwhile
        worker.stop()
        store.stop()
        broker.close()


def _old_then_new(c: TestClient, tmp_path: Path) -> tuple[dict[str, Any], Path, Path, str]:
    """The old file live; the new one (20k rows, 5 % repeated ids, 6 chunks) loading, with
    at least one chunk done."""
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    generate(500, old, seed=61)
    generate(20_000, new, seed=62, duplicate_ratio=0.05)
    first = wait_job(c, _post_file(c, old), timeout=120)
    assert first["status"] == "succeeded", first
    job_id = _post_file(c, new)
    wait_for(lambda: (c.get(f"/jobs/{job_id}").json()["chunks_done"] or 0) >= 1, 60, 0.05)
    return first, old, new, job_id


def _serves(c: TestClient, version: int, path: Path) -> None:
    """The active dataset is ``version`` and lookups answer the file's values."""
    wait_for(lambda: c.get("/readyz").status_code == 200, 10)
    assert c.get("/datasets/active").json()["version"] == version
    for key, (row_id, price, date) in list(expected_rows(path).items())[::97]:
        assert c.get(f"/promotions/{key}").json() == {
            "id": row_id,
            "price": price,
            "expiration_date": date,
        }


def test_store_down_past_the_retries_the_chunks_go_back_and_the_job_succeeds(
    services: None, settings: Settings, tmp_path: Path, logs_dir: Path
) -> None:
    """Regression (issue #13): a chunk task that used up its retries while the store was down
    could not record the failure and was acknowledged anyway, so nobody ever loaded that
    chunk again and the job stalled until the watchdog failed it. Now the task goes back to
    the broker until a delivery gets through: the job succeeds with exact counts."""
    with (
        own_stack(settings, tmp_path, logs_dir, "outage", broker_db=4, stall_timeout_s=600) as s,
        TestClient(create_app(s.cfg)) as c,
    ):
        first, _, new, job_id = _old_then_new(c, tmp_path)
        s.store.stop()
        # Uploads while the store is down are refused whole.
        with new.open("rb") as f:
            r = c.post("/add-promotions/", files={"file": ("n.csv", f)})
        assert r.status_code == 503 and "store is unavailable" in r.json()["detail"]
        # A loader uses up its retries and cannot record it; its delivery goes back to the
        # broker and gives up again (it has no retries left) until the store answers.
        wait_for(lambda: s.gave_up_unrecorded("load_chunk") >= 2, 90, 0.5)
        s.store.start().wait_ready(60)
        job = wait_job(c, job_id, timeout=90)
        assert job["status"] == "succeeded", job
        want = expected_rows(new)
        assert job["rows_loaded"] == 20_000 and job["rows_rejected"] == 0
        assert job["duplicates"] == 20_000 - len(want)
        assert job["chunks_done"] == job["chunks_total"] > 3
        assert job["dataset_version"] > first["dataset_version"]
        db: Any = pymongo.MongoClient(s.cfg.mongo_url.get_secret_value())[s.cfg.mongo_db]
        assert _dataset(db, job["dataset_version"]) == want
        _serves(c, job["dataset_version"], new)
        wait_for(s.broker_idle, 60, 0.5)  # nothing left bouncing
        assert c.get(f"/jobs/{job_id}").json() == job
        db.client.close()


def test_store_down_past_the_stall_timeout_the_watchdog_ends_the_job_and_redeliveries_stop(
    services: None, settings: Settings, tmp_path: Path, logs_dir: Path
) -> None:
    """A store outage longer than ``JOB_STALL_TIMEOUT_S``: loaders that gave up keep going
    back to the broker; once the watchdog has failed the job, their next delivery finds it
    ended and does nothing. The old dataset serves throughout."""
    with (
        own_stack(settings, tmp_path, logs_dir, "stalled", broker_db=3, stall_timeout_s=4) as s,
        TestClient(create_app(s.cfg)) as c,
    ):
        first, old, _, job_id = _old_then_new(c, tmp_path)
        s.store.stop()
        wait_for(lambda: s.gave_up_unrecorded("load_chunk") >= 2, 90, 0.5)
        # The worker stands still while the store comes back and the watchdog decides, so
        # the decision is not a race with a redelivered chunk that would load and succeed.
        s.worker.signal_group(signal.SIGSTOP)
        try:
            s.store.start().wait_ready(60)
            client: Any = pymongo.MongoClient(s.cfg.mongo_url.get_secret_value(), tz_aware=True)
            db = client[s.cfg.mongo_db]
            wait_for(lambda: job_id in upkeep.watchdog(db, s.cfg, now(), lambda _: None), 30, 1)
        finally:
            s.worker.signal_group(signal.SIGCONT)
        job = c.get(f"/jobs/{job_id}").json()
        assert job["status"] == "failed" and "made no progress" in job["error"], job
        wait_for(s.broker_idle, 60, 0.5)  # every redelivery ran, and stopped
        assert s.gave_up_unrecorded("load_chunk") >= 2
        assert c.get(f"/jobs/{job_id}").json() == job  # and changed nothing
        _serves(c, first["dataset_version"], old)
        db.client.close()


def test_a_failover_outlasting_the_retries_fails_the_job_saying_so(
    services: None, settings: Settings, tmp_path: Path, logs_dir: Path
) -> None:
    """The store answers, but refuses every insert with a transient error (WriteConflict,
    from its ``failCommand`` fail point: a failover that does not end). After the retries
    and one last attempt the job fails with the reason; the failure is recorded, so the
    task is acknowledged and nothing goes round. The old dataset serves."""
    with (
        own_stack(
            settings, tmp_path, logs_dir, "busy", broker_db=5, stall_timeout_s=600, fail_points=True
        ) as s,
        TestClient(create_app(s.cfg)) as c,
    ):
        first, old, _, job_id = _old_then_new(c, tmp_path)
        admin: Any = pymongo.MongoClient(s.cfg.mongo_url.get_secret_value()).admin
        admin.command(
            "configureFailPoint",
            "failCommand",
            mode="alwaysOn",
            data={"failCommands": ["insert"], "errorCode": 112},
        )
        try:
            job = wait_job(c, job_id, timeout=90)
        finally:
            admin.command("configureFailPoint", "failCommand", mode="off")
        assert job["status"] == "failed", job
        assert job["error"].startswith(
            "the store was busy (failover, migration or interruption) during write_partition "
            "and stayed so after 2 retries (error 112"
        ), job["error"]
        wait_for(s.broker_idle, 60, 0.5)
        assert s.gave_up_unrecorded("write_partition") == 0
        assert c.get(f"/jobs/{job_id}").json() == job
        _serves(c, first["dataset_version"], old)
        admin.client.close()
