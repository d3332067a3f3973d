"""Which driver errors retry, which fail the job: every transient code, write-concern
errors, stale routing through mongos, against crafted driver errors (no server can be made
to fail over here)."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
)

from shared.errors import (
    TRANSIENT_CODES,
    PermanentError,
    StoreBusy,
    StoreUnavailable,
    store_errors,
    translate,
)
from worker.bucket_writer import write_buckets


class RecordingCollection:
    """Keeps what insert_many was asked: the writer's contract with the driver."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], bool]] = []

    def insert_many(self, docs: list[Any], ordered: bool) -> None:
        self.calls.append((docs, ordered))


def test_buckets_are_inserted_unordered_in_one_call() -> None:
    coll = RecordingCollection()
    write_buckets(coll, [ROW, ROW])  # type: ignore[arg-type]
    ((docs, ordered),) = coll.calls
    assert ordered is False  # one bucket already there must not stop the others
    assert [d.raw for d in docs] == [ROW, ROW]


def test_buckets_already_inserted_are_skipped() -> None:
    error = _bulk_error([{"index": 0, "code": 11000, "errmsg": "dup"}])
    write_buckets(RefusingCollection(error), [ROW])  # type: ignore[arg-type]


class RefusingCollection:
    """Answers every insert_many with one crafted BulkWriteError."""

    def __init__(self, error: BulkWriteError) -> None:
        self.error = error

    def insert_many(self, docs: Any, ordered: bool) -> None:
        raise self.error


def _bulk_error(write_errors: list[dict[str, Any]], wc_errors: list[Any] | None = None) -> Any:
    return BulkWriteError(
        {
            "writeErrors": write_errors,
            "writeConcernErrors": wc_errors or [],
            "nInserted": 0,
        }
    )


ROW = b"\x05\x00\x00\x00\x00"  # an empty BSON document: the writer never looks inside


def test_a_write_concern_error_retries_the_chunk_and_is_never_counted() -> None:
    """A failover can roll the whole batch back: counting it as written loses data."""
    error = _bulk_error([], [{"code": 64, "errmsg": "waiting for replication timed out"}])
    with pytest.raises(StoreBusy, match="write concern"):
        write_buckets(RefusingCollection(error), [ROW])  # type: ignore[arg-type]


# The server codes that mean "the same write will succeed later", by name (MongoDB's
# error_codes.yml). A code added to or dropped from TRANSIENT_CODES must be added or dropped
# here too, with its name: an accidental edit of the set fails below.
TRANSIENT_BY_NAME = {
    6: "HostUnreachable",
    7: "HostNotFound",
    46: "LockBusy",
    50: "MaxTimeMSExpired",
    63: "StaleShardVersion",
    64: "WriteConcernFailed",
    89: "NetworkTimeout",
    91: "ShutdownInProgress",
    112: "WriteConflict",
    133: "FailedToSatisfyReadPreference",
    134: "ReadConcernMajorityNotAvailableYet",
    150: "StaleEpoch",
    189: "PrimarySteppedDown",
    202: "NetworkInterfaceExceededTimeLimit",
    262: "ExceededTimeLimit",
    9001: "SocketException",
    10107: "NotWritablePrimary",
    11600: "InterruptedAtShutdown",
    11601: "Interrupted",
    11602: "InterruptedDueToReplStateChange",
    13388: "StaleConfig",
    13435: "NotPrimaryNoSecondaryOk",
    13436: "NotPrimaryOrSecondary",
}


def test_the_transient_codes_are_exactly_the_failover_migration_and_interruption_codes() -> None:
    assert set(TRANSIENT_CODES) == set(TRANSIENT_BY_NAME)


@pytest.mark.parametrize("code", sorted(TRANSIENT_BY_NAME))
def test_each_transient_code_retries_the_chunk(code: int) -> None:
    """A per-document failover error means the document was not written: never counted."""
    error = _bulk_error([{"index": 0, "code": code, "errmsg": TRANSIENT_BY_NAME[code]}])
    with pytest.raises(StoreBusy, match=f"^write error {code}: {TRANSIENT_BY_NAME[code]}$"):
        write_buckets(RefusingCollection(error), [ROW])  # type: ignore[arg-type]


def test_a_write_concern_error_retries_even_when_the_batch_also_met_duplicates() -> None:
    error = _bulk_error(
        [{"index": 0, "code": 11000, "errmsg": "dup"}],
        [{"code": 64, "errmsg": "waiting for replication timed out"}],
    )
    with pytest.raises(StoreBusy, match=r"^write concern not satisfied: .*replication timed out"):
        write_buckets(RefusingCollection(error), [ROW])  # type: ignore[arg-type]


@pytest.mark.parametrize("code", [None, "91", 91.0])
def test_a_write_error_without_an_integer_code_fails_the_job(code: object) -> None:
    """Only a known integer code retries; anything else is not understood, so not retried."""
    error = _bulk_error([{"index": 0, "code": code, "errmsg": "odd"}])
    with pytest.raises(PermanentError, match=f"^the store refused a bucket: error {code}: odd$"):
        write_buckets(RefusingCollection(error), [ROW])  # type: ignore[arg-type]


@pytest.mark.parametrize("code", [13388, 11601, 63, 150])  # StaleConfig, Interrupted, stale
def test_mongos_stale_routing_and_interruptions_are_transient(code: int) -> None:
    assert code in TRANSIENT_CODES


@pytest.mark.parametrize("code", [2, 121, 10334, 17280])  # BadValue, validation, too large
def test_a_deterministic_write_error_fails_the_job(code: int) -> None:
    error = _bulk_error([{"index": 0, "code": code, "errmsg": "no"}])
    with pytest.raises(PermanentError, match=f"^the store refused a bucket: error {code}: no$"):
        write_buckets(RefusingCollection(error), [ROW])  # type: ignore[arg-type]


def test_a_transient_error_after_duplicates_still_retries() -> None:
    """Duplicates alone are resolved; one transient error among them retries all."""
    error = _bulk_error(
        [
            {"index": 0, "code": 11000, "errmsg": "dup"},
            {"index": 1, "code": 13388, "errmsg": "stale config"},
        ]
    )
    with pytest.raises(StoreBusy):
        write_buckets(RefusingCollection(error), [ROW, ROW])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (AutoReconnect("primary stepped down"), StoreUnavailable),
        (ServerSelectionTimeoutError("no primary"), StoreUnavailable),
        (WriteConcernError("waiting for replication timed out", 64, {}), StoreBusy),
        (OperationFailure("StaleConfig", 13388), StoreBusy),
        (OperationFailure("Interrupted", 11601), StoreBusy),
        (OperationFailure("not primary", 10107), StoreBusy),
    ],
)
def test_driver_errors_become_the_services_own_kinds(error: Exception, kind: type) -> None:
    """A single-document metadata write that meets a failover longer than the driver's one
    retry must retry the task, not fail the job as an internal error."""
    with pytest.raises(kind), store_errors():
        raise error


@pytest.mark.parametrize("error", [OperationFailure("bad", 2), OperationFailure("auth", 13)])
def test_other_driver_errors_pass_unchanged(error: OperationFailure) -> None:
    assert translate(error) is None
    with pytest.raises(OperationFailure), store_errors():
        raise error


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (AutoReconnect("x" * 400), "AutoReconnect: " + "x" * 300),
        (WriteConcernError("y" * 400, 64, {}), "WriteConcernError: " + "y" * 300),
        (OperationFailure("z" * 400, 189), "error 189: " + "z" * 300),
    ],
)
def test_a_translated_error_names_its_cause_in_at_most_300_characters(
    error: PyMongoError, message: str
) -> None:
    assert str(translate(error)) == message
