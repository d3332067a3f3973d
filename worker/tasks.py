"""Celery tasks of ingestion: thin callers of ``worker.job_steps``, ``worker.finalizing``
and ``worker.upkeep``, which hold the work, and ``shared.dataset.lifecycle``, which holds every
state change.

Every task may run more than once (late acks, redelivery after a crash), so each one is
idempotent. Transient failures (``shared.errors.TransientError``: store unreachable or busy,
broker unreachable) are retried with backoff; when retries run out, or on any other error,
the job ends with a sentence a user can act on and the active dataset is never touched. A
task that cannot record that ending (the store is unreachable) goes back to the broker
instead of being acknowledged, until a delivery records it or finds the job ended.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Reject, TaskPredicate
from kombu.exceptions import OperationalError

from shared.dataset import job_records, lifecycle, reject_report
from shared.errors import (
    BrokerUnavailable,
    PermanentError,
    StoreUnavailable,
    TransientError,
    store_errors,
)
from shared.infra.log_context import job_id_var
from shared.infra.mongo import task_database as database
from shared.infra.mongo import task_insert_database
from shared.infra.task_names import (
    CLEANUP_DATASETS,
    FAIL_STALLED_JOBS,
    FINALIZE_JOB,
    LOAD_CHUNK,
    PLAN_JOB,
    WRITE_PARTITION,
)
from shared.infra.timeutil import now
from shared.readpath.pointer_channel import announce_active
from shared.settings import get_settings
from worker import job_steps, shuffle_files, throttle, upkeep
from worker.celery_app import app
from worker.finalizing import finalize_steps

log = logging.getLogger(__name__)
settings = get_settings()

UPLOAD_NAME = re.compile(r"[0-9a-f]{32}\.csv")


RETRY_BACKOFF_MAX_S = 60.0


@contextmanager
def own_errors() -> Iterator[None]:
    """Store and broker errors as ``StoreUnavailable`` / ``StoreBusy`` / ``BrokerUnavailable``."""
    with store_errors():
        try:
            yield
        except OperationalError as exc:
            raise BrokerUnavailable(str(exc)) from exc


class IngestTask(Task):  # type: ignore[misc]
    """Retries transient failures with backoff; when retries run out, or on any other error,
    the job fails clearly. A task that gives up without being able to record why is never
    acknowledged as done: its message goes back to the broker."""

    max_retries = settings.task_max_retries
    acks_late = True
    # A process killed mid-task (OOM, SIGKILL) is retried after a short delay and counted
    # against max_retries, so a chunk that kills every process it runs on cannot loop
    # forever; when retries run out the job stops moving and the watchdog fails it.
    retry_on_worker_lost = True
    default_retry_delay = 2

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Every log line of the task carries its job id. A transient failure is retried;
        once the retries are used up, one last attempt is made as soon as the store answers
        (so that a failure can be recorded, and so that an attempt that was under way when
        an outage ended does not fail the job for nothing); if that fails too, the job fails."""
        job_id = args[0] if args else kwargs.get("job_id")
        token = job_id_var.set(job_id)
        throttle.note_loading()  # the readers keep a load's time out of their calm level
        try:
            try:
                return self._attempt(job_id, args, kwargs, last=False)
            except TransientError as exc:
                if self.request.retries < self.max_retries:
                    self._retry(exc)
                self._until_store_answers(job_id, exc)
            return self._attempt(job_id, args, kwargs, last=True)
        finally:
            job_id_var.reset(token)

    def _attempt(self, job_id: str | None, args: Any, kwargs: Any, last: bool) -> Any:
        """One run of the task body. Driver and broker errors become the service's own
        kinds here, once, before the retry decision sees them (Celery's ``autoretry_for``
        sits inside the body and would only ever see the driver's). Any error but a
        transient one on a try that is not the last ends the job."""
        try:
            with own_errors():
                if last:  # within the same request: __call__ again would push an empty one
                    return self.run(*args, **kwargs)
                return super().__call__(*args, **kwargs)
        except TaskPredicate:  # Celery's own retry / ignore / reject signals
            raise
        except TransientError as exc:
            if last:
                self._give_up(job_id, exc)
            raise
        except Exception as exc:
            self._give_up(job_id, exc)
            raise

    def _retry(self, exc: TransientError) -> NoReturn:
        """Send the task again after a jittered, doubling delay (``TASK_RETRY_BACKOFF_S``,
        at most 60 s); the retry counts against ``TASK_MAX_RETRIES``.

        Celery turns a retry it cannot send (broker unreachable) into a reject *without*
        requeue, which would drop the only copy of the task: it goes back instead (when the
        reject cannot reach the broker either, the message stays unacknowledged there and
        the visibility timeout hands it out again). Nothing is counted against the budget."""
        ceiling = min(RETRY_BACKOFF_MAX_S, settings.task_retry_backoff_s * 2**self.request.retries)
        try:
            raise self.retry(exc=exc, countdown=random.uniform(0, ceiling))
        except Reject as unsent:
            log.warning("a retry could not be sent (%s): the task goes back to the broker", unsent)
            raise Reject(unsent.reason, requeue=True) from exc

    def _until_store_answers(self, job_id: str | None, exc: TransientError) -> None:
        """Retries are used up: returns once the store answers. Where it does not, the
        failure could not be recorded, and acknowledging the message would lose the task
        (the job would wait for the watchdog to fail it): the message goes back to the
        broker instead (``Reject(requeue=True)``). When the broker is unreachable too, the
        reject cannot reach it either; the message then stays unacknowledged there and the
        visibility timeout hands it out again.

        A delivery that comes back has no retries left: it tries once, and asks the store
        again. So it goes round as long as the store is down, each round taking the store's
        timeout twice (never a busy loop), and it ends when the store answers: with the
        work done, or the failure recorded, or finding the job ended (by the watchdog, after
        ``JOB_STALL_TIMEOUT_S``), in which case the task does nothing."""
        try:
            with own_errors():
                database().command("ping")
        except TransientError as unanswered:
            self._back_to_broker(job_id, exc, unanswered)

    def _give_up(self, job_id: str | None, exc: Exception) -> None:
        """The task stops for good: the job fails with a sentence saying why. If that cannot
        be recorded (the store went away again, or the broker did not take the clean-up),
        the task goes back to the broker as in ``_until_store_answers``."""
        if not job_id:
            return
        reason = failure_reason(self.name.split(".")[-1], exc, self.max_retries)
        # The full text (hosts, addresses) goes to the log only; the job says what happened.
        log.error("job %s: %s: %s", job_id, reason, exc)
        try:
            with own_errors():
                end_job(job_id, reason, finalizer=self.name == FINALIZE_JOB)
        except TransientError as unrecorded:
            self._back_to_broker(job_id, exc, unrecorded)

    def _back_to_broker(self, job_id: str | None, exc: Exception, why: Exception) -> NoReturn:
        reason = failure_reason(self.name.split(".")[-1], exc, self.max_retries)
        log.error(
            "job %s: gave up (%s) and could not record it (%s); the task goes back to the broker",
            job_id,
            reason,
            why,
        )
        raise Reject(reason, requeue=True) from why


def failure_reason(step: str, exc: Exception, retries: int) -> str:
    """The job's error when a task gives up: says which part was down, in the user's words."""
    if isinstance(exc, PermanentError):
        return f"{exc} (in {step})"
    if not isinstance(exc, TransientError):
        return f"internal error in {step}: {type(exc).__name__}"
    if isinstance(exc, BrokerUnavailable):
        what = "the task queue was unavailable"
    elif isinstance(exc, StoreUnavailable):
        what = "the store was unavailable"
    else:
        what = "the store was busy (failover, migration or interruption)"
    kind = _error_kind(str(exc))
    return f"{what} during {step} and stayed so after {retries} retries" + (
        f" ({kind})" if kind else ""
    )


# What of a driver's message may be shown to clients: its error code or class name, never
# the rest (server addresses, host names, replica set members). The full text is logged.
_ERROR_KIND = re.compile(r"(error \d+|[A-Za-z]+(?:Error|Timeout|Failure|Exception))\b")


def _error_kind(message: str) -> str | None:
    found = _ERROR_KIND.match(message)
    return found.group(1) if found else None


def end_job(job_id: str, reason: str, finalizer: bool) -> None:
    """A task gave up on a job. Once the finalizer has claimed it, only the finalizer's own
    failure may end it (by whether its data went live); a failing duplicate delivery of a
    chunk cannot."""
    db = database()
    job = job_records.load_job(db, job_id)
    if job is None:
        return
    if job["status"] == lifecycle.FINALIZING:
        ended = finalizer and lifecycle.decide_finalization(db, job, reason) is not None
    else:
        ended = lifecycle.fail_job(db, job_id, reason)
    if ended:
        clean_up_after(job)


def clean_up_after(job: dict[str, Any]) -> None:
    """A job ended: its chunk results and run files go now; the upload file and versions
    beyond the keep count now, and their collections once the grace period has passed."""
    reject_report.seal(database(), settings.rejects_dir, job["_id"])  # before chunk results go
    job_records.delete_chunk_results(database(), job["_id"])
    shuffle_files.remove_job_runs(settings.runs_dir, job["_id"])
    cleanup_datasets.apply_async(kwargs={"file_name": job.get("file")})
    cleanup_datasets.apply_async(countdown=settings.drop_grace_s + 5)


def send_plan(job_id: str) -> None:
    plan_job.apply_async(args=[job_id], task_id=f"plan-{job_id}")
    job_records.mark_enqueued_sync(database(), job_id)


@app.task(base=IngestTask, name=PLAN_JOB, bind=True)
def plan_job(self: Task, job_id: str) -> None:
    db = database()

    def enqueue(index: int, start: int, end: int) -> None:
        load_chunk.apply_async(args=[job_id, index, start, end], task_id=f"{job_id}-chunk-{index}")

    if job_steps.plan(db, settings, job_id, enqueue):
        _clean_up_if_ended(job_id)


@app.task(base=IngestTask, name=LOAD_CHUNK, bind=True)
def load_chunk(self: Task, job_id: str, index: int, start: int, end: int) -> None:
    db = database()
    outcome = job_steps.load(db, settings, job_id, index, start, end)
    if outcome == "last":

        def enqueue(partition: int) -> None:
            write_partition.apply_async(
                args=[job_id, partition], task_id=f"{job_id}-part-{partition}"
            )

        if job_steps.after_loading(db, settings, job_id, enqueue):
            _clean_up_if_ended(job_id)
    elif outcome == "ended":
        _clean_up_if_ended(job_id)


# A partition another delivery is reducing is looked at again after this long: done by then
# (nothing to do), still held (again later), or its holder died and the lease ran out.
BUSY_PARTITION_AGAIN_S = 30


@app.task(base=IngestTask, name=WRITE_PARTITION, bind=True)
def write_partition(self: Task, job_id: str, partition: int) -> None:
    outcome = job_steps.write_partition(
        database(), settings, job_id, partition, insert_db=task_insert_database()
    )
    if outcome == "busy":
        write_partition.apply_async(
            args=[job_id, partition],
            task_id=f"{job_id}-part-{partition}",
            countdown=BUSY_PARTITION_AGAIN_S,
        )
    elif outcome == "last":
        finalize_job.apply_async(args=[job_id])
    elif outcome == "ended":
        _clean_up_if_ended(job_id)


@app.task(base=IngestTask, name=FINALIZE_JOB, bind=True)
def finalize_job(self: Task, job_id: str) -> None:
    redis_url = settings.redis_url.get_secret_value()
    for _ in finalize_steps(database(), settings, job_id, lambda v: announce_active(redis_url, v)):
        pass
    _clean_up_if_ended(job_id)


def _clean_up_if_ended(job_id: str) -> None:
    """Whichever step ended the job (bad file, superseded, finished), its clean-up runs;
    repeat-safe, so a redelivery that finds the job ended runs it again harmlessly."""
    job = job_records.load_job(database(), job_id)
    if job is not None and job["status"] in lifecycle.FINISHED:
        clean_up_after(job)


@app.task(name=FAIL_STALLED_JOBS)
def fail_stalled_jobs() -> int:
    """Watchdog (periodic): a job whose tasks were all lost (worker host gone, broker
    flushed) would otherwise stay unfinished forever."""
    db = database()
    at = now()
    with store_errors():
        ended = upkeep.watchdog(db, settings, at, send_plan)
        for job_id in ended:
            _clean_up_if_ended(job_id)
        upkeep.sweep_uploads(
            db, settings.uploads_dir, (at.timestamp() - settings.job_stall_timeout_s)
        )
        upkeep.sweep_runs(db, settings.runs_dir)
        reject_report.sweep(
            db,
            settings.rejects_dir,
            settings.rejects_retention_s,
            at.timestamp() - settings.job_stall_timeout_s,
        )
    return len(ended)


@app.task(name=CLEANUP_DATASETS, acks_late=True)
def cleanup_datasets(file_name: str | None = None) -> None:
    """Retire versions beyond the keep count, remove collections of versions failed or
    retired longer than the grace period ago, remove a finished job's upload. Off the
    request path, periodic too, and safe to run any time and concurrently."""
    db = database()
    with store_errors():
        lifecycle.migrate_legacy_states(db)  # before anything reads the records
        upkeep.cleanup(db, settings, now())
    if file_name and UPLOAD_NAME.fullmatch(file_name):
        job = db[lifecycle.JOBS].find_one({"file": file_name}, {"status": 1})
        if job is None or job["status"] in lifecycle.FINISHED:  # never under a running job
            (settings.uploads_dir / file_name).unlink(missing_ok=True)
