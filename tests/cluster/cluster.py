"""The stack spread over test hosts, each process started inside its host.

| host  | address      | runs                                                           |
|-------|--------------|----------------------------------------------------------------|
| data  | 10.213.0.10  | the dev store (secantusd), the broker (redis-server), beat     |
| cache | 10.213.0.11  | the lookup cache and pointer channel (redis-server)            |
| api1  | 10.213.0.21  | the API (uvicorn)                                              |
| api2  | 10.213.0.22  | the API (uvicorn)                                              |
| w1    | 10.213.0.31  | a Celery worker, node ``worker@cluster-w1``, 2 processes       |
| w2    | 10.213.0.32  | a Celery worker, node ``worker@cluster-w2``, 2 processes       |
| client| 10.213.0.100 | nothing: the test's requests come from here                    |

Broker and cache are separate instances as in the compose file, so that a host can lose the
cache and keep the store. All hosts share one directory as the shared volume. The processes
get their configuration from the environment only (no config.json, no test settings of the
single-host suite), with the small timeouts of ``CLUSTER_ENV``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pymongo
import redis

from devstack.services import (
    Service,
    api_command,
    beat_command,
    mongo_command,
    redis_command,
    worker_command,
)
from shared.settings import Settings
from tests.cluster.netns import Host, VirtualNetwork, host_command, thread_in_netns
from tests.cluster.task_events import TaskEvents
from tests.helpers import stored_rows

HOSTS = {"data": 10, "cache": 11, "api1": 21, "api2": 22, "w1": 31, "w2": 32, "client": 100}
WORKER_HOSTS = ("w1", "w2")
API_HOSTS = ("api1", "api2")
MONGO_PORT, REDIS_PORT, API_PORT = 27017, 6379, 1321
MONGO_DB = "promotions_cluster"

# Small timeouts, for this test only: a lost host's tasks come back after 15 s (plus the
# sweep), and a job nobody works on for 60 s is failed - long enough for redelivery.
CLUSTER_ENV = {
    "MONGO_DB": MONGO_DB,
    "MONGO_TIMEOUT_MS": "2000",
    "CHUNK_SIZE_BYTES": str(64 * 1024),  # ~870 rows: dozens of chunks per file
    "INSERT_BATCH_ROWS": "500",
    "BROKER_VISIBILITY_TIMEOUT_S": "15",
    "JOB_STALL_TIMEOUT_S": "60",
    "WATCHDOG_PERIOD_S": "5",
    "DROP_GRACE_S": "1",
    "TASK_MAX_RETRIES": "10",
    "TASK_RETRY_BACKOFF_S": "0.5",
    "WORKER_CONCURRENCY": "2",
    "INBOX_POLL_SECONDS": "1",
    "INBOX_SETTLE_SECONDS": "0.5",
    "POINTER_POLL_SECONDS": "0.5",
    "LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
}


def node_name(role: str) -> str:
    """The Celery node name of a worker host (``worker@%h`` with the host's own name)."""
    return f"worker@{hostname(role)}"


def hostname(role: str) -> str:
    return f"cluster-{role}"


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.shared = root / "shared"
        self.net = VirtualNetwork()
        for role, octet in HOSTS.items():
            self.net.add_host(role, octet)
        data, cache = self.host("data"), self.host("cache")
        self.env = {
            **CLUSTER_ENV,
            "MONGO_URL": f"mongodb://{data.ip}:{MONGO_PORT}",
            "BROKER_URL": f"redis://{data.ip}:{REDIS_PORT}/0",
            "REDIS_URL": f"redis://{cache.ip}:{REDIS_PORT}/0",
            "DATA_DIR": str(self.shared),
            "CONFIG_FILE": str(root / "no-config.json"),
        }
        self.services: dict[str, Service] = {}
        self.events: TaskEvents | None = None
        self.api: dict[str, httpx.Client] = {}
        self.mongo: pymongo.MongoClient[Any] | None = None
        self.broker: redis.Redis | None = None
        self.history: list[Any] = []  # the datasets tests loaded, in order (the last is live)

    def host(self, role: str) -> Host:
        return self.net.hosts[role]

    @property
    def db(self) -> Any:
        assert self.mongo is not None
        return self.mongo[MONGO_DB]

    @contextlib.contextmanager
    def from_client(self) -> Iterator[None]:
        """The calling thread talks to the hosts from the client host."""
        with thread_in_netns(self.host("client").netns):
            yield

    # --- processes ----------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        """Only the cluster's settings: nothing of the single-host test configuration."""
        fields = {name.upper() for name in Settings.model_fields}
        base = {k: v for k, v in os.environ.items() if k.upper() not in fields}
        base.pop("CONFIG_FILE", None)
        return {**base, **self.env}

    def start(self, role: str, name: str, argv: list[str], port: int | None = None) -> Service:
        host = self.host(role)
        svc = Service(
            f"{role}-{name}",
            host_command(host.netns, hostname(role), argv),
            port=port,
            log_path=self.logs / f"{role}-{name}.log",
            host=host.ip,
        )
        svc.env = self._env()
        self.services[svc.name] = svc
        svc.start()
        if port is not None:
            svc.wait_ready(60)
        return svc

    def start_worker(self, role: str) -> Service:
        svc = self.start(role, "worker", worker_command(2, "worker"))
        assert svc.log_path is not None
        log = svc.log_path
        offset = log.stat().st_size if log.exists() else 0
        wait_until(lambda: "ready." in log.read_text(errors="replace")[offset:], 60, svc)
        started = time.time()
        assert self.events is not None
        events = self.events
        wait_until(lambda: events.heartbeat_at(node_name(role)) > started, 30, svc)
        return svc

    def up(self) -> None:
        self.shared.mkdir(parents=True, exist_ok=True)
        (self.root / "redis-broker").mkdir()
        (self.root / "redis-cache").mkdir()
        self.net.create()
        data, cache = self.host("data"), self.host("cache")
        with self.from_client():
            self.start("data", "store", mongo_command(MONGO_PORT, ":memory:", data.ip), MONGO_PORT)
            self.start("data", "broker", _redis(self.root / "redis-broker", data), REDIS_PORT)
            self.start("cache", "cache", _redis(self.root / "redis-cache", cache), REDIS_PORT)
            self.mongo = pymongo.MongoClient(self.env["MONGO_URL"], tz_aware=True)
            self.broker = redis.Redis.from_url(self.env["BROKER_URL"])
            self.events = TaskEvents(self.env["BROKER_URL"]).start()
            for role in API_HOSTS:
                self.start(role, "api", api_command(self.host(role).ip, API_PORT), API_PORT)
                self.api[role] = httpx.Client(
                    base_url=f"http://{self.host(role).ip}:{API_PORT}", timeout=30
                )
            for role in WORKER_HOSTS:
                self.start_worker(role)
            self.start("data", "beat", beat_command(str(self.root / "celerybeat-schedule")))

    def repair(self) -> None:
        """The network whole again and a worker on every worker host (a failed test may
        have left a host cut off or dead)."""
        self.net.repair()
        for role in WORKER_HOSTS:
            svc = self.services.get(f"{role}-worker")
            if svc is None or not svc.running:
                self.start_worker(role)

    def down(self) -> None:
        """Everything goes, whatever state a test left it in."""
        with contextlib.suppress(Exception), self.from_client():
            for client in self.api.values():
                client.close()
            if self.events is not None:
                self.events.stop()
            if self.mongo is not None:
                self.mongo.close()
            if self.broker is not None:
                self.broker.close()
        with contextlib.suppress(Exception):  # let TERM-ed processes finish their work
            self.net.repair()
        for svc in reversed(list(self.services.values())):
            with contextlib.suppress(Exception):
                svc.stop(timeout=10)
        self.net.destroy()

    # --- what tests look at -------------------------------------------------------------

    def broker_idle(self) -> bool:
        """No message waiting or unacknowledged (ETA tasks count as unacknowledged)."""
        assert self.broker is not None
        return self.broker.llen("celery") == 0 and self.broker.hlen("unacked") == 0

    def job_doc(self, job_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.db["jobs"].find_one({"_id": job_id}) or {}
        return doc

    def collection(self, version: int) -> dict[str, tuple[str, float, str]]:
        return stored_rows(self.db, version)


def _redis(directory: Path, host: Host) -> list[str]:
    # No password on the private switch: protected mode would refuse the other hosts.
    return [*redis_command(REDIS_PORT, str(directory), host.ip), "--protected-mode", "no"]


def wait_until(predicate: Any, timeout: float, svc: Service | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if svc is not None and not svc.running:
            raise RuntimeError(f"{svc.name} exited; see {svc.log_path}")
        time.sleep(0.1)
    raise TimeoutError(f"condition not met within {timeout}s")
