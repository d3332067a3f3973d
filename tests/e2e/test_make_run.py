"""`make run`'s supervisor with real processes: whatever stops it, nothing outlives it, and the
next run starts cleanly. Every service runs on free ports, in a temporary directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from devstack.run import DEV_FLOWER_LOGIN
from devstack.services import ROOT, free_port

pytestmark = pytest.mark.slow


class Stack:
    """``python -m devstack.run`` (what ``make run`` runs after installing), output collected."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devstack.run"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # like a terminal's own foreground job
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace"))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_up(self, timeout: float = 90) -> list[psutil.Process]:
        """Every process of the stack, once it says it is up."""
        deadline = time.monotonic() + timeout
        while "Stack is up" not in self.output:
            assert self.proc.poll() is None, f"the stack exited:\n{self.output}"
            assert time.monotonic() < deadline, f"the stack did not come up:\n{self.output}"
            time.sleep(0.1)
        procs = psutil.Process(self.proc.pid).children(recursive=True)
        assert len(procs) >= 7, procs  # redis, mongo, worker + its pool, beat, flower, api
        return procs

    def kill(self, sig: int) -> None:
        self.proc.send_signal(sig)


def still_running(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Processes still alive after ``timeout`` (an unreaped zombie has ended)."""
    deadline = time.monotonic() + timeout
    alive = procs
    while True:
        alive = [p for p in alive if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def stack_env(tmp_path: Path, test_env: dict[str, str]) -> Iterator[dict[str, str]]:
    redis_port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in test_env and k != "FLOWER_BASIC_AUTH"}
    env.update(
        APP_PORT=str(free_port()),
        FLOWER_PORT=str(free_port()),
        MONGO_URL=f"mongodb://127.0.0.1:{free_port()}",
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        BROKER_URL=f"redis://127.0.0.1:{redis_port}/1",
        DATA_DIR=str(tmp_path / "shared"),
        DEVSTACK_DIR=str(tmp_path / "devstack"),
        CONFIG_FILE=str(tmp_path / "no-config.json"),
        WORKER_CONCURRENCY="1",
        PYTHONUNBUFFERED="1",
    )
    yield env
    # Whatever a failed assertion left running: every process of these stacks has this env
    # (redis-server overwrites its environment with its title, but runs in its data directory).
    for proc in psutil.process_iter():
        try:
            mine = proc.environ().get("DEVSTACK_DIR") == env["DEVSTACK_DIR"]
            if mine or proc.cwd().startswith(env["DEVSTACK_DIR"]):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def test_hard_kill_leaves_nothing_and_the_next_run_cleans_up_and_starts(
    stack_env: dict[str, str],
) -> None:
    first = Stack(stack_env)
    procs = first.wait_up()
    flower = f"http://127.0.0.1:{stack_env['FLOWER_PORT']}"
    # The documented development login (FLOWER_BASIC_AUTH unset) is required, and works.
    assert httpx.get(f"{flower}/api/workers").status_code == 401
    user, password = DEV_FLOWER_LOGIN.split(":")
    assert f"login {DEV_FLOWER_LOGIN}" in first.output

    def workers() -> dict[str, object]:
        answer = httpx.get(f"{flower}/api/workers?refresh=1", auth=(user, password))
        body: dict[str, object] = answer.raise_for_status().json()
        return body

    deadline = time.monotonic() + 30
    while not any(name.startswith("worker@") for name in workers()):
        assert time.monotonic() < deadline, "Flower shows no worker"
        time.sleep(1)

    # SIGKILL of the supervisor: the kernel's parent-death signal stops every child.
    first.kill(signal.SIGKILL)
    assert still_running(procs, 30) == []

    # A run whose children hang (stopped here) when its supervisor is killed: the next run
    # ends them before it starts (same ports, same store directory).
    second = Stack(stack_env)
    procs = second.wait_up()
    for proc in procs:
        proc.suspend()
    second.kill(signal.SIGKILL)
    time.sleep(1)
    assert len(still_running(procs, 0)) == len(procs)  # nothing ended them yet
    third = Stack(stack_env)
    third_procs = third.wait_up()
    assert "ended processes left by a previous run: redis" in third.output
    assert still_running(procs, 0) == []

    # One supervisor at a time.
    fourth = Stack(stack_env)
    assert fourth.proc.wait(30) == 1
    assert "another `make run` is running" in fourth.output
    assert all(_running(p) for p in third_procs)

    # SIGHUP (the terminal closed) stops everything too.
    third.kill(signal.SIGHUP)
    assert third.proc.wait(60) == 0
    assert still_running(third_procs, 10) == []
    assert not (Path(stack_env["DEVSTACK_DIR"]) / "run" / "run.pids").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_every_process(stack_env: dict[str, str], sig: int) -> None:
    stack = Stack(stack_env)
    procs = stack.wait_up()
    stack.kill(sig)
    assert stack.proc.wait(60) == 0, stack.output
    assert still_running(procs, 10) == []
    assert "stopping redis" in stack.output
