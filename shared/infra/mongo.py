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


def _client_options(settings: Settings, socket_timeout_ms: int | None) -> dict[str, Any]:
    return {
        "serverSelectionTimeoutMS": settings.mongo_timeout_ms,
        "connectTimeoutMS": settings.mongo_timeout_ms,
        "socketTimeoutMS": socket_timeout_ms,
        "retryWrites": True,
        "appname": "promotions",
        "tz_aware": True,
        # Whatever MONGO_URL says: conflict resolution and the pointer need the latest
        # writes, and a lagging secondary would answer 404s that then get cached.
        "readPreference": "primary",
    }


def sync_client(
    settings: Settings, socket_timeout_ms: int | None = 120_000, connect: bool = True
) -> MongoClient[Any]:
    return MongoClient(
        settings.mongo_url.get_secret_value(),
        **_client_options(settings, socket_timeout_ms),
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


# The calling process's task client, and the process it was made in.
_task_client: MongoClient[Any] | None = None
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
    global _task_client, _task_pid
    if _task_client is None or _task_pid != os.getpid():
        _task_client = task_client(get_settings())
        _task_pid = os.getpid()
    return _task_client[get_settings().mongo_db]


def task_client(settings: Settings) -> MongoClient[Any]:
    """A client as a worker task uses it (``task_database``): no socket read waits longer
    than ``TASK_STORE_TIMEOUT_S``."""
    return sync_client(settings, socket_timeout_ms=int(settings.task_store_timeout_s * 1000))
