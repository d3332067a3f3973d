"""The stack as a user meets it: uvicorn on a real port, real Celery workers, real store."""

from __future__ import annotations

import gzip
import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.generate import generate
from tests.helpers import expected_rows, wait_job

pytestmark = pytest.mark.usefixtures("worker", "clean_state")


@pytest.fixture
def http(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=30) as client:
        yield client


def test_upload_poll_lookup_over_http(http: httpx.Client, tmp_path: Path) -> None:
    path = tmp_path / "promotions.csv"
    generate(5_000, path, seed=21)
    with path.open("rb") as f:
        r = http.post("/add-promotions/", files={"file": ("promotions.csv", f, "text/csv")})
    assert r.status_code == 202, r.text
    job = wait_job(http, r.json()["job_id"])
    assert job["status"] == "succeeded" and job["rows_loaded"] == 5_000, job
    active = http.get("/datasets/active").json()
    assert active["version"] == job["dataset_version"] and active["rows"] == 5_000
    rows = list(expected_rows(path).items())
    for key, (row_id, price, date) in rows[::250]:
        for asked in (key, key.upper()):
            r = http.get(f"/promotions/{asked}")
            assert r.status_code == 200
            assert r.json() == {"id": row_id, "price": price, "expiration_date": date}
    assert http.get("/promotions/00000000-0000-0000-0000-000000000000").status_code == 404
    assert http.get("/promotions/not%20an%20id").status_code == 422


def test_raw_gzip_body_on_the_older_route(http: httpx.Client, tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    generate(1_000, path, seed=22)
    body = gzip.compress(path.read_bytes())
    r = http.post("/uploadfile/", content=body, headers={"Content-Type": "application/gzip"})
    assert r.status_code == 202, r.text
    job = wait_job(http, r.json()["job_id"])
    assert job["status"] == "succeeded" and job["bytes_total"] == path.stat().st_size


def test_cli_ingest_follows_the_job_and_reports(api_url: str, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    cli = [sys.executable, "-m", "cli.main"]
    subprocess.run([*cli, "generate", "2000", str(good), "--seed", "23"], check=True)
    done = subprocess.run(
        [*cli, "ingest", str(good), "--url", api_url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout and "2000 rows loaded" in done.stdout
    assert "rows/s" in done.stdout and "loading" in done.stdout  # rate and phase durations
    # Progress off a terminal: timestamped lines on stderr, upload then job.
    assert re.search(r"\(100\.0%\)  [\d.]+ [KMG]?B/s  ETA", done.stderr), done.stderr
    assert re.search(r"job \w{8}  done +2,000 rows  [\d,]+ rows/s  0 rejected", done.stderr)
    bad.write_text("this is not,a promotions,file\n" * 50)
    failed = subprocess.run(
        [*cli, "ingest", str(bad), "--url", api_url], capture_output=True, text=True, timeout=120
    )
    assert failed.returncode == 1
    assert "failed: none of the first 50 rows is valid" in failed.stderr


def test_cli_progress_bars_on_a_terminal(api_url: str, tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    generate(3_000, path, seed=24)
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "ingest", str(path), "--url", api_url],
        stdout=subprocess.PIPE,
        stderr=secondary,
        env={**os.environ, "COLUMNS": "160", "TERM": "xterm"},
    )
    os.close(secondary)
    screen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        screen += chunk
    assert proc.wait(120) == 0
    os.close(primary)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))
    assert re.search(r"uploading p\.csv .*/\d+\.\d+ kB .*B/s", text), text
    assert re.search(r"succeeded .*3,000 rows  [\d,]+ rows/s  0 rejected", text), text


def test_cli_jobs_job_datasets_and_activate(api_url: str, tmp_path: Path) -> None:
    def promotions(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args, "--url", api_url],
            capture_output=True,
            text=True,
            timeout=120,
        )

    for seed in (31, 32):
        path = tmp_path / f"{seed}.csv"
        generate(1_000, path, seed=seed)
        assert promotions("ingest", str(path)).returncode == 0
    jobs = json.loads(promotions("jobs", "--json").stdout)
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"]
    table = promotions("jobs").stdout
    assert all(j["job_id"] in table for j in jobs) and "1,000" in table
    assert "32.csv" in table and "31.csv" in table  # the names the files were sent as
    shown = promotions("job", jobs[0]["job_id"])
    assert shown.returncode == 0 and "phase_durations_s" in shown.stdout
    assert "32.csv" in shown.stdout
    assert json.loads(promotions("job", jobs[1]["job_id"], "--json").stdout) == {
        **jobs[1],
        "rejects": [],
    }
    assert promotions("job", "0" * 32).returncode == 3

    datasets = json.loads(promotions("datasets", "--json").stdout)
    assert [(d["version"], d["active"]) for d in datasets][:2] == [
        (jobs[0]["dataset_version"], True),
        (jobs[1]["dataset_version"], False),
    ]
    older = jobs[1]["dataset_version"]
    rolled = promotions("activate", str(older))
    assert rolled.returncode == 0 and f"version {older} is active" in rolled.stdout
    assert http_get(api_url, "/datasets/active")["version"] == older
    assert "* " in promotions("datasets").stdout
    refused = promotions("activate", "999")
    assert refused.returncode == 3 and "409 dataset version 999 does not exist" in refused.stderr


def http_get(api_url: str, path: str) -> Any:
    return httpx.get(f"{api_url}{path}").json()


def test_health_and_docs(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "store": "ok",
        "cache": "ok",
        "breaker": "closed",
    }
    for page in ("/docs", "/redoc"):
        html = http.get(page)
        assert html.status_code == 200
        # Every script and stylesheet comes from this app: the docs work without internet.
        assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html.text)
        assert assets and "cdn" not in html.text, html.text
        for asset in assets:
            assert asset.startswith("/") and http.get(asset).status_code == 200, asset
    spec = http.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            assert op.get("summary"), f"{method.upper()} {path} has no summary"
    job_fields = spec["components"]["schemas"]["JobStatus"]["properties"]
    assert {"rows_per_s", "eta_s", "phase_durations_s"} <= set(job_fields)
    promotion = spec["components"]["schemas"]["Promotion"]
    assert promotion["examples"][0]["price"] == 60.683466


@pytest.mark.parametrize("path", ["/add-promotions", "/uploadfile"])
def test_upload_paths_without_the_trailing_slash_answer_202_not_a_redirect(
    http: httpx.Client, path: str
) -> None:
    """A client that does not follow redirects (curl without -L, a cron job) must not get an
    empty 307 and believe the file was sent."""
    body = b"a1,1.5,2027-12-01 07:38:51+00\n"
    r = http.post(path, files={"file": ("p.csv", body)})  # httpx never follows redirects here
    assert r.status_code == 202, (r.status_code, r.headers)
    job = wait_job(http, r.json()["job_id"])
    assert job["status"] == "succeeded" and job["rows_loaded"] == 1, job
    paths = http.get("/openapi.json").json()["paths"]
    assert path not in paths and f"{path}/" in paths  # documented once
    assert f"`{path}`" in paths[f"{path}/"]["post"]["description"]
