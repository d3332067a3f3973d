"""The drop folder: files put in ``<data_dir>/inbox/`` are ingested as ordinary jobs
(``source: "inbox"``) by a periodic task that Celery beat schedules.

A file is first claimed (renamed into uploads/ under a server-generated name), and only then
becomes a job, so several beat or worker instances never ingest it twice. Gzip files are
inflated into uploads/ here, as the API does for uploads, so workers always split plain text.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from kombu.exceptions import OperationalError
from pymongo.database import Database

from shared.dataset import datasets, job_records, lifecycle
from shared.errors import TransientError, store_errors
from shared.fileformat.file_checks import GZIP_MAGIC
from shared.fileformat.gunzip_file_writer import (
    STORE_FILE_ROLE,
    StoredFileError,
    StoreLimits,
    part_files,
    store_file,
)
from shared.infra.log_context import job_id_var
from shared.infra.mongo import task_database as database
from shared.infra.safe_files import UnsafeFile, open_regular
from shared.infra.safe_text import escape_name
from shared.infra.task_names import SCAN_INBOX
from shared.settings import get_settings
from worker import inbox_files
from worker.celery_app import app
from worker.inbox_files import claim, ready_files
from worker.tasks import send_plan

log = logging.getLogger(__name__)
settings = get_settings()

SOURCE = "inbox"
# A claim none of whose files changed for this long, with no gzip being inflated, is dead.
# Well above a claim's quiet moments (a version number, a rename: seconds with the store
# failing over), well below the sweep's JOB_STALL_TIMEOUT_S.
CLAIM_STALE_S = 300.0


def _store_claimed(source: BinaryIO, claimed: Path, final: Path) -> int:
    """Plain files are renamed into place; gzip files are inflated. The limits of uploads
    apply: MAX_UPLOAD_BYTES to the file, the decompression bounds and the free-space
    margin to what is inflated. Size and content come from the checked handle ``source``."""
    size = os.fstat(source.fileno()).st_size
    if size > settings.max_upload_bytes:
        raise StoredFileError(
            f"the file is larger than the limit of {settings.max_upload_bytes} bytes",
            too_large=True,
        )
    if os.pread(source.fileno(), len(GZIP_MAGIC), 0) != GZIP_MAGIC:
        os.rename(claimed, final)  # uploads/ is the service's own: the name is the handle's
        return size
    stored, _ = store_file(source, final, StoreLimits.from_settings(settings))
    return stored


def _create_job(
    db: Database[Any], job_id: str, version: int, file_name: str, size: int, name: str
) -> None:
    shown = escape_name(name)  # stored and shown: valid UTF-8, no control characters
    doc = job_records.new_job(job_id, version, file_name, size, SOURCE, original_name=shown)
    job_records.insert_job(db, doc)
    log.info("inbox file %r is job %s (%d bytes, version %d)", shown, job_id, size, version)


def _give_back(claimed: Path, final: Path, path: Path) -> bool:
    """Return the file to the inbox for the next scan. If the partner has meanwhile dropped
    a new file under the same name, the old one comes back under another name instead of
    replacing it. False if neither copy was there."""
    if path.exists():
        path = path.with_name(f"{path.stem}.returned-{uuid.uuid4().hex[:8]}{path.suffix}")
    if claimed.exists():
        os.rename(claimed, path)
        final.unlink(missing_ok=True)
    elif final.exists():
        os.rename(final, path)
    else:
        return False
    return True


def ingest_file(db: Database[Any], path: Path) -> str | None:
    """Claim one ready file and make it a queued job; None if another scan claimed it."""
    job_id = uuid.uuid4().hex
    uploads = settings.uploads_dir
    claimed = inbox_files.claimed_path(uploads, job_id)
    marker = inbox_files.mark_claim(uploads, job_id, path.name)
    if not claim(path, claimed):
        marker.unlink(missing_ok=True)
        return None
    try:
        # The scan looked at the name; what was renamed may have been swapped since.
        source = open_regular(claimed)
    except UnsafeFile as exc:
        inbox_files.quarantine(claimed, settings.quarantine_dir, job_id, path.name, str(exc))
        marker.unlink(missing_ok=True)
        log.warning("inbox file %r quarantined as %s: %s", escape_name(path.name), job_id, exc)
        return None
    with source:
        return _ingest_claimed(db, path, job_id, claimed, marker, source)


def _ingest_claimed(
    db: Database[Any], path: Path, job_id: str, claimed: Path, marker: Path, source: BinaryIO
) -> str:
    uploads = settings.uploads_dir
    os.utime(source.fileno())  # claimed now: sweeps of old files in uploads/ must not take it
    final = inbox_files.stored_path(uploads, job_id)
    file_name = final.name
    token = job_id_var.set(job_id)
    try:
        error = None
        try:
            # Allocated at claim time: a file that takes long to inflate does not win over
            # an upload submitted after it was dropped.
            version = datasets.allocate_version_sync(db)
            try:
                size = _store_claimed(source, claimed, final)
            except StoredFileError as exc:
                if exc.no_space:  # the volume is full: the file waits in the inbox
                    raise
                size, error = 0, exc.detail
            _create_job(db, job_id, version, file_name, size, path.name)
        except BaseException:
            # Store down, disk full, network filesystem error, worker shutdown: the
            # partner's file goes back to the inbox for the next scan, never lost. (A kill
            # runs no handler: recover_dead_claims does this then.)
            _give_back(claimed, final, path)
            marker.unlink(missing_ok=True)
            raise
        claimed.unlink(missing_ok=True)  # a bad file, or the original of an inflated gzip
        marker.unlink(missing_ok=True)  # the job holds the file now
        if error:
            lifecycle.fail_job(db, job_id, error)
            log.warning("inbox file %r failed: %s", escape_name(path.name), error)
        else:
            try:
                send_plan(job_id)
            except (OperationalError, OSError) as exc:
                # The job is recorded and its file kept: the watchdog sends it again.
                log.warning("job %s recorded but not yet queued (%s)", job_id, exc)
    finally:
        job_id_var.reset(token)
    return job_id


def recover_dead_claims(db: Database[Any], now_ts: float, stale_s: float = CLAIM_STALE_S) -> int:
    """Claims whose worker died before their job was recorded: the file goes back to the
    inbox under its name (and is claimed again by this or a later scan). A claim counts as
    dead when none of its files changed for ``stale_s`` and no gzip is being inflated into
    uploads/ (an inflating claim's only sign of life is its partial file). Repeat-safe and
    safe against concurrent scans: every step is a rename or an unlink."""
    uploads = settings.uploads_dir
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    cutoff = now_ts - stale_s
    inflating = inbox_files.last_touched(part_files(uploads, STORE_FILE_ROLE))
    given_back = 0
    for job_id in inbox_files.marked_claims(uploads):
        files = inbox_files.claim_files(uploads, job_id)
        marker, claimed, final = files
        if db[lifecycle.JOBS].find_one({"_id": job_id}, {"_id": 1}) is not None:
            claimed.unlink(missing_ok=True)  # recorded: the job holds the stored file
            marker.unlink(missing_ok=True)
            continue
        if inbox_files.last_touched(files) > cutoff or inflating > cutoff:
            continue  # a claim under way
        try:
            name = Path(inbox_files.marked_name(marker)).name or f"{job_id}.csv"
        except FileNotFoundError:
            continue  # finished by a racing scan
        try:
            back = _give_back(claimed, final, settings.inbox_dir / name)
        except FileNotFoundError:
            continue  # a racing scan moved it first: the next scan finds nothing and ends it
        marker.unlink(missing_ok=True)
        if back:
            given_back += 1
            log.warning(
                "inbox file %r given back: its claim %s ended without a job (worker killed?)",
                escape_name(name),
                job_id,
            )
    return given_back


@app.task(name=SCAN_INBOX, acks_late=True)
def scan_inbox() -> list[str]:
    """Safe to run any number of times, concurrently too: each file is claimed once. A
    problem with one file (a name, a permission, a broken gzip) never stops the scan; only
    the store or broker being unreachable does (every other file would fail the same way)."""
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    db = database()
    recover_dead_claims(db, time.time())
    job_ids = []
    for path in ready_files(settings.inbox_dir, settings.inbox_settle_seconds):
        try:
            with store_errors():
                job_id = ingest_file(db, path)
        except StoredFileError as exc:  # no room to inflate it: given back, tried next scan
            log.warning("inbox file %r left in the inbox: %s", escape_name(path.name), exc.detail)
            continue
        except TransientError:
            raise
        except Exception:
            log.exception("inbox file %r skipped by this scan", escape_name(path.name))
            continue
        if job_id:
            job_ids.append(job_id)
    return job_ids
