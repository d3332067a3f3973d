"""Real services for the tests: a MongoDB-compatible server (or MONGO_URL), a private
redis-server, Celery worker processes and the API, each started by a session fixture and
stopped in its teardown.

The test settings go into the environment (``pytest_configure``) before anything reads them,
so in-process code and the child processes see the same configuration. Importing this
module changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis

from devstack.services import (
    DEV_STORE_ENV,
    Service,
    api_command,
    free_port,
    mongo_command,
    redis_command,
    worker_command,
)
from shared.settings import Settings, get_settings
from tests.helpers import StateReset, wait_for


@dataclass(frozen=True)
class Harness:
    """What the session runs with: its temporary directory, the ports of its own store and
    Redis, an external store's URL (MONGO_URL given) and the settings as environment."""

    tmp: Path
    mongo_port: int
    redis_port: int
    external_mongo: str | None
    env: dict[str, str]

    @property
    def logs(self) -> Path:
        return self.tmp / "logs"


HARNESS = pytest.StashKey[Harness]()
_ENV_PATCH = pytest.StashKey[pytest.MonkeyPatch]()


def _test_env(tmp: Path, mongo_url: str, redis_port: int) -> dict[str, str]:
    return {
        "MONGO_URL": mongo_url,
        "MONGO_DB": f"test_{uuid.uuid4().hex[:8]}",
        "MONGO_TIMEOUT_MS": "3000",
        # Tests of other behaviour must not fail on a slow shared machine: a generous lookup
        # deadline (the deadline tests set their own).
        "LOOKUP_TIMEOUT_MS": "2000",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "BROKER_URL": f"redis://127.0.0.1:{redis_port}/1",
        "DATA_DIR": str(tmp / "shared"),
        "CHUNK_SIZE_BYTES": str(256 * 1024),
        "INSERT_BATCH_ROWS": "1000",
        "TASK_MAX_RETRIES": "2",
        "TASK_RETRY_BACKOFF_S": "0.5",
        "DROP_GRACE_S": "1",
        "CONFIG_FILE": str(tmp / "no-config.json"),
        "INBOX_SETTLE_SECONDS": "0.5",
        # Short, so that the API's own header timeout (api/http_protocol.py) is seen in seconds.
        "HTTP_HEADER_TIMEOUT_S": "3",
        # ... and its cut of a trickling upload (api/upload_stream.py: UploadPace).
        "UPLOAD_RATE_WINDOW_S": "2",
        "LOG_LEVEL": "INFO",
    }


def pytest_configure(config: pytest.Config) -> None:
    """The test settings go into the environment in this hook, not in a fixture: modules
    read them when imported (``worker.celery_app``, ``worker.tasks`` and ``worker.inbox``
    keep ``get_settings()`` at module level), and test modules import those during
    collection, before any fixture runs. This module and ``tests.helpers`` must therefore
    not import them. Undone in ``pytest_unconfigure``."""
    external_mongo = os.environ.get("MONGO_URL") or None
    mongo_port, redis_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="promotions-tests-"))
    env = _test_env(tmp, external_mongo or f"mongodb://127.0.0.1:{mongo_port}", redis_port)
    if not external_mongo:
        env.update(DEV_STORE_ENV)
    patch = pytest.MonkeyPatch()
    for name, value in env.items():
        patch.setenv(name, value)
    get_settings.cache_clear()
    config.stash[_ENV_PATCH] = patch
    # One line per HTTP request at INFO drowns a failure's own output (CI shows the tail).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config.stash[HARNESS] = Harness(tmp, mongo_port, redis_port, external_mongo, env)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The session's services have stopped (their fixtures are torn down before this): the
    temporary directory goes when every test passed, else its logs stay to be read."""
    harness = session.config.stash[HARNESS]
    if exitstatus == 0:
        shutil.rmtree(harness.tmp, ignore_errors=True)
    else:
        print(f"\nservice logs kept in {harness.logs}")


def pytest_unconfigure(config: pytest.Config) -> None:
    patch = config.stash.get(_ENV_PATCH, None)
    if patch is not None:
        patch.undo()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def harness(pytestconfig: pytest.Config) -> Harness:
    return pytestconfig.stash[HARNESS]


@pytest.fixture(scope="session")
def logs_dir(harness: Harness) -> Path:
    """Where the services started for the tests write their output (kept when a test fails)."""
    return harness.logs


@pytest.fixture(scope="session")
def test_env(harness: Harness) -> dict[str, str]:
    """The settings every process of the session runs with (in its environment)."""
    return harness.env


@pytest.fixture(scope="session")
def services(harness: Harness) -> Iterator[None]:
    """MongoDB-compatible server (unless MONGO_URL is given) and a private redis-server,
    stopped (in reverse order) when the session ends."""
    with contextlib.ExitStack() as started:
        if harness.external_mongo is None:
            mongo = Service(
                "mongo",
                # A replica set, as deployments are: the driver's retryable writes and
                # sessions are exercised (`make run` and the benches run it standalone).
                mongo_command(harness.mongo_port, ":memory:", replica_set=True),
                port=harness.mongo_port,
                log_path=harness.logs / "mongo.log",
            )
            started.callback(mongo.stop)
            mongo.start().wait_ready(60)
        (harness.tmp / "redis").mkdir(exist_ok=True)
        redis_svc = Service(
            "redis",
            redis_command(harness.redis_port, str(harness.tmp / "redis")),
            port=harness.redis_port,
            log_path=harness.logs / "redis.log",
        )
        started.callback(redis_svc.stop)
        redis_svc.start().wait_ready(20)
        yield


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
def worker(
    services: None, settings: Settings, reset_state: StateReset, logs_dir: Path
) -> Iterator[Service]:
    """Two real Celery worker processes on the real Redis broker."""
    name = f"test-{uuid.uuid4().hex[:6]}"
    log = logs_dir / "worker.log"
    svc = Service("worker", worker_command(2, name), log_path=log)
    svc.start()
    try:
        wait_for(lambda: "ready." in (log.read_text() if log.exists() else ""), 60)
        reset_state.worker_node = f"{name}@{socket.gethostname()}"
        yield svc
    finally:
        reset_state.worker_node = None
        svc.stop()


@pytest.fixture(scope="session")
def api_url(services: None, settings: Settings, logs_dir: Path) -> Iterator[str]:
    """The API served by uvicorn on a real port."""
    port = free_port()
    svc = Service("api", api_command("127.0.0.1", port), port=port, log_path=logs_dir / "api.log")
    try:
        svc.start().wait_ready(60)
        yield f"http://127.0.0.1:{port}"
    finally:
        svc.stop()
