"""Celery task events, received like Flower receives them, to see which host ran what.

The workers run with ``-E``; every task event carries the worker's node name
(``worker@<host name>``) and the task id, and chunk tasks have the id
``<job id>-chunk-<index>``.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from celery import Celery

OUTCOMES = {"task-succeeded", "task-failed", "task-retried"}


@dataclass(frozen=True)
class TaskEvent:
    type: str  # task-received, task-started, task-succeeded, task-failed, task-retried, ...
    uuid: str
    node: str
    at: float  # time.time() when the driver received it


class TaskEvents:
    """Records task and worker events from the broker until stopped."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery("cluster-events", broker=broker_url)
        self.app.conf.broker_connection_retry_on_startup = True
        self._lock = threading.Lock()
        self._events: list[TaskEvent] = []
        self._heartbeats: dict[str, float] = {}
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, name="task-events", daemon=True)

    def start(self) -> TaskEvents:
        """Subscribed once a worker's heartbeat arrives (see ``heartbeat_at``)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(10)
        self.app.close()

    def _run(self) -> None:
        while True:
            try:
                with self.app.connection() as conn:
                    self._receiver = self.app.events.Receiver(conn, handlers={"*": self._on})
                    self._receiver.capture(limit=None, timeout=None, wakeup=False)
                return
            except Exception:
                if self._receiver is not None and self._receiver.should_stop:
                    return
                time.sleep(0.5)

    def _on(self, event: dict[str, Any]) -> None:
        now = time.time()
        kind = str(event.get("type", ""))
        node = str(event.get("hostname", ""))
        with self._lock:
            if kind == "worker-heartbeat":
                self._heartbeats[node] = now
            elif kind.startswith("task-") and "uuid" in event:
                self._events.append(TaskEvent(kind, str(event["uuid"]), node, now))

    def heartbeat_at(self, node: str) -> float:
        with self._lock:
            return self._heartbeats.get(node, 0.0)

    def chunk_events(self, job_id: str) -> dict[int, list[TaskEvent]]:
        """Events of the job's chunk tasks, by chunk index, in arrival order."""
        prefix = f"{job_id}-chunk-"
        out: dict[int, list[TaskEvent]] = defaultdict(list)
        with self._lock:
            for event in self._events:
                if event.uuid.startswith(prefix):
                    out[int(event.uuid[len(prefix) :])].append(event)
        return dict(out)

    def chunks(
        self, job_id: str, kind: str, node: str | None = None, after: float = 0.0
    ) -> set[int]:
        """Chunk indexes with an event ``kind`` (from ``node``, received after ``after``)."""
        return {
            index
            for index, events in self.chunk_events(job_id).items()
            if any(
                e.type == kind and (node is None or e.node == node) and e.at > after for e in events
            )
        }

    def held(self, job_id: str, node: str) -> set[int]:
        """Chunks ``node`` has taken from the broker (received) with no outcome since: the
        messages it has not acknowledged."""
        return self._pending(job_id, node, "task-received")

    def holding(self, job_id: str, node: str) -> set[str] | None:
        """The job's tasks ``node`` itself says it has (running or reserved), asked over the
        broker; None if it does not answer. Events sent while a host was cut off can be lost
        (a task rejected back to the broker then never reports an outcome): the worker's own
        answer is the truth."""
        inspect = self.app.control.inspect(destination=[node], timeout=2.0)
        answers = [inspect.active(), inspect.reserved()]
        if any(a is None or node not in a for a in answers):
            return None
        return {t["id"] for a in answers if a for t in a[node] if job_id in t["id"]}

    def in_flight(self, job_id: str, node: str) -> set[int]:
        """Chunks ``node`` has started and not (yet) reported an outcome for."""
        return self._pending(job_id, node, "task-started")

    def _pending(self, job_id: str, node: str, since: str) -> set[int]:
        out = set()
        for index, events in self.chunk_events(job_id).items():
            mine = [e.type for e in events if e.node == node]
            if since not in mine:
                continue
            last = len(mine) - 1 - mine[::-1].index(since)
            if not OUTCOMES & set(mine[last:]):
                out.add(index)
        return out
