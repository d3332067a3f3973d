"""Start and stop the stack's processes: the local run command and the test fixtures use the
same commands, so tests exercise what developers run."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tool(name: str) -> str:
    local = BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)


# What the dev store asks of the services that use it: its drop deletes document by
# document under its one lock, so a removed version is emptied in paced batches first
# (worker/paced_removal.py; 25 documents a delete: ~5 ms of the store's time, measured).
DEV_STORE_ENV = {"REMOVE_BATCH_DOCS": "25"}


def dev_store_env(configured: set[str]) -> dict[str, str]:
    """``DEV_STORE_ENV`` less what the operator configured (``Settings.model_fields_set``)."""
    return {k: v for k, v in DEV_STORE_ENV.items() if k.lower() not in configured}


def mongo_command(
    port: int,
    storage: str,
    host: str = "127.0.0.1",
    cache: str = "1G",
    replica_set: bool = False,
    switch_interval_ms: float = 0.5,
) -> list[str]:
    """secantusd: the MongoDB-wire-compatible dev/test server (never used in production);
    ``cache``: its WiredTiger cache (``DEVSTACK_STORE_CACHE``). A standalone server unless
    ``replica_set``: as a single-node replica set it writes an oplog entry for every
    document it stores (a BSON encode and a table write in its one Python process), which
    nothing here reads (docs/decisions/standalone-dev-store.md). Run with a GIL switch
    interval of ``switch_interval_ms`` (``DEVSTACK_STORE_SWITCH_INTERVAL_MS``; Python's own:
    5): see devstack/dev_store.py."""
    return [
        sys.executable,
        "-m",
        "devstack.dev_store",
        f"{switch_interval_ms:g}",
        *(() if replica_set else ("--standalone",)),
        "--host",
        host,
        "--port",
        str(port),
        "--storage-path",
        storage,
        "--cache-size",
        cache,
        "--log-level",
        "WARNING",
    ]


def redis_command(port: int, directory: str, host: str = "127.0.0.1") -> list[str]:
    return [
        _tool("redis-server"),
        "--port",
        str(port),
        "--bind",
        host,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        directory,
    ]


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", *args]


def worker_command(concurrency: int, name: str) -> list[str]:
    return _celery(
        "worker",
        "-E",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "--hostname",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
    )


def beat_command(schedule_file: str) -> list[str]:
    """Celery beat: enqueues the periodic tasks, drop-folder scan and watchdog (run one)."""
    return _celery("beat", "--loglevel", "INFO", "--schedule", schedule_file)


def flower_command(port: int, address: str = "127.0.0.1") -> list[str]:
    """Local only unless told otherwise: without FLOWER_BASIC_AUTH it has no login."""
    return _celery("flower", f"--port={port}", f"--address={address}")


# Defence in depth behind the edge (the image uses the same, Dockerfile.api): headers within
# HTTP_HEADER_TIMEOUT_S and bounded while they arrive, and a response's headers and body in
# one socket write (api/http_protocol.py, docs/decisions/one-socket-write.md), idle keep-alive
# connections closed after 5 s, at most this many connections and requests per process
# (503 beyond).
API_CONCURRENCY = 1000
UVICORN_BOUNDS = (
    "--http",
    "api.http_protocol:ServiceHttpToolsProtocol",
    "--timeout-keep-alive",
    "5",
    "--limit-concurrency",
    str(API_CONCURRENCY),
    "--backlog",
    "2048",
)


def api_command(host: str, port: int, workers: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "api.main:app",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        *UVICORN_BOUNDS,
        "--no-access-log",
    ]


def _parent_death_signal(parent_pid: int) -> Callable[[], None] | None:
    """Runs in the child between fork and exec: the kernel sends it SIGTERM when the process
    that started it dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``; kept across exec).
    Elsewhere, None: the next ``make run`` still ends what is left (``run_state``)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: nothing to load after it

    def set_signal() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before prctl: no signal will come
            os.kill(os.getpid(), signal.SIGTERM)

    return set_signal


class Service:
    """A child process in its own process group, stopped with SIGTERM then SIGKILL.
    ``die_with_parent``: the child also gets SIGTERM when this process dies (the supervisor)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
        die_with_parent: bool = False,
    ) -> None:
        self.name = name
        self.die_with_parent = die_with_parent
        self.argv = list(argv)
        self.env = {**os.environ, **(env or {})}
        self.port = port
        self.host = host  # where wait_ready looks for the port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, stdout: int | None = None) -> Service:
        out = stdout
        if out is None and self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
            preexec_fn=_parent_death_signal(os.getpid()) if self.die_with_parent else None,
        )
        return self

    def wait_ready(
        self,
        timeout: float | None = 60.0,
        progress: Callable[[float], None] | None = None,
        progress_every: float = 10.0,
    ) -> Service:
        """Until the port listens. ``timeout=None``: as long as the process runs (a store
        opening a big data directory can take minutes); a process that exits ends the wait
        at once either way. ``progress`` gets the seconds waited, every ``progress_every``."""
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        next_report = started + progress_every
        while deadline is None or time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}{self._tail()}")
            if self.port is None or port_open(self.host, self.port):
                return self
            now = time.monotonic()
            if progress is not None and now >= next_report:
                progress(now - started)
                next_report = now + progress_every
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not listen on {self.port} in {timeout}s{self._tail()}")

    def _tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return "\n" + "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
        return ""

    def signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.proc.wait(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
