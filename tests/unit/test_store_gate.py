"""An upload already stored waits out an open breaker within its deadline
(``StoreGate.call_waiting``); a call that reached the store and failed is not repeated."""

from __future__ import annotations

import asyncio
import time

import pytest

from api.store_breaker import StoreBreaker
from api.store_gate import StoreGate, deadline_in
from shared.errors import CircuitOpen, StoreUnavailable


def open_gate(open_s: float) -> StoreGate:
    breaker = StoreBreaker(failures=2, open_s=open_s, probe_timeout_s=1.0)
    breaker.failed()
    breaker.failed()
    assert breaker.state == "open"
    return StoreGate(breaker)


def test_an_open_breaker_is_waited_out_within_the_deadline() -> None:
    gate = open_gate(0.3)
    calls: list[float] = []

    async def op() -> str:
        calls.append(time.monotonic())
        return "recorded"

    started = time.monotonic()
    assert asyncio.run(gate.call_waiting(deadline_in(5.0), op)) == "recorded"
    assert len(calls) == 1 and calls[0] - started >= 0.25  # once, as the probe
    assert gate.breaker.state == "closed"


def test_a_breaker_open_past_the_deadline_still_refuses() -> None:
    gate = open_gate(10.0)

    async def op() -> None:
        raise AssertionError("never called while the breaker is open")

    started = time.monotonic()
    with pytest.raises(CircuitOpen):
        asyncio.run(gate.call_waiting(deadline_in(0.3), op))
    assert time.monotonic() - started < 0.3


def test_a_call_that_failed_at_the_store_is_not_repeated() -> None:
    gate = StoreGate(StoreBreaker(failures=5, open_s=0.1, probe_timeout_s=1.0))
    calls = []

    async def op() -> None:
        calls.append(1)
        raise StoreUnavailable("connection refused")

    with pytest.raises(StoreUnavailable):
        asyncio.run(gate.call_waiting(deadline_in(5.0), op))
    assert calls == [1]
