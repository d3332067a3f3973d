"""MongoDB clients with timeouts that fail fast: a stuck server must surface as an error
(503 for readers, a retry for loaders), never as a hang. The one place that builds store
clients: the API's (``async_client``, and ``sync_client`` for rare operator actions) and the
worker's (``task_database``, ``task_client``)."""

from __future__ import annotations

import os
from typing import Any

from pymongo import AsyncMongoClient, MongoClient
from pymongo.database import Database

from shared.settings import Settings, get_settings


def _client_options(
    settings: Settings, socket_timeout_ms: int | None, retry_writes: bool = True
) -> dict[str, Any]:
    return {
        "serverSelectionTimeoutMS": settings.mongo_timeout_ms,
        "connectTimeoutMS": settings.mongo_timeout_ms,
        "socketTimeoutMS": socket_timeout_ms,
        "retryWrites": retry_writes,
        "appname": "promotions",
        "tz_aware": True,
        # Whatever MONGO_URL says: conflict resolution and the pointer need the latest
        # writes, and a lagging secondary would answer 404s that then get cached.
        "readPreference": "primary",
    }


def sync_client(
    settings: Settings,
    socket_timeout_ms: int | None = 120_000,
    connect: bool = True,
    retry_writes: bool = True,
) -> MongoClient[Any]:
    return MongoClient(
        settings.mongo_url.get_secret_value(),
        **_client_options(settings, socket_timeout_ms, retry_writes),
        connect=connect,
    )


def async_client(settings: Settings) -> AsyncMongoClient[Any]:
    """Requests bound every store call by their own deadline (``api.store_gate``, through
    ``pymongo.timeout``); the socket timeout only bounds the background reads (pointer poll,
    metrics) made outside one."""
    return AsyncMongoClient(
        settings.mongo_url.get_secret_value(),
        **_client_options(settings, settings.mongo_timeout_ms * 2),
        maxPoolSize=200,
    )


# The calling process's task clients (by whether they retry writes), and the process they
# were made in.
_task_clients: dict[bool, MongoClient[Any]] = {}
_task_pid: int | None = None


def task_database() -> Database[Any]:
    """The worker process's database handle, made after fork (clients are not fork-safe).

    No socket read of a task waits longer than ``TASK_STORE_TIMEOUT_S``, so a store call
    (with the driver's one retry) returns or raises a transient error within about twice
    that: a stalled store costs a task a bounded wait, then its retry policy
    (``TASK_MAX_RETRIES``, backoff) decides.

    Not the client-side operation timeout (``timeoutMS``) the API's requests use: under it,
    server selection waits for the whole remaining budget, so a store that is down (refusing
    connections) would cost every task attempt the full budget instead of
    ``MONGO_TIMEOUT_MS``. The one exception is a version collection's drop, which may take a
    store minutes: it runs under its own operation timeout (``DROP_TIMEOUT_S``, which
    replaces the socket timeout for it; ``shared.dataset.lifecycle.remove_version``)."""
    return _task_handle(retry_writes=True)


def task_insert_database() -> Database[Any]:
    """The reduce's handle for its bucket inserts: ``task_database`` without retryable
    writes. Its inserts are idempotent by design (a bucket already there is skipped,
    ``worker.bucket_writer``; a failed batch fails the partition, whose retry inserts it
    again), so the driver's one retry adds nothing, and its cost is real: the store keeps a
    record of every retryable write, and the dev store prunes that record in O(n) on each
    write (held 30 min, up to 10,000): the profile of a load beside a live version had
    45 % of the store's time there, which is what slowed the reduce and the lookups as a
    load went on (bench/RESULTS.md, "Retryable-write records"). The job's records keep
    retryable writes (``task_database``)."""
    return _task_handle(retry_writes=False)


def _task_handle(retry_writes: bool) -> Database[Any]:
    global _task_pid
    if _task_pid != os.getpid():
        _task_clients.clear()  # made before a fork: never used in the child
        _task_pid = os.getpid()
    client = _task_clients.get(retry_writes)
    if client is None:
        client = _task_clients[retry_writes] = task_client(get_settings(), retry_writes)
    return client[get_settings().mongo_db]


def task_client(settings: Settings, retry_writes: bool = True) -> MongoClient[Any]:
    """A client as a worker task uses it (``task_database``): no socket read waits longer
    than ``TASK_STORE_TIMEOUT_S``."""
    return sync_client(
        settings,
        socket_timeout_ms=int(settings.task_store_timeout_s * 1000),
        retry_writes=retry_writes,
    )
