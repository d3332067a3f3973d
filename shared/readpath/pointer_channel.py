"""Redis channel on which the worker announces a new active dataset version.

Subscribers still poll the pointer document as well: a message can be missed (Redis down,
reconnect), the poll bounds how stale a reader can be.
"""

from __future__ import annotations

import logging

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

ACTIVE_VERSION_CHANNEL = "promotions:active-version"


def announce_active(redis_url: str, version: int) -> None:
    try:
        client = Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.publish(ACTIVE_VERSION_CHANNEL, str(version))
        finally:
            client.close()
    except (RedisError, OSError) as exc:
        # Readers still learn of it from their poll of the pointer.
        log.warning("could not announce version %s: %s", version, exc)


async def announce_active_async(redis: AsyncRedis, version: int) -> None:
    """The API's twin of ``announce_active``, on the process's existing connection pool."""
    try:
        await redis.publish(ACTIVE_VERSION_CHANNEL, str(version))
    except (RedisError, OSError) as exc:
        log.warning("could not announce version %s: %s", version, exc)
