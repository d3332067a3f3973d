"""What a job says when a task gives up: which part was down, never a broker outage
reported as a store outage."""

from __future__ import annotations

from shared.errors import BrokerUnavailable, PermanentError, StoreBusy, StoreUnavailable
from worker.tasks import failure_reason


def test_a_broker_outage_is_reported_as_the_task_queue() -> None:
    reason = failure_reason("plan_job", BrokerUnavailable("Connection refused"), 10)
    assert reason.startswith("the task queue was unavailable during plan_job")
    assert "store" not in reason and "after 10 retries" in reason


def test_a_store_outage_and_a_failover_are_told_apart() -> None:
    down = failure_reason("load_chunk", StoreUnavailable("no primary"), 3)
    busy = failure_reason("load_chunk", StoreBusy("error 13388: StaleConfig"), 3)
    assert down.startswith("the store was unavailable during load_chunk")
    assert busy.startswith("the store was busy") and "13388" in busy


def test_a_permanent_error_says_what_the_store_refused() -> None:
    reason = failure_reason("load_chunk", PermanentError("the store refused a row: error 2"), 3)
    assert reason == "the store refused a row: error 2 (in load_chunk)"


def test_anything_else_is_an_internal_error_without_details() -> None:
    assert failure_reason("finalize_job", KeyError("x"), 3) == (
        "internal error in finalize_job: KeyError"
    )
