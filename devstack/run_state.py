"""What ``make run`` leaves on disk so that nothing outlives it: a lock (one supervisor at a
time) and a record of its children's process groups.

Children also get the kernel's parent-death signal (see ``Service``), which covers a
supervisor killed with SIGKILL; the record covers what that cannot: a child that was stopped,
hung or slow to exit, and its own children (Celery's pool, uvicorn's workers), which share its
process group. The next ``make run`` ends every group recorded by a supervisor that is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
from pathlib import Path
from typing import IO, Any

import psutil

LOCK_NAME = "run.lock"
RECORD_NAME = "run.pids"


class AnotherRunActive(RuntimeError):
    """A live supervisor holds the lock: starting a second stack would fight over ports."""


def _group_members(pgid: int, leader_created: float) -> list[psutil.Process]:
    """Live processes of the recorded group. A process whose pid is the group id but that was
    started at another time means the id was reused: that group is not ours."""
    with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
        leader = psutil.Process(pgid)
        if abs(leader.create_time() - leader_created) > 1 and os.getpgid(pgid) == pgid:
            return []
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.create_time() >= leader_created - 1:
                members.append(proc)
    return members


def end_groups(groups: list[dict[str, Any]], grace_s: float = 10.0) -> list[str]:
    """SIGTERM (and SIGCONT, for stopped ones) to every recorded group still alive, SIGKILL
    to what is left after ``grace_s``; returns the names of the groups that were alive."""
    alive: list[psutil.Process] = []
    names: list[str] = []
    for group in groups:
        members = _group_members(int(group["pgid"]), float(group["created"]))
        if not members:
            continue
        names.append(str(group["name"]))
        alive += members
        for sig in (signal.SIGTERM, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(group["pgid"]), sig)
    _, left = psutil.wait_procs(alive, timeout=grace_s)
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(left, timeout=5)
    return names


class RunState:
    """Held by the supervisor for its whole life (the lock is released by the kernel when the
    process ends, however it ends)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.record_path = directory / RECORD_NAME
        self._lock: IO[str] | None = None
        self._groups: list[dict[str, Any]] = []

    def acquire(self) -> list[str]:
        """Take the lock, then end what a supervisor that died left running; returns the
        names of the process groups that had to be ended."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = (self.directory / LOCK_NAME).open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise AnotherRunActive(
                f"another `make run` is running (supervisor pid {self._recorded_supervisor()}); "
                "stop it first (Ctrl-C in its terminal)"
            ) from None
        self._lock = lock
        ended = end_groups(self._read().get("groups", []))
        self._groups = []
        self._write()
        return ended

    def add(self, name: str, pid: int) -> None:
        """Record a started child: it leads its own process group (a new session)."""
        created = psutil.Process(pid).create_time()
        self._groups.append({"name": name, "pgid": pid, "created": created})
        self._write()

    def release(self) -> None:
        """After every child stopped: nothing left to clean up."""
        self.record_path.unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _recorded_supervisor(self) -> object:
        return self._read().get("supervisor", "?")

    def _read(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def _write(self) -> None:
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"supervisor": os.getpid(), "groups": self._groups}))
        os.replace(tmp, self.record_path)
