"""The service's own failure kinds, and the one place that maps the driver's errors to them.

Control flow (retry a task, fail a job, answer 503) is steered by these types only: the
retry list of the worker tasks and the 503 handlers of the API name them, never a library's
exception. ``store_errors()`` wraps calls into the store and says which kind a driver error
is, from its class and from the server's error code (real MongoDB, replica sets and mongos
report failovers and chunk migrations as codes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pymongo
from pymongo.errors import (
    ConnectionFailure,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
    WTimeoutError,
)


class TransientError(Exception):
    """Retry the task: the same work will succeed once the cause passes."""


class PermanentError(Exception):
    """Fail the job: retrying would fail the same way. The message is for the user."""


class StoreUnavailable(TransientError):
    """The store cannot be reached: readers answer 503, tasks retry."""


class DeadlineExceeded(StoreUnavailable):
    """The request's time budget ran out before the store answered (503, never a 404)."""


class CircuitOpen(StoreUnavailable):
    """The store failed repeatedly: this process refuses store-bound requests for a moment."""


class StoreBusy(TransientError):
    """The store answered, but with a failover, migration or interruption in progress."""


class DropTimedOut(StoreBusy):
    """A collection's drop outlived its own deadline (``DROP_TIMEOUT_S``): the store may
    still be dropping it; a later cleanup finishes the removal."""


class BrokerUnavailable(TransientError):
    """The task queue cannot be reached: enqueueing the next step must be tried again."""


# Server codes that mean "try again": failover and shutdown (primary stepped down, node
# shutting down, not primary), network errors between mongos and a shard, stale routing
# after a chunk migration (StaleShardVersion 63, StaleEpoch 150, StaleConfig 13388),
# interruptions (Interrupted 11601, ExceededTimeLimit 262, MaxTimeMSExpired 50), lock and
# write conflicts (LockBusy 46, WriteConflict 112) and unsatisfied write concerns (64).
TRANSIENT_CODES = frozenset(
    {
        6,  # HostUnreachable
        7,  # HostNotFound
        46,  # LockBusy
        50,  # MaxTimeMSExpired
        63,  # StaleShardVersion
        64,  # WriteConcernFailed
        89,  # NetworkTimeout
        91,  # ShutdownInProgress
        112,  # WriteConflict
        133,  # FailedToSatisfyReadPreference
        134,  # ReadConcernMajorityNotAvailableYet
        150,  # StaleEpoch
        189,  # PrimarySteppedDown
        202,  # NetworkInterfaceExceededTimeLimit
        262,  # ExceededTimeLimit
        9001,  # SocketException
        10107,  # NotWritablePrimary
        11600,  # InterruptedAtShutdown
        11601,  # Interrupted
        11602,  # InterruptedDueToReplStateChange
        13388,  # StaleConfig
        13435,  # NotPrimaryNoSecondaryOk
        13436,  # NotPrimaryOrSecondary
    }
)


def is_transient_code(code: object) -> bool:
    return isinstance(code, int) and code in TRANSIENT_CODES


def translate(exc: PyMongoError) -> Exception | None:
    """Our kind for a driver error, or None if it is a programming or data error."""
    if isinstance(exc, ConnectionFailure | ServerSelectionTimeoutError | NetworkTimeout):
        return StoreUnavailable(f"{type(exc).__name__}: {str(exc)[:300]}")
    if isinstance(exc, WriteConcernError | WTimeoutError | ExecutionTimeout):
        # The write may not survive a failover: doing it again is safe (every write of the
        # service is idempotent), counting it as done is not.
        return StoreBusy(f"{type(exc).__name__}: {str(exc)[:300]}")
    if isinstance(exc, OperationFailure) and is_transient_code(exc.code):
        return StoreBusy(f"error {exc.code}: {str(exc)[:300]}")
    return None


@contextmanager
def store_errors() -> Iterator[None]:
    """Re-raise driver errors as ``StoreUnavailable`` / ``StoreBusy``; others unchanged."""
    try:
        yield
    except PyMongoError as exc:
        ours = translate(exc)
        if ours is None:
            raise
        raise ours from exc


@contextmanager
def drop_deadline(seconds: float, what: str) -> Iterator[None]:
    """Store calls inside get ``seconds`` in all (the driver's client-side operation
    timeout, which also replaces the client's socket timeout for them), and running out
    of it raises ``DropTimedOut``; other driver errors go through unchanged, for
    ``store_errors`` to sort."""
    try:
        with pymongo.timeout(seconds):
            yield
    except PyMongoError as exc:
        if not exc.timeout:
            raise
        raise DropTimedOut(f"{what} took over {seconds:g} s: {str(exc)[:200]}") from exc
