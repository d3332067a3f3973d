"""Upload a file (bytes, rate, ETA), then follow its job (rows, rows/s, ETA, rejects) to the end."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx

from cli.client import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    Api,
    CliError,
    check,
    job_path,
)
from cli.progress import CountingReader, Reporter, human_seconds
from shared.dataset.lifecycle import FAILED, FINISHED, HELD


def upload(api: Api, path: Path, reporter: Reporter) -> dict[str, Any]:
    total = path.stat().st_size
    reporter.upload_started(path.name, total)
    try:
        with path.open("rb") as f, api.errors(f"upload of {path.name}"):
            reader = CountingReader(f, reporter.upload_progress)
            # No time limit on sending: a multi-GB file takes minutes; the server answers
            # once the file is stored.
            response = api.http.post(
                "/add-promotions/",
                files={"file": (path.name, reader, "text/csv")},  # type: ignore[dict-item]
                timeout=httpx.Timeout(30.0, write=None, read=300.0),
            )
    finally:
        reporter.upload_done()
    accepted: dict[str, Any] = check(response, "upload refused").json()
    return accepted


def follow(api: Api, job_id: str, reporter: Reporter, poll_s: float = 1.0) -> dict[str, Any]:
    """Poll the job until it ends; transient errors while polling are retried, not fatal:
    the job goes on on the server whatever happens to this terminal."""
    reporter.job_started(job_id)
    try:
        misses = 0
        while True:
            try:
                job: dict[str, Any] = api.get_json(job_path(job_id), f"job {job_id}")
                misses = 0
            except CliError as exc:
                misses += 1
                if exc.exit_code != EXIT_UNAVAILABLE or misses >= 30:
                    raise
                time.sleep(poll_s)
                continue
            reporter.job_progress(job)
            if job["status"] in FINISHED:
                return job
            time.sleep(poll_s)
    finally:
        reporter.job_done()


def report(job: dict[str, Any]) -> int:
    """The outcome on stdout (stderr for a failure) and the exit code."""
    job_id = job["job_id"]
    durations = job.get("phase_durations_s") or {}
    took = phases = ""
    if durations:
        phases = ", ".join(f"{k} {human_seconds(v)}" for k, v in durations.items() if k != "total")
        took = f" in {human_seconds(durations.get('total'))} ({phases})"
    if job["status"] in (FAILED, HELD):
        after = f" (after {human_seconds(durations.get('total'))}: {phases})" if took else ""
        print(f"job {job_id} {job['status']}: {job['error']}{after}", file=sys.stderr)
        return EXIT_JOB_FAILED
    note = " (superseded by a newer upload)" if job.get("superseded") else ""
    rate = f", {job['rows_per_s']:.0f} rows/s" if job.get("rows_per_s") else ""
    print(
        f"job {job_id} succeeded{took}: version {job['dataset_version']}{note}, "
        f"{job['rows_loaded']} rows loaded{rate}, {job['rows_rejected']} rejected, "
        f"{job['duplicates']} duplicates"
    )
    if job.get("rows_rejected"):
        print(f"rejected lines: promotions rejects {job_id} > rejects.csv")
    return EXIT_OK


def ingest(api: Api, path: Path, reporter: Reporter, poll_s: float) -> int:
    accepted = upload(api, path, reporter)
    print(f"job {accepted['job_id']} {accepted['status']}", flush=True)
    return report(follow(api, accepted["job_id"], reporter, poll_s))
