"""The store breaker's state machine, on a fake clock."""

from __future__ import annotations

import pytest

from api.store_breaker import StoreBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breaker(clock: Clock, changes: list[bool] | None = None, **kw: object) -> StoreBreaker:
    args: dict[str, object] = {"failures": 3, "open_s": 0.5, "probe_timeout_s": 2.0}
    args.update(kw)
    return StoreBreaker(
        clock=clock,
        on_change=None if changes is None else changes.append,
        **args,  # type: ignore[arg-type]
    )


def test_opens_after_failures_in_a_row_only(clock: Clock) -> None:
    changes: list[bool] = []
    b = breaker(clock, changes)
    b.failed()
    b.failed()
    b.succeeded()  # an answer in between: the count starts again
    b.failed()
    b.failed()
    assert b.state == "closed" and b.admit()
    b.failed()
    assert b.state == "open" and changes == [True] and b.opened == 1
    assert not b.admit()
    assert b.retry_after_s() == pytest.approx(0.5)


def test_half_open_lets_one_probe_through_and_its_success_closes(clock: Clock) -> None:
    changes: list[bool] = []
    b = breaker(clock, changes)
    for _ in range(3):
        b.failed()
    clock.now += 0.49
    assert b.state == "open" and not b.admit()
    clock.now += 0.02
    assert b.state == "half_open" and b.retry_after_s() == 0
    assert b.admit()  # the probe
    assert not b.admit()  # one at a time
    b.succeeded()
    assert b.state == "closed" and b.admit() and changes == [True, False]


def test_a_failed_probe_opens_it_again_for_the_full_period(clock: Clock) -> None:
    changes: list[bool] = []
    b = breaker(clock, changes)
    for _ in range(3):
        b.failed()
    clock.now += 0.6
    assert b.admit()
    clock.now += 0.3  # the probe waited out its deadline
    b.failed()
    assert b.state == "open" and not b.admit()
    assert b.retry_after_s() == pytest.approx(0.5)
    assert changes == [True]  # still open: no new transition, no second "opened"
    assert b.opened == 1
    clock.now += 0.5
    assert b.state == "half_open" and b.admit()


def test_late_failures_of_calls_admitted_before_it_opened_do_not_extend_it(clock: Clock) -> None:
    b = breaker(clock)
    for _ in range(3):
        b.failed()
    clock.now += 0.4
    b.failed()  # a call that was already out when it opened: no news
    clock.now += 0.1
    assert b.state == "half_open"


def test_a_probe_that_never_reports_frees_its_slot_after_its_timeout(clock: Clock) -> None:
    b = breaker(clock)
    for _ in range(3):
        b.failed()
    clock.now += 0.5
    assert b.admit()  # its caller is cancelled and never reports
    clock.now += 1.9
    assert not b.admit()
    clock.now += 0.2
    assert b.admit()


def test_disabled_never_opens(clock: Clock) -> None:
    changes: list[bool] = []
    b = breaker(clock, changes, enabled=False)
    for _ in range(10):
        b.failed()
    assert b.state == "closed" and b.admit() and changes == []
