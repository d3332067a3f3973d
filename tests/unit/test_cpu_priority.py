"""The worker's priority, applied in a child process (a niceness is never undone)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

AUTOGROUP = Path("/proc/self/autogroup")

PROBE = """
import json, os, sys
from pathlib import Path
from worker.cpu_priority import lower_priority
target, group = int(sys.argv[1]), Path(sys.argv[2])
applied = lower_priority(target, group)
print(json.dumps({"nice": os.getpriority(os.PRIO_PROCESS, 0), "applied": applied.niceness,
                  "group": applied.autogroup, "file": group.read_text() if group.exists() else ""}))
"""


def _probe(
    target: int, group: Path, *, own_session: bool, start_nice: int = 0
) -> dict[str, object]:
    command = [sys.executable, "-c", PROBE, str(target), str(group)]
    if start_nice:
        command = ["nice", "-n", str(start_nice), *command]
    out = subprocess.run(
        command, check=True, capture_output=True, text=True, start_new_session=own_session
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_a_session_leader_lowers_itself_and_its_scheduling_group(tmp_path: Path) -> None:
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-7 nice 0\n")
    assert _probe(10, group, own_session=True) == {
        "nice": 10,
        "applied": 10,
        "group": True,
        "file": "10",
    }


def test_a_worker_sharing_a_session_leaves_the_group_alone(tmp_path: Path) -> None:
    """Started from a shell, the group is the shell's: lowering it would lower the shell's
    other programs (an API started from the same terminal, say)."""
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-7 nice 0\n")
    result = _probe(10, group, own_session=False)
    assert (result["nice"], result["group"], result["file"]) == (10, False, "/autogroup-7 nice 0\n")


def test_a_lower_priority_set_by_the_operator_is_kept(tmp_path: Path) -> None:
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-7 nice 15\n")
    result = _probe(10, group, own_session=True, start_nice=15)
    assert (result["nice"], result["file"]) == (15, "/autogroup-7 nice 15\n")


def test_zero_leaves_the_worker_as_started(tmp_path: Path) -> None:
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-7 nice 0\n")
    result = _probe(0, group, own_session=True)
    assert (result["nice"], result["group"], result["file"]) == (0, False, "/autogroup-7 nice 0\n")


@pytest.mark.skipif(not AUTOGROUP.exists(), reason="kernel without autogroup scheduling")
def test_the_real_autogroup_of_a_new_session_is_lowered() -> None:
    result = _probe(7, AUTOGROUP, own_session=True)
    assert result["group"] is True
    assert str(result["file"]).split()[-1] == "7"
