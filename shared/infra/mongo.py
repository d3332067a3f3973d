"""MongoDB clients with timeouts that fail fast: a stuck server must surface as an error
(503 for readers, a retry for loaders), never as a hang."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient, MongoClient

from shared.settings import Settings


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
