"""The worker process's MongoDB handle, made after fork (clients are not fork-safe).

Every store call of a task finishes within ``TASK_STORE_TIMEOUT_S`` (the driver's
client-side operation timeout) or raises a transient error: a stalled store costs a task
one bounded wait, then its retry policy (``TASK_MAX_RETRIES``, backoff) decides."""

from __future__ import annotations

import os
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from shared.mongo import sync_client
from shared.settings import get_settings

_client: MongoClient[Any] | None = None
_pid: int | None = None


def database() -> Database[Any]:
    global _client, _pid
    if _client is None or _pid != os.getpid():
        settings = get_settings()
        _client = sync_client(settings, operation_timeout_s=settings.task_store_timeout_s)
        _pid = os.getpid()
    return _client[get_settings().mongo_db]
