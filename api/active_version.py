"""Keeps each API process's idea of the active dataset version fresh.

A Redis pub/sub message makes a switch visible within milliseconds; a poll of the pointer
document every ``pointer_poll_seconds`` (<= 1 s) bounds staleness when a message is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pymongo
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.dataset.datasets import ActiveDataset, read_active
from shared.errors import TransientError, store_errors
from shared.readpath.pointer_channel import ACTIVE_VERSION_CHANNEL

log = logging.getLogger(__name__)

# A pointer read is a point read: one that takes longer is a store in trouble, and the next
# poll asks again (a stalled read would otherwise hold the poll for the socket timeout).
POINTER_READ_S = 1.0


class ActiveVersionWatcher:
    def __init__(
        self,
        db: AsyncDatabase[Any],
        redis: Redis,
        poll_s: float,
        on_switch: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.db = db
        self.redis = redis
        self.poll_s = poll_s
        # Runs (bounded, never raising) before a new version is served: cache prefill.
        self.on_switch = on_switch
        self.current: ActiveDataset | None = None
        # False until the pointer was read once: "no dataset yet" must not be claimed (404)
        # when the truth is "the store could not be asked" (503).
        self.known = False
        self._tasks: list[asyncio.Task[None]] = []
        # Poll, channel and rollback route may refresh at once: one at a time, so a slow
        # prefill for one version cannot land after a newer version was already set.
        self._lock = asyncio.Lock()

    async def refresh(self) -> ActiveDataset | None:
        async with self._lock:
            return await self._refresh()

    async def _refresh(self) -> ActiveDataset | None:
        try:
            with store_errors(), pymongo.timeout(POINTER_READ_S):
                active = await read_active(self.db)
        except TransientError as exc:
            log.warning("could not read the active dataset pointer: %s", exc)
            return self.current
        if active != self.current:
            old = self.current.version if self.current else None
            if active is not None and active.version != old and self.on_switch is not None:
                await self.on_switch(active.version)
            log.info("active dataset version is now %s", active.version if active else None)
            self.current = active
        self.known = True
        return active

    async def start(self) -> None:
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._poll(), name="pointer-poll"),
            asyncio.create_task(self._listen(), name="pointer-listen"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self) -> None:
        """Never dies: any error is logged and the next poll tries again."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("reading the active dataset pointer failed")
                await asyncio.sleep(1.0)

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(ACTIVE_VERSION_CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            await self.refresh()
            except (RedisError, OSError) as exc:
                log.debug("pointer channel unavailable (%s); relying on polling", exc)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("pointer channel listener failed; relying on polling")
                await asyncio.sleep(1.0)
