"""Each worker node says it is alive on the broker (``shared.infra.worker_presence``), from a thread
of its main process: busy pool processes never delay a beat, and the API counts live nodes
without asking Celery."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown
from redis import Redis
from redis.exceptions import RedisError

from shared.infra import worker_presence
from shared.settings import get_settings

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, client: Redis, node: str, period_s: float) -> None:
        self.client = client
        self.node = node
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="presence-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """A clean stop leaves the count at once instead of after the online window."""
        self._stop.set()
        self._thread.join(self.period_s + 1)
        try:
            worker_presence.leave(self.client, self.node)
        except (RedisError, OSError) as exc:
            log.warning("could not remove this worker from the online set: %s", exc)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                worker_presence.beat(self.client, self.node)
            except (RedisError, OSError) as exc:  # the broker is down: Celery says so too
                log.debug("heartbeat not sent: %s", exc)
            self._stop.wait(self.period_s)


_running: list[Heartbeat] = []


def _start(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    client = Redis.from_url(
        settings.broker_url.get_secret_value(), socket_timeout=2, socket_connect_timeout=2
    )
    heartbeat = Heartbeat(client, str(sender.hostname), settings.worker_heartbeat_s)
    heartbeat.start()
    _running.append(heartbeat)


def _stop(**_: Any) -> None:
    while _running:
        _running.pop().stop()


# Strong references: the worker's main process only (beat and Flower never send these).
worker_ready.connect(_start, weak=False)
worker_shutdown.connect(_stop, weak=False)
