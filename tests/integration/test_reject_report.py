"""GET /jobs/{id}/rejects: every rejected line of a job, with file line numbers, after the
job ends (succeeded or failed); removed after the retention period. Real API, real Celery
workers, real store; files load in several parallel chunks."""

from __future__ import annotations

import csv
import io
import itertools
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.dataset import job_records, lifecycle, reject_report
from shared.infra.timeutil import now
from shared.settings import Settings
from tests.helpers import wait_job
from worker import chunking, job_steps

pytestmark = pytest.mark.usefixtures("worker")

DATE = "2018-08-04 05:32:31 +0200 CEST"


def _file(rows: int, bad_every: int) -> tuple[bytes, dict[int, str]]:
    """Rows of about 60 bytes (several 256 KiB test chunks); every ``bad_every``-th bad."""
    lines, bad = [], {}
    for i in range(rows):
        if i % bad_every == bad_every - 1:
            line = f"id-{i},{'-' if i % 2 else ''}x{i},{DATE}" + ("y" * 3000 if i % 7 == 0 else "")
            bad[i + 2] = line  # the header is line 1
        else:
            line = f"id-{i},{i}.25,{DATE}"
        lines.append(line)
    return ("id,price,expiration_date\n" + "\n".join(lines) + "\n").encode(), bad


def _rejects(client: TestClient, job_id: str, lines: int | None = None) -> list[list[str]]:
    r = client.get(f"/jobs/{job_id}/rejects")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert f"rejects-{job_id}.csv" in r.headers["content-disposition"]
    if lines is not None:
        assert r.headers["lines-covered"] == str(lines)
    return list(csv.reader(io.StringIO(r.text, newline="")))


def _covered(client: TestClient, job_id: str) -> int:
    return int(client.get(f"/jobs/{job_id}/rejects").headers["lines-covered"])


def _check(rows: list[list[str]], bad: dict[int, str]) -> None:
    assert rows[0] == ["line", "reason", "raw"]
    assert [int(r[0]) for r in rows[1:]] == sorted(bad)
    for line, reason, raw in rows[1:]:
        assert raw == bad[int(line)][: reject_report.RAW_CHARS]
        assert "not a decimal number" in reason or "line is too long" in reason


def test_every_reject_of_a_succeeded_job_is_downloadable_with_file_line_numbers(
    client: TestClient, settings: Settings
) -> None:
    content, bad = _file(30_000, 200)  # 150 bad rows: more than the 100 of the preview
    assert len(content) > 4 * settings.chunk_size_bytes
    r = client.post("/add-promotions/", files={"file": ("p.csv", content)})
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert job["chunks_total"] >= 4
    assert job["rows_rejected"] == len(bad) == 150
    assert len(job["rejects"]) == 100  # the preview
    assert [x["line"] for x in job["rejects"]] == sorted(bad)[:100]
    rows = _rejects(client, job["job_id"], content.count(b"\n"))
    _check(rows, bad)
    # The chunk results are gone; the index kept what the report needs.
    assert reject_report.index_file(settings.rejects_dir, job["job_id"]).exists()
    assert _rejects(client, job["job_id"]) == rows


def _never_stopped_early(content: bytes, bad: dict[int, str], settings: Settings) -> int:
    """Chunks of the file, after checking that no set of them short of all can prove the
    file hopeless: whatever order its chunks finish in, the job maps it whole."""
    size = chunking.chunk_size_for(len(content), settings.chunk_size_bytes)
    ranges = chunking.plan_chunks(io.BytesIO(content), len(content), size)
    counts = []
    line = 1
    for start, end in ranges:
        lines = content[start:end].count(b"\n")
        rejected = sum(1 for n in range(line, line + lines) if n in bad)
        counts.append((end - start, lines - (line == 1), rejected))  # less the header
        line += lines
    for taken in itertools.product((False, True), repeat=len(ranges)):
        if all(taken):
            continue
        done = [c for c, t in zip(counts, taken, strict=True) if t]
        job = {
            "file_bytes": len(content),
            "bytes_done": sum(c[0] for c in done),
            "rows_rejected": sum(c[2] for c in done),
            "rows_loaded": sum(c[1] - c[2] for c in done),
        }
        assert not job_steps.hopeless(job, settings.reject_ratio), taken
    return len(ranges)


def test_a_failed_job_has_its_full_report_too(client: TestClient, settings: Settings) -> None:
    """A file over the threshold only as a whole: it is mapped to the end, then fails, and
    its report has every reject (Lines-Covered: every line)."""
    content, bad = _file(12_000, 50)  # 2 %: over the threshold of 1 %
    assert _never_stopped_early(content, bad, settings) > 1
    r = client.post("/add-promotions/", files={"file": ("p.csv", content)})
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "failed" and "are invalid" in job["error"], job
    assert "stopped early" not in job["error"]
    _check(_rejects(client, job["job_id"], content.count(b"\n")), bad)


def test_a_job_stopped_early_reports_the_lines_it_read(
    client: TestClient, settings: Settings
) -> None:
    """A fifth of the rows bad, many chunks: the first chunks mapped prove it, the job stops, and
    its report lists every reject of the file's lines up to the first chunk it never read,
    as the Lines-Covered header says."""
    content, bad = _file(20_000, 5)  # 20 % bad, 11 chunks: proven after 4 in order
    r = client.post("/add-promotions/", files={"file": ("p.csv", content)})
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "failed" and "stopped early" in job["error"], job
    rows = _rejects(client, job["job_id"])
    covered = _covered(client, job["job_id"])
    assert 0 < covered < content.count(b"\n")
    _check(rows, {n: line for n, line in bad.items() if n <= covered})
    assert [x["line"] for x in job["rejects"]] == sorted(bad)[: len(job["rejects"])]


def test_a_clean_file_has_an_empty_report(client: TestClient) -> None:
    r = client.post("/add-promotions/", files={"file": ("p.csv", f"a,1,{DATE}\n".encode())})
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "succeeded"
    assert _rejects(client, job["job_id"]) == [["line", "reason", "raw"]]


def test_unknown_and_running_jobs(client: TestClient, mongo_db: Any) -> None:
    assert client.get("/jobs/nope/rejects").status_code == 404
    doc = job_records.new_job("f" * 32, 99, "x.csv", 1, "upload")
    doc["status"] = lifecycle.RUNNING
    mongo_db[lifecycle.JOBS].insert_one(doc)
    r = client.get(f"/jobs/{'f' * 32}/rejects")
    assert r.status_code == 409 and "still running" in r.json()["detail"]


def test_reports_go_after_the_retention_period_and_orphans_after_the_stall_timeout(
    client: TestClient, mongo_db: Any, settings: Settings
) -> None:
    content, bad = _file(3_000, 100)
    r = client.post("/add-promotions/", files={"file": ("p.csv", content)})
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "succeeded" and job["rows_rejected"] == len(bad)
    directory = settings.rejects_dir
    orphan = reject_report.chunk_file(directory, "e" * 32, 0)  # a job that does not exist
    orphan.write_text("1,x,y\r\n")
    fresh_orphan = reject_report.chunk_file(directory, "d" * 32, 0)
    fresh_orphan.write_text("1,x,y\r\n")
    long_ago = time.time() - 3600
    os.utime(orphan, (long_ago, long_ago))
    mine = sorted(p.name for p in directory.iterdir() if p.name.startswith(job["job_id"]))
    assert mine and f"{job['job_id']}.index.json" in mine

    # Within the retention period: kept; only the old orphan goes.
    assert reject_report.sweep(mongo_db, directory, 3600, long_ago + 1) == 1
    assert not orphan.exists() and fresh_orphan.exists()
    assert client.get(f"/jobs/{job['job_id']}/rejects").status_code == 200

    # Past it (the job ended longer ago than the retention): removed, and the API says so.
    mongo_db[lifecycle.JOBS].update_one(
        {"_id": job["job_id"]}, {"$set": {"finished_at": now() - timedelta(hours=2)}}
    )
    assert reject_report.sweep(mongo_db, directory, 3600, long_ago + 1) == len(mine)
    assert not any(p.name.startswith(job["job_id"]) for p in directory.iterdir())
    r = client.get(f"/jobs/{job['job_id']}/rejects")
    assert r.status_code == 410 and "was removed" in r.json()["detail"]


def test_the_watchdog_runs_the_sweep(client: TestClient, settings: Settings) -> None:
    from worker.tasks import fail_stalled_jobs

    orphan: Path = reject_report.chunk_file(settings.rejects_dir, "c" * 32, 0)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_text("1,x,y\r\n")
    long_ago = time.time() - settings.job_stall_timeout_s - 60
    os.utime(orphan, (long_ago, long_ago))
    fail_stalled_jobs()
    assert not orphan.exists()


def test_a_volume_that_cannot_take_the_index_does_not_stop_the_clean_up(
    mongo_db: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = "b" * 32
    mongo_db[job_records.CHUNKS].insert_one(
        {"_id": f"{job_id}:0", "job_id": job_id, "index": 0, "lines": 3, "rows_rejected": 1}
    )
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    reject_report.seal(mongo_db, blocked / "rejects", job_id)  # no exception
    assert "could not keep its reject report index" in caplog.text
    reject_report.seal(mongo_db, tmp_path / "rejects", job_id)
    assert reject_report.index_file(tmp_path / "rejects", job_id).exists()


def test_a_file_refused_from_its_first_rows_lists_them_in_its_report(
    client: TestClient, settings: Settings
) -> None:
    """Refused before any chunk loads ("none of the first N rows is valid"): the rows judged
    are in the report with their line numbers and reasons, and counted."""
    lines = [f"id-{i};{i};2018-08-04" for i in range(3000)]  # ~80 KiB: more than the sample
    content = ("id,price,expiration_date\n" + "\n".join(lines) + "\n").encode()
    r = client.post("/add-promotions/", files={"file": ("p.csv", content)})
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "failed", job
    judged = int(job["error"].split("none of the first ")[1].split()[0])
    assert 100 < judged < 3000
    assert job["rows_rejected"] == judged
    assert [x["line"] for x in job["rejects"]] == list(range(2, 102))  # the preview
    rows = _rejects(client, job["job_id"])
    assert rows[0] == ["line", "reason", "raw"]
    assert [int(r[0]) for r in rows[1:]] == list(range(2, judged + 2))
    for line, reason, raw in rows[1:]:
        assert reason == "expected 3 fields (id,price,expiration_date), found 1"
        assert raw == lines[int(line) - 2]
