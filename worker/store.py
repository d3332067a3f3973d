"""The worker process's MongoDB handle, made after fork (clients are not fork-safe)."""

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
        _client = sync_client(get_settings())
        _pid = os.getpid()
    return _client[get_settings().mongo_db]
