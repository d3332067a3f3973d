"""Real services for the tests: a MongoDB-compatible server (or MONGO_URL), a private
redis-server, Celery worker processes and the API, each started here and stopped after.

The test settings go into the environment before anything reads them, so in-process code
and the child processes see the same configuration.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis

from devstack.services import (
    Service,
    api_command,
    free_port,
    mongo_command,
    redis_command,
    worker_command,
)
from shared import datasets
from shared.settings import Settings, get_settings

_TMP = Path(tempfile.mkdtemp(prefix="promotions-tests-"))
_LOGS = _TMP / "logs"


_EXTERNAL_MONGO = os.environ.get("MONGO_URL")
_MONGO_PORT = free_port()
_REDIS_PORT = free_port()

TEST_ENV = {
    "MONGO_URL": _EXTERNAL_MONGO or f"mongodb://127.0.0.1:{_MONGO_PORT}",
    "MONGO_DB": f"test_{uuid.uuid4().hex[:8]}",
    "MONGO_TIMEOUT_MS": "3000",
    # Tests of other behaviour must not fail on a slow shared machine: a generous lookup
    # deadline (the deadline tests set their own).
    "LOOKUP_TIMEOUT_MS": "2000",
    "REDIS_URL": f"redis://127.0.0.1:{_REDIS_PORT}/0",
    "BROKER_URL": f"redis://127.0.0.1:{_REDIS_PORT}/1",
    "DATA_DIR": str(_TMP / "shared"),
    "CHUNK_SIZE_BYTES": str(256 * 1024),
    "INSERT_BATCH_ROWS": "1000",
    "TASK_MAX_RETRIES": "2",
    "TASK_RETRY_BACKOFF_S": "0.5",
    "DROP_GRACE_S": "1",
    "CONFIG_FILE": str(_TMP / "no-config.json"),
    "INBOX_SETTLE_SECONDS": "0.5",
    # Short, so that the API's own header timeout (api/http_protocol.py) is seen in seconds.
    "HTTP_HEADER_TIMEOUT_S": "3",
    # ... and its cut of a trickling upload (api/upload_stream.py: UploadPace).
    "UPLOAD_RATE_WINDOW_S": "2",
    "LOG_LEVEL": "INFO",
}
os.environ.update(TEST_ENV)
get_settings.cache_clear()
_started: list[Service] = []
_session_worker: list[str] = []  # the node name of the session's worker, once started


@pytest.fixture(scope="session")
def services() -> None:
    """MongoDB-compatible server (unless MONGO_URL is given) and a private redis-server."""
    if not _EXTERNAL_MONGO:
        mongo = Service(
            "mongo",
            mongo_command(_MONGO_PORT, ":memory:"),
            port=_MONGO_PORT,
            log_path=_LOGS / "mongo.log",
        )
        _started.append(mongo.start().wait_ready(60))
    (_TMP / "redis").mkdir(exist_ok=True)
    redis_svc = Service(
        "redis",
        redis_command(_REDIS_PORT, str(_TMP / "redis")),
        port=_REDIS_PORT,
        log_path=_LOGS / "redis.log",
    )
    _started.append(redis_svc.start().wait_ready(20))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for svc in reversed(_started):
        svc.stop()
    if exitstatus == 0:
        shutil.rmtree(_TMP, ignore_errors=True)
    else:
        print(f"\nservice logs kept in {_LOGS}")


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def mongo_db(services: None, settings: Settings) -> Iterator[pymongo.database.Database[Any]]:
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(
        settings.mongo_url.get_secret_value(), serverSelectionTimeoutMS=5000, tz_aware=True
    )
    yield client[settings.mongo_db]
    client.drop_database(settings.mongo_db)
    client.close()


@pytest.fixture(scope="session")
def redis_client(services: None, settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    yield client
    client.close()


def reset_state(mongo_db: Any, redis_client: redis.Redis, settings: Settings) -> None:
    """No datasets, no jobs, an empty cache, no uploads and no reject reports, and no task
    of an earlier test left to run. The version counter stays, as in production."""
    quiet_worker()
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


def quiet_worker() -> None:
    """Tasks an earlier test left behind must not act on this test's state: a clean-up
    runs DROP_GRACE_S + 5 s after its job ended and applies the keep policy to whatever
    versions exist then, so it would retire or bar the versions a later test is building
    by hand. Queued tasks are purged, clean-ups the worker holds are revoked, one already
    running is let finish."""
    if not _session_worker:
        return
    from shared.task_names import CLEANUP_DATASETS
    from worker.celery_app import app

    inspector = app.control.inspect(destination=_session_worker, timeout=10, limit=1)

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


@pytest.fixture
def clean_state(mongo_db: Any, redis_client: redis.Redis, settings: Settings) -> None:
    """Every test starts from nothing."""
    reset_state(mongo_db, redis_client, settings)


def wait_for(predicate: Any, timeout: float = 60.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


@pytest.fixture(scope="session")
def worker(services: None, settings: Settings) -> Iterator[Service]:
    """Two real Celery worker processes on the real Redis broker."""
    name = f"test-{uuid.uuid4().hex[:6]}"
    svc = Service("worker", worker_command(2, name), log_path=_LOGS / "worker.log")
    svc.start()
    wait_for(lambda: "ready." in (svc.log_path.read_text() if svc.log_path.exists() else ""), 60)
    _session_worker.append(f"{name}@{socket.gethostname()}")
    yield svc
    _session_worker.clear()
    svc.stop()


@pytest.fixture(scope="session")
def api_url(services: None, settings: Settings) -> Iterator[str]:
    """The API served by uvicorn on a real port."""
    port = free_port()
    svc = Service("api", api_command("127.0.0.1", port), port=port, log_path=_LOGS / "api.log")
    svc.start().wait_ready(60)
    yield f"http://127.0.0.1:{port}"
    svc.stop()
