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
    assert busy.startswith("the store was busy") and "(error 13388)" in busy


def test_a_permanent_error_says_what_the_store_refused() -> None:
    reason = failure_reason("load_chunk", PermanentError("the store refused a row: error 2"), 3)
    assert reason == "the store refused a row: error 2 (in load_chunk)"


def test_anything_else_is_an_internal_error_without_details() -> None:
    assert failure_reason("finalize_job", KeyError("x"), 3) == (
        "internal error in finalize_job: KeyError"
    )


def test_a_job_error_says_what_happened_without_quoting_internal_hosts() -> None:
    down = failure_reason(
        "plan_job",
        StoreUnavailable(
            "ServerSelectionTimeoutError: mongo-0.internal:27017: [Errno 111] Connection refused"
        ),
        3,
    )
    assert down == (
        "the store was unavailable during plan_job and stayed so after 3 retries "
        "(ServerSelectionTimeoutError)"
    )
    queue = failure_reason(
        "plan_job", BrokerUnavailable("Error 111 connecting to redis.internal:6379."), 3
    )
    assert "redis.internal" not in queue and "6379" not in queue
    busy = failure_reason("load_chunk", StoreBusy("error 112: WriteConflict on shard-a:27018"), 3)
    assert busy.endswith("(error 112)") and "shard-a" not in busy
