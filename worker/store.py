"""The worker process's MongoDB handle, made after fork (clients are not fork-safe).

No socket read of a task waits longer than ``TASK_STORE_TIMEOUT_S``, so a store call (with
the driver's one retry) returns or raises a transient error within about twice that: a
stalled store costs a task a bounded wait, then its retry policy (``TASK_MAX_RETRIES``,
backoff) decides.

Not the client-side operation timeout (``timeoutMS``) the API's requests use: under it,
server selection waits for the whole remaining budget, so a store that is down (refusing
connections) would cost every task attempt the full budget instead of
``MONGO_TIMEOUT_MS``. The one exception is a version collection's drop, which may take a
store minutes: it runs under its own operation timeout (``DROP_TIMEOUT_S``, which replaces
the socket timeout for it; ``shared.dataset.lifecycle.remove_version``)."""

from __future__ import annotations

import os
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from shared.infra.mongo import sync_client
from shared.settings import Settings, get_settings

_client: MongoClient[Any] | None = None
_pid: int | None = None


def database() -> Database[Any]:
    global _client, _pid
    if _client is None or _pid != os.getpid():
        _client = task_client(get_settings())
        _pid = os.getpid()
    return _client[get_settings().mongo_db]


def task_client(settings: Settings) -> MongoClient[Any]:
    return sync_client(settings, socket_timeout_ms=int(settings.task_store_timeout_s * 1000))
