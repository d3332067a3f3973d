"""The drop folder with the real store, the real broker and real Celery workers (and, once,
real Celery beat): a file put in inbox/ becomes exactly one ordinary job."""

from __future__ import annotations

import gzip
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cli.generate import generate
from devstack.services import Service, beat_command
from shared.dataset import lifecycle
from shared.settings import Settings
from tests.helpers import expected_rows, stored_rows, wait_for
from worker.inbox import scan_inbox

pytestmark = pytest.mark.usefixtures("worker", "clean_state")


def _drop(settings: Settings, name: str, rows: int, seed: int, age_s: float = 5.0) -> Path:
    """Write a file into the inbox as a partner would, already settled."""
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    path = settings.inbox_dir / name
    generate(rows, path, seed=seed, compress=name.endswith(".gz"))
    old = time.time() - age_s
    os.utime(path, (old, old))
    return path


def _finished(mongo_db: Any, job_id: str, timeout: float = 120) -> dict[str, Any]:
    done = {"_id": job_id, "status": {"$in": list(lifecycle.FINISHED)}}
    return wait_for(lambda: mongo_db[lifecycle.JOBS].find_one(done), timeout)  # type: ignore[no-any-return]


def test_a_dropped_file_becomes_one_job_even_when_scans_race(
    mongo_db: Any, settings: Settings
) -> None:
    path = _drop(settings, "partner.csv", 3_000, seed=21)
    want = expected_rows(path)
    results: list[list[str]] = []
    scans = [threading.Thread(target=lambda: results.append(scan_inbox())) for _ in range(2)]
    for scan in scans:
        scan.start()
    for scan in scans:
        scan.join()
    assert scan_inbox() == []  # a third scan finds nothing left
    job_ids = [job_id for found in results for job_id in found]
    assert len(job_ids) == 1
    assert mongo_db[lifecycle.JOBS].count_documents({}) == 1
    job = _finished(mongo_db, job_ids[0])
    assert job["status"] == "succeeded", job
    assert job["source"] == "inbox" and job["original_name"] == "partner.csv"
    assert job["rows_loaded"] == 3_000 and job["dataset_version"] == job["version"]
    assert list(settings.inbox_dir.iterdir()) == []
    assert len(stored_rows(mongo_db, job["version"])) == len(want)
    wait_for(lambda: not any(settings.uploads_dir.iterdir()), 10)  # removed once loaded


def test_temporary_names_and_unsettled_files_are_left_alone(
    mongo_db: Any, settings: Settings
) -> None:
    names = [".partner.csv", "partner.csv.part", "partner.csv.tmp"]
    for i, name in enumerate(names):
        _drop(settings, name, 10, seed=30 + i)
    fresh = _drop(settings, "still-writing.csv", 10, seed=40, age_s=0)
    assert scan_inbox() == []
    assert sorted(p.name for p in settings.inbox_dir.iterdir()) == sorted([*names, fresh.name])
    assert mongo_db[lifecycle.JOBS].count_documents({}) == 0
    # Renamed into place (the partner convention), it is taken on the next scan.
    os.rename(settings.inbox_dir / "partner.csv.part", settings.inbox_dir / "partner.csv")
    old = time.time() - 5
    os.utime(settings.inbox_dir / "partner.csv", (old, old))
    os.utime(fresh)  # still being written
    [job_id] = scan_inbox()
    assert _finished(mongo_db, job_id)["status"] == "succeeded"
    assert not (settings.inbox_dir / "partner.csv").exists() and fresh.exists()
    for name in names:
        (settings.inbox_dir / name).unlink(missing_ok=True)
    fresh.unlink()


def test_gzip_files_are_inflated_and_corrupt_ones_fail_with_a_reason(
    mongo_db: Any, settings: Settings
) -> None:
    plain_size = len(gzip.decompress(_drop(settings, "a.csv.gz", 2_000, seed=50).read_bytes()))
    [job_id] = scan_inbox()
    job = _finished(mongo_db, job_id)
    assert job["status"] == "succeeded" and job["rows_loaded"] == 2_000, job
    assert job["bytes_total"] == plain_size  # what workers split is the inflated text
    broken = settings.inbox_dir / "b.csv.gz"
    broken.write_bytes(gzip.compress(b"x,1,2018-08-04 05:32:31 +0200 CEST\n" * 100)[:-12])
    old = time.time() - 5
    os.utime(broken, (old, old))
    [job_id] = scan_inbox()
    job = _finished(mongo_db, job_id, 10)
    assert job["status"] == "failed" and "truncated" in job["error"]
    assert list(settings.inbox_dir.iterdir()) == []
    assert not any(p.name.startswith(".inbox-") for p in settings.uploads_dir.iterdir())


def test_celery_beat_schedules_the_scan(
    mongo_db: Any, settings: Settings, tmp_path: Path, logs_dir: Path
) -> None:
    beat = Service(
        "beat",
        beat_command(str(tmp_path / "schedule")),
        env={"INBOX_POLL_SECONDS": "0.5"},
        log_path=logs_dir / f"beat-{uuid.uuid4().hex[:6]}.log",
    )
    beat.start()
    try:
        _drop(settings, "scheduled.csv", 500, seed=60)
        job = wait_for(lambda: mongo_db[lifecycle.JOBS].find_one({"source": "inbox"}), 60)
        job = _finished(mongo_db, job["_id"])
        assert job["status"] == "succeeded" and job["rows_loaded"] == 500
    finally:
        beat.stop()
    assert mongo_db[lifecycle.JOBS].count_documents({}) == 1


_KILLED_MID_CLAIM = """
import os, signal, sys
from pathlib import Path
import worker.inbox as inbox
from shared.infra.mongo import task_database

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[1] == "before storing":
    inbox.datasets.allocate_version_sync = killed
else:
    inbox._create_job = killed
inbox.ingest_file(task_database(), Path(sys.argv[2]))
"""


@pytest.mark.parametrize(
    ("name", "killed_at"),
    [
        ("partner.csv", "before storing"),  # left: the claimed file
        ("partner.csv", "before the job"),  # left: the stored <id>.csv, no job
        ("partner.csv.gz", "before the job"),  # left: the claimed gzip and its inflated copy
    ],
)
def test_a_worker_killed_mid_claim_gives_the_file_back_never_deletes_it(
    mongo_db: Any, settings: Settings, name: str, killed_at: str
) -> None:
    """A kill runs no clean-up: the partner's only copy sits in uploads/ under a server
    name with no job. The sweep of old uploads must not take it, and a later scan gives
    it back to the inbox, where it becomes a job like any other."""
    import subprocess
    import sys

    from worker import upkeep
    from worker.inbox import CLAIM_STALE_S, recover_dead_claims

    path = _drop(settings, name, 500, seed=31)
    original = path.read_bytes()
    plain = settings.data_dir / "expected.csv"
    plain.write_bytes(gzip.decompress(original) if name.endswith(".gz") else original)
    want = expected_rows(plain)
    plain.unlink()
    died = subprocess.run([sys.executable, "-c", _KILLED_MID_CLAIM, killed_at, str(path)])
    assert died.returncode == -9
    assert not path.exists() and mongo_db[lifecycle.JOBS].count_documents({}) == 0

    later = time.time() + settings.job_stall_timeout_s + CLAIM_STALE_S
    upkeep.sweep_uploads(mongo_db, settings.uploads_dir, later)  # everything looks old
    assert recover_dead_claims(mongo_db, time.time()) == 0  # it may still be under way
    assert recover_dead_claims(mongo_db, later) == 1
    assert path.read_bytes() == original  # back under its name, as dropped
    assert list(settings.uploads_dir.iterdir()) == []

    job_ids = wait_for(scan_inbox, 10)  # once settled again (the claim touched it)
    assert len(job_ids) == 1
    job = _finished(mongo_db, job_ids[0])
    assert job["status"] == "succeeded" and job["original_name"] == name, job
    assert stored_rows(mongo_db, job["dataset_version"]) == want


def test_claim_leftovers_of_a_recorded_job_go_and_an_inflating_claim_is_left_alone(
    mongo_db: Any, settings: Settings
) -> None:
    from shared.dataset import job_records
    from worker import inbox_files
    from worker.inbox import CLAIM_STALE_S, recover_dead_claims

    uploads = settings.uploads_dir
    later = time.time() + CLAIM_STALE_S + 1
    # Killed after its job was recorded: the job holds <id>.csv; marker and gzip original go.
    inbox_files.mark_claim(uploads, "recorded", "a.csv.gz")
    inbox_files.claimed_path(uploads, "recorded").write_bytes(b"gzip original")
    inbox_files.stored_path(uploads, "recorded").write_text("x,1,2018-08-04 05:32:31 +0200\n")
    mongo_db[lifecycle.JOBS].insert_one(
        job_records.new_job("recorded", 7, "recorded.csv", 30, "inbox")
    )
    # Another claim, its gzip being inflated by a live worker: only its partial file moves.
    inbox_files.mark_claim(uploads, "inflating", "b.csv.gz")
    inbox_files.claimed_path(uploads, "inflating").write_bytes(b"gzip original")
    stale = time.time() - 2 * CLAIM_STALE_S
    for path in inbox_files.claim_files(uploads, "inflating"):
        if path.exists():
            os.utime(path, (stale, stale))
    part = uploads / ".inbox-host-123-abc.part"
    part.write_bytes(b"inflated so far")
    os.utime(part, (later, later))

    assert recover_dead_claims(mongo_db, later) == 0
    assert sorted(p.name for p in uploads.iterdir()) == sorted(
        [
            "recorded.csv",
            part.name,
            inbox_files.marker_path(uploads, "inflating").name,
            inbox_files.claimed_path(uploads, "inflating").name,
        ]
    )
    part.unlink()  # the inflating worker died too: now the claim is dead
    assert recover_dead_claims(mongo_db, later) == 1
    assert (settings.inbox_dir / "b.csv.gz").read_bytes() == b"gzip original"


# The drop folder trusts nothing: what the scan looked at may be swapped before the claim,
# and names are whatever bytes the partner's system wrote.


def _outside_file(settings: Settings) -> Path:
    """A file the service must never read: valid rows, outside the inbox."""
    secret = settings.data_dir / "secret.csv"
    generate(20, secret, seed=70)
    old = time.time() - 5
    os.utime(secret, (old, old))
    return secret


def _quarantined(settings: Settings) -> dict[str, str]:
    return {
        p.name: p.read_text()
        for p in settings.quarantine_dir.iterdir()
        if p.name.endswith(".reason.txt")
    }


def _nothing_taken(mongo_db: Any, settings: Settings) -> None:
    assert mongo_db[lifecycle.JOBS].count_documents({}) == 0
    assert not any(settings.uploads_dir.iterdir())  # no marker, claim or stored file left


def test_a_symlink_swapped_in_between_scan_and_claim_is_quarantined_never_read(
    mongo_db: Any, settings: Settings
) -> None:
    from worker.inbox import ingest_file
    from worker.inbox_files import ready_files

    secret = _outside_file(settings)
    _drop(settings, "partner.csv", 10, seed=71)
    [path] = ready_files(settings.inbox_dir, 0)
    path.unlink()
    path.symlink_to(secret)  # swapped after the scan checked the name
    assert ingest_file(mongo_db, path) is None
    _nothing_taken(mongo_db, settings)
    [reason] = _quarantined(settings).values()
    assert "name: partner.csv" in reason and "symbolic link" in reason
    [link] = [p for p in settings.quarantine_dir.iterdir() if p.is_symlink()]
    assert link.readlink() == secret  # moved aside as it is, the target untouched
    secret.unlink()


def test_a_hard_link_to_another_file_is_quarantined(mongo_db: Any, settings: Settings) -> None:
    secret = _outside_file(settings)
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    os.link(secret, settings.inbox_dir / "linked.csv")
    assert scan_inbox() == []
    _nothing_taken(mongo_db, settings)
    [reason] = _quarantined(settings).values()
    assert "name: linked.csv" in reason and "2 hard links" in reason
    secret.unlink()


def test_a_fifo_swapped_in_is_quarantined_without_blocking_the_scan(
    mongo_db: Any, settings: Settings
) -> None:
    from worker.inbox import ingest_file
    from worker.inbox_files import ready_files

    _drop(settings, "partner.csv", 10, seed=72)
    [path] = ready_files(settings.inbox_dir, 0)
    path.unlink()
    os.mkfifo(path)
    stop = threading.Event()

    def release_a_blocked_reader() -> None:
        # A scan that opens the FIFO by name blocks until a writer comes: this writer comes
        # (and goes at once) so that such a scan ends and the test fails instead of hanging.
        while not stop.wait(0.2):
            for fifo in settings.uploads_dir.glob(".inbox-*.claimed"):
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    continue  # no reader yet

    writer = threading.Thread(target=release_a_blocked_reader, daemon=True)
    writer.start()
    try:
        assert ingest_file(mongo_db, path) is None
    finally:
        stop.set()
        writer.join()
    _nothing_taken(mongo_db, settings)
    [reason] = _quarantined(settings).values()
    assert "FIFO" in reason


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        (os.fsdecode("promoções.csv".encode("cp1252")), "promo\\xe7\\xf5es.csv"),
        ("two\nlines.csv", "two\\x0alines.csv"),
    ],
    ids=["cp1252", "newline"],
)
def test_names_not_utf8_or_with_control_characters_are_ingested_escaped(
    mongo_db: Any, settings: Settings, name: str, shown: str
) -> None:
    """A Windows client's cp1252 name, a newline in a name: the file becomes a job whose name
    is stored and shown escaped, and the scan goes on to the files after it."""
    _drop(settings, name, 100, seed=73, age_s=10)
    _drop(settings, "later.csv", 100, seed=75, age_s=5)
    job_ids = scan_inbox()
    assert len(job_ids) == 2
    names = [_finished(mongo_db, job_id)["original_name"] for job_id in job_ids]
    assert names == [shown, "later.csv"]
    assert list(settings.inbox_dir.iterdir()) == []
    assert not any(p.name.startswith(".inbox-") for p in settings.uploads_dir.iterdir())


def test_a_dead_claim_of_a_non_utf8_name_goes_back_under_its_exact_name(
    mongo_db: Any, settings: Settings
) -> None:
    from worker import inbox_files
    from worker.inbox import CLAIM_STALE_S, recover_dead_claims

    name = os.fsdecode(b"caf\xe9.csv")
    inbox_files.mark_claim(settings.uploads_dir, "dead", name)
    inbox_files.claimed_path(settings.uploads_dir, "dead").write_bytes(b"rows\n")
    assert recover_dead_claims(mongo_db, time.time() + CLAIM_STALE_S + 1) == 1
    assert os.listdir(os.fsencode(settings.inbox_dir)) == [b"caf\xe9.csv"]
    (settings.inbox_dir / name).unlink()


def test_one_files_error_never_stops_the_scan(
    mongo_db: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import inbox

    first = _drop(settings, "first.csv", 100, seed=76, age_s=10)
    _drop(settings, "second.csv", 100, seed=77, age_s=5)
    real = inbox._store_claimed
    failed: list[bool] = []

    def input_output_error_once(*args: Any) -> int:
        if not failed:
            failed.append(True)
            raise OSError(5, "Input/output error")
        return real(*args)

    monkeypatch.setattr(inbox, "_store_claimed", input_output_error_once)
    [job_id] = scan_inbox()  # first.csv failed this scan; second.csv was still taken
    assert _finished(mongo_db, job_id)["original_name"] == "second.csv"
    assert first.exists()  # given back for the next scan, which takes it
    [job_id] = wait_for(scan_inbox, 10)
    assert _finished(mongo_db, job_id)["original_name"] == "first.csv"
