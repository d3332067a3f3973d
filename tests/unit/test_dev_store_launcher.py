"""The dev store runs with its GIL switch interval set (devstack/dev_store.py)."""

from __future__ import annotations

import sys

import pytest
import secantus.cli

from devstack import dev_store
from devstack.services import mongo_command


def test_the_launcher_sets_the_switch_interval_then_runs_secantusd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, object] = {}

    def fake_main() -> int:
        seen["interval"] = sys.getswitchinterval()
        seen["argv"] = list(sys.argv)
        return 0

    monkeypatch.setattr(secantus.cli, "main", fake_main)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    before = sys.getswitchinterval()
    try:
        assert dev_store.main(["0.5", "--port", "1234"]) == 0
    finally:
        sys.setswitchinterval(before)
    assert seen == {"interval": pytest.approx(0.0005), "argv": ["secantusd-py", "--port", "1234"]}


def test_the_stack_starts_the_store_through_the_launcher() -> None:
    command = mongo_command(27017, "/tmp/db", switch_interval_ms=0.25)
    assert command[:4] == [sys.executable, "-m", "devstack.dev_store", "0.25"]
    assert command[4:6] == ["--standalone", "--host"]
