"""Which worker nodes are alive, kept on the broker: one sorted set, node name -> the Redis
server's time of its last heartbeat.

The API reads it at scrape time (``promotions_workers_online``) instead of asking Celery
(a broadcast ``inspect ping`` waits for its timeout on every scrape, and Flower may not run).
Both sides use the Redis server's clock, so clock skew between hosts never counts a live
worker out. A node that stops cleanly removes itself; one that dies stops beating and drops
out of the count after ``ONLINE_PERIODS`` periods.
"""

from __future__ import annotations

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

WORKERS_KEY = "promotions:workers"
ONLINE_PERIODS = 3
# Entries of nodes gone this long are removed (by any beating node): the set stays small.
FORGET_AFTER_S = 24 * 3600


def _server_time(reply: tuple[int, int]) -> float:
    seconds, micros = reply
    return seconds + micros / 1e6


def beat(client: Redis, node: str) -> None:
    now = _server_time(client.time())
    pipe = client.pipeline(transaction=False)
    pipe.zadd(WORKERS_KEY, {node: now})
    pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - FORGET_AFTER_S)
    pipe.execute()


def leave(client: Redis, node: str) -> None:
    client.zrem(WORKERS_KEY, node)


async def count_online(client: AsyncRedis, heartbeat_s: float) -> int:
    now = _server_time(await client.time())
    return int(await client.zcount(WORKERS_KEY, now - ONLINE_PERIODS * heartbeat_s, "+inf"))
