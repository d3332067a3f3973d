"""Start the services a benchmark needs with the same commands the tests use.

A private redis-server and ``secantusd-py`` on free ports (or the server at ``MONGO_URL``,
with a private database), plus optionally the Celery worker and the API. Everything started
here is stopped here, by process group; nothing else on the machine is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pymongo

from devstack.services import (
    DEV_STORE_ENV,
    Service,
    api_command,
    free_port,
    mongo_command,
    redis_command,
    worker_command,
)
from shared.settings import get_settings


@dataclass
class Stack:
    env: dict[str, str]
    tmp: Path
    api_url: str | None = None
    api: Service | None = None
    workers: Service | None = None
    started: list[Service] = field(default_factory=list)

    @property
    def mongo_url(self) -> str:
        return self.env["MONGO_URL"]

    @property
    def redis_url(self) -> str:
        return self.env["REDIS_URL"]

    def mongo_db(self) -> pymongo.database.Database:  # type: ignore[type-arg]
        client: pymongo.MongoClient = pymongo.MongoClient(self.mongo_url, tz_aware=True)  # type: ignore[type-arg]
        return client[self.env["MONGO_DB"]]


def _wait_for_log(svc: Service, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if svc.log_path and svc.log_path.exists() and text in svc.log_path.read_text():
            return
        if not svc.running:
            raise RuntimeError(f"{svc.name} exited; see {svc.log_path}")
        time.sleep(0.1)
    raise TimeoutError(f"{svc.name} not ready in {timeout}s; see {svc.log_path}")


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def stack(
    *, api: bool = False, workers: int = 0, extra_env: dict[str, str] | None = None
) -> Iterator[Stack]:
    # A bench stopped with SIGTERM (kill, timeout) unwinds like ^C, so its services stop
    # with it instead of running on (and loading the machine) after it.
    signal.signal(signal.SIGTERM, _exit_on_term)
    tmp = Path(tempfile.mkdtemp(prefix="promotions-bench-"))
    logs = tmp / "logs"
    external = os.environ.get("MONGO_URL")
    mongo_port, redis_port = free_port(), free_port()
    env = {
        "MONGO_URL": external or f"mongodb://127.0.0.1:{mongo_port}",
        "MONGO_DB": f"bench_{uuid.uuid4().hex[:8]}",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "BROKER_URL": f"redis://127.0.0.1:{redis_port}/1",
        "DATA_DIR": str(tmp / "shared"),
        "CONFIG_FILE": str(tmp / "no-config.json"),
        "VERSIONS_TO_KEEP": "1000",  # no background drops while other runs are measured
        "LOG_LEVEL": "WARNING",
        **({} if external else DEV_STORE_ENV),
        **(extra_env or {}),
    }
    # In-process code (settings) sees the same configuration while the stack runs; the
    # environment is put back after, or a second stack in the same process would take this
    # one's MONGO_URL for an external store.
    saved = dict(os.environ)
    os.environ.update(env)
    st = Stack(env=env, tmp=tmp)
    try:
        if not external:
            (tmp / "mongo").mkdir()
            mongo = Service(
                "mongo",
                mongo_command(
                    mongo_port,
                    str(tmp / "mongo"),
                    cache=get_settings().devstack_store_cache,
                    switch_interval_ms=get_settings().devstack_store_switch_interval_ms,
                ),
                port=mongo_port,
                log_path=logs / "mongo.log",
            )
            st.started.append(mongo.start().wait_ready(60))
        (tmp / "redis").mkdir()
        rds = Service(
            "redis",
            redis_command(redis_port, str(tmp / "redis")),
            port=redis_port,
            log_path=logs / "redis.log",
        )
        st.started.append(rds.start().wait_ready(20))
        if workers:
            env_w = {**env, "LOG_LEVEL": "INFO"}
            st.workers = Service(
                "worker",
                worker_command(workers, f"bench-{uuid.uuid4().hex[:6]}"),
                env=env_w,
                log_path=logs / "worker.log",
            )
            st.started.append(st.workers.start())
            _wait_for_log(st.workers, "ready.", 90)
        if api:
            port = free_port()
            st.api = Service(
                "api", api_command("127.0.0.1", port), env=env, port=port, log_path=logs / "api.log"
            )
            st.started.append(st.api.start().wait_ready(60))
            st.api_url = f"http://127.0.0.1:{port}"
        yield st
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for svc in reversed(st.started):
            svc.stop()
        if external:
            with contextlib.suppress(Exception):
                pymongo.MongoClient(env["MONGO_URL"]).drop_database(env["MONGO_DB"])
        # The logs stay to be read; the store and the shared volume go (a 100M-row run
        # leaves ~30 GB otherwise).
        for path in tmp.iterdir():
            if path.is_dir() and path != logs:
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_file():
                path.unlink()
        print(f"service logs in {logs}")
