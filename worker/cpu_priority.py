"""Loads yield the CPU to lookups on a shared host: the worker runs at a lower priority.

Where the API and the worker share cores (``make run``, a small host), a load's map keeps
every core busy and each lookup waits for one at every hop (client, API, Redis, store).
A niceness only ranks a process against others *of its own scheduling group*, though:
Linux with autogroup on (the default on desktop and VM kernels) gives every session its
own group, and a service started in its own session (``make run``, a supervisor, a
terminal) would then compete with the API as an equal whatever its niceness (measured:
bench/RESULTS.md "Niceness and autogroups"). So a worker that leads its own session lowers
its group's priority too (``/proc/self/autogroup``), which touches nothing outside that
session. In a container or a systemd unit the cgroup decides; its CPU weight is the knob
there (docker-compose.yml sets ``cpu_shares``; docs/operations.md).

Pool processes are forked after this runs and inherit it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")


@dataclass(frozen=True)
class Applied:
    niceness: int  # the process's niceness afterwards
    autogroup: bool  # whether its session's scheduling group was lowered as well


def lower_priority(niceness: int, autogroup: Path = AUTOGROUP) -> Applied:
    """Raises this process's niceness to at least ``niceness`` (never lowers it: an operator
    who started the worker under ``nice -n 19`` keeps that) and, when this process leads its
    own session, its autogroup's as well. Failures are logged: priority is an optimisation."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    target = max(current, niceness)
    if target != current:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, target)
        except OSError as exc:
            log.warning("worker niceness left at %d: %s", current, exc)
            target = current
    lowered_group = False
    # Writing the autogroup's niceness changes every process of this session: only when
    # this process started the session (a worker run from a shell shares the shell's).
    if niceness > 0 and os.getsid(0) == os.getpid() and autogroup.exists():
        try:
            # "/autogroup-85 nice 0"
            if int(autogroup.read_text().split()[-1]) < niceness:
                autogroup.write_text(str(niceness))
            lowered_group = True
        except (OSError, ValueError, IndexError) as exc:
            log.warning("worker's scheduling group left as it was: %s", exc)
    return Applied(niceness=target, autogroup=lowered_group)
