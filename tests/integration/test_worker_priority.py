"""The real worker yields the CPU to lookups (worker/cpu_priority.py): its pool processes run
at ``WORKER_NICE`` and, started in a session of its own as ``make run`` starts it, so does
its session's scheduling group, without which the niceness would not count against the API's
(bench/RESULTS.md "Niceness and autogroups")."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from devstack.services import Service
from shared.settings import Settings


def test_the_pool_processes_run_at_the_worker_niceness(worker: Service, settings: Settings) -> None:
    assert worker.proc is not None and settings.worker_nice > 0
    main = psutil.Process(worker.proc.pid)
    pool = main.children(recursive=True)
    assert len(pool) >= 2
    assert {p.nice() for p in [main, *pool]} == {settings.worker_nice}


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroup scheduling")
def test_the_worker_session_scheduling_group_is_lowered(
    worker: Service, settings: Settings
) -> None:
    assert worker.proc is not None
    pid = worker.proc.pid
    assert os.getsid(pid) == pid  # started in its own session, as devstack starts it
    group = Path(f"/proc/{pid}/autogroup").read_text()
    assert group.split()[-1] == str(settings.worker_nice), group
