"""`make run` waits for a slow store as long as it runs, saying so, not a fixed 90 s."""

from __future__ import annotations

import sys

import pytest

from devstack.run import wait_until_listening
from devstack.services import Service, free_port

# Listens only after ``delay`` seconds, like a store opening a big data directory.
SLOW_LISTENER = """
import socket, sys, time
time.sleep(float(sys.argv[2]))
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(60)
"""


def _slow(delay: float) -> Service:
    port = free_port()
    return Service("store", [sys.executable, "-c", SLOW_LISTENER, str(port), str(delay)], port=port)


def test_no_limit_waits_with_progress(capsys: pytest.CaptureFixture[str]) -> None:
    service = _slow(1.6).start()
    try:
        wait_until_listening(service, 0, every_s=0.5)
    finally:
        service.stop()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 2, lines
    assert lines[0].startswith(f"waiting for store to listen on port {service.port}: ")


def test_a_limit_still_ends_the_wait() -> None:
    service = _slow(30).start()
    try:
        with pytest.raises(TimeoutError, match="did not listen"):
            wait_until_listening(service, 0.5)
    finally:
        service.stop()


def test_a_store_that_exits_ends_an_unlimited_wait() -> None:
    service = Service("store", [sys.executable, "-c", "raise SystemExit(3)"], port=free_port())
    with pytest.raises(RuntimeError, match="exited with 3"):
        wait_until_listening(service.start(), 0)
