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
from shared.settings import Settings, get_settings
from tests.helpers import StateReset, wait_for

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


@pytest.fixture(scope="session")
def reset_state() -> StateReset:
    """Empties the session's store, cache and volume (tests/helpers.py: StateReset)."""
    return StateReset()


@pytest.fixture
def clean_state(
    reset_state: StateReset, mongo_db: Any, redis_client: redis.Redis, settings: Settings
) -> None:
    """Every test starts from nothing."""
    reset_state(mongo_db, redis_client, settings)


@pytest.fixture(scope="session")
def logs_dir() -> Path:
    """Where the services started for the tests write their output (kept when a test fails)."""
    return _LOGS


@pytest.fixture(scope="session")
def test_env() -> dict[str, str]:
    """The settings every process of the session runs with (in its environment)."""
    return TEST_ENV


@pytest.fixture(scope="session")
def worker(services: None, settings: Settings, reset_state: StateReset) -> Iterator[Service]:
    """Two real Celery worker processes on the real Redis broker."""
    name = f"test-{uuid.uuid4().hex[:6]}"
    svc = Service("worker", worker_command(2, name), log_path=_LOGS / "worker.log")
    svc.start()
    wait_for(lambda: "ready." in (svc.log_path.read_text() if svc.log_path.exists() else ""), 60)
    reset_state.worker_node = f"{name}@{socket.gethostname()}"
    yield svc
    reset_state.worker_node = None
    svc.stop()


@pytest.fixture(scope="session")
def api_url(services: None, settings: Settings) -> Iterator[str]:
    """The API served by uvicorn on a real port."""
    port = free_port()
    svc = Service("api", api_command("127.0.0.1", port), port=port, log_path=_LOGS / "api.log")
    svc.start().wait_ready(60)
    yield f"http://127.0.0.1:{port}"
    svc.stop()
