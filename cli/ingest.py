"""Upload a file and follow its job to the end, with a progress bar."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed")


def _bar(job: dict[str, Any], width: int = 30) -> str:
    total = job.get("chunks_total") or 0
    done = job.get("chunks_done") or 0
    filled = int(width * done / total) if total else 0
    return (
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total or '?'} chunks "
        f"{job.get('rows_loaded', 0)} rows, {job.get('rows_rejected', 0)} rejected "
        f"({job.get('phase')})"
    )


def upload(client: httpx.Client, path: Path, token: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with path.open("rb") as f:
        response = client.post(
            "/add-promotions/", files={"file": (path.name, f)}, headers=headers, timeout=None
        )
    if response.status_code != 202:
        raise SystemExit(f"upload refused ({response.status_code}): {response.text}")
    accepted: dict[str, Any] = response.json()
    return accepted


def follow(client: httpx.Client, job_id: str, poll_s: float = 0.5) -> dict[str, Any]:
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").raise_for_status().json()
        if sys.stderr.isatty():
            sys.stderr.write(_bar(job))
            sys.stderr.flush()
        if job["status"] in TERMINAL:
            if sys.stderr.isatty():
                sys.stderr.write("\n")
            return job
        time.sleep(poll_s)


def ingest(path: Path, url: str, token: str | None) -> int:
    with httpx.Client(base_url=url, timeout=30) as client:
        accepted = upload(client, path, token)
        print(f"job {accepted['job_id']} queued")
        job = follow(client, accepted["job_id"])
    if job["status"] == "failed":
        print(f"job {job['job_id']} failed: {job['error']}", file=sys.stderr)
        return 1
    note = " (superseded by a newer upload)" if job.get("superseded") else ""
    print(
        f"job {job['job_id']} succeeded: version {job['dataset_version']}{note}, "
        f"{job['rows_loaded']} rows loaded, {job['rows_rejected']} rejected, "
        f"{job['duplicates']} duplicates"
    )
    return 0
