"""What an upload or a drop-folder file may take: parts of a multipart body, inflation of a
gzip relative to its compressed size, free space on the shared volume. Refusals are clear
and leave nothing behind. Real API, real store, real workers, the real filesystem (the
free-space margin is set relative to what the volume has free right now)."""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from shared.dataset import job_records
from shared.fileformat.gunzip_file_writer import free_bytes
from shared.settings import GiB, MiB, Settings
from tests.helpers import wait_for
from worker import inbox

pytestmark = pytest.mark.usefixtures("worker", "clean_state")

ROWS = b"".join(b"id-%d,1.5,2018-08-04 05:32:31 +0200 CEST\n" % i for i in range(200))


def _client(settings: Settings, **update: Any) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=update)))


def _nothing_kept(mongo_db: Any, settings: Settings) -> None:
    assert mongo_db[job_records.JOBS].count_documents({}) == 0
    assert list(settings.uploads_dir.iterdir()) == []


def test_an_upload_that_cannot_fit_is_refused_up_front(mongo_db: Any, settings: Settings) -> None:
    margin = free_bytes(settings.uploads_dir) + GiB  # the volume "has" less than the margin
    with _client(settings, min_free_bytes=margin) as client:
        r = client.post("/add-promotions/", files={"file": ("p.csv", ROWS)})
        assert r.status_code == 507, r.text
        assert "not enough free space on the shared volume" in r.json()["detail"]
        assert "nothing was kept" in r.json()["detail"]
    _nothing_kept(mongo_db, settings)


def test_an_upload_that_fills_the_margin_while_streaming_is_stopped(
    mongo_db: Any, settings: Settings
) -> None:
    bomb = gzip.compress(bytes(300 * MiB))  # 300 KB that inflate to 300 MiB

    def body() -> Iterator[bytes]:  # no Content-Length: the size is unknown up front
        for i in range(0, len(bomb), 64 * 1024):
            yield bomb[i : i + 64 * 1024]

    margin = free_bytes(settings.uploads_dir) - 32 * MiB  # room for 32 MiB only
    with _client(settings, min_free_bytes=margin) as client:
        r = client.post(
            "/add-promotions/", content=body(), headers={"Content-Type": "application/gzip"}
        )
    assert r.status_code == 507, r.text
    assert "not enough free space" in r.json()["detail"]
    _nothing_kept(mongo_db, settings)


def test_a_gzip_inflating_past_the_ratio_is_refused(mongo_db: Any, settings: Settings) -> None:
    bomb = gzip.compress(bytes(64 * MiB))  # a ratio near 1000
    with _client(settings, decompressed_floor_bytes=MiB, max_decompression_ratio=100) as client:
        r = client.post("/add-promotions/", files={"file": ("p.csv.gz", bomb)})
        assert r.status_code == 413, r.text
        assert "100 times the" in r.json()["detail"]
        assert "MAX_DECOMPRESSION_RATIO" in r.json()["detail"]
        _nothing_kept(mongo_db, settings)
        ok = client.post("/add-promotions/", files={"file": ("p.csv.gz", gzip.compress(ROWS))})
        assert ok.status_code == 202, ok.text


def test_too_many_multipart_parts_are_refused(mongo_db: Any, settings: Settings) -> None:
    parts = b"".join(
        b'--XyZ\r\nContent-Disposition: form-data; name="n%d"\r\n\r\nx\r\n' % i for i in range(40)
    )
    body = parts + b'--XyZ\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + ROWS
    with _client(settings) as client:
        r = client.post(
            "/add-promotions/",
            content=body + b"\r\n--XyZ--\r\n",
            headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
        )
    assert r.status_code == 413, r.text
    assert f"more than {settings.max_multipart_parts} parts" in r.json()["detail"]
    _nothing_kept(mongo_db, settings)


# --- the drop folder: the same limits --------------------------------------------------


def _drop(settings: Settings, name: str, content: bytes) -> None:
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    path = settings.inbox_dir / name
    path.write_bytes(content)
    old = time.time() - 5
    os.utime(path, (old, old))


def _only_job(mongo_db: Any) -> dict[str, Any]:
    done = {"status": {"$in": list(job_records.FINISHED)}}
    job: dict[str, Any] = wait_for(lambda: mongo_db[job_records.JOBS].find_one(done), 60)
    assert mongo_db[job_records.JOBS].count_documents({}) == 1
    return job


def test_a_dropped_gzip_bomb_fails_by_the_ratio(
    mongo_db: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox.settings, "decompressed_floor_bytes", MiB)
    monkeypatch.setattr(inbox.settings, "max_decompression_ratio", 100)
    _drop(settings, "bomb.csv.gz", gzip.compress(bytes(64 * MiB)))
    assert len(inbox.scan_inbox()) == 1
    job = _only_job(mongo_db)
    assert job["status"] == "failed" and "100 times the" in job["error"], job
    assert list(settings.uploads_dir.iterdir()) == []
    assert list(settings.inbox_dir.iterdir()) == []


def test_a_dropped_file_over_the_upload_limit_fails(
    mongo_db: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox.settings, "max_upload_bytes", 1000)
    _drop(settings, "big.csv", ROWS)
    assert len(inbox.scan_inbox()) == 1
    job = _only_job(mongo_db)
    assert job["status"] == "failed" and "larger than the limit of 1000 bytes" in job["error"]
    assert list(settings.uploads_dir.iterdir()) == []


def test_a_dropped_gzip_waits_in_the_inbox_while_the_volume_is_full(
    mongo_db: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _drop(settings, "later.csv.gz", gzip.compress(ROWS))
    monkeypatch.setattr(inbox.settings, "min_free_bytes", free_bytes(settings.data_dir) + GiB)
    assert inbox.scan_inbox() == []
    assert [p.name for p in settings.inbox_dir.iterdir()] == ["later.csv.gz"]  # given back
    assert list(settings.uploads_dir.iterdir()) == []  # nothing partial
    assert mongo_db[job_records.JOBS].count_documents({}) == 0
    monkeypatch.setattr(inbox.settings, "min_free_bytes", 0)  # room again: the next scan
    time.sleep(settings.inbox_settle_seconds + 0.1)  # the claim touched it
    assert len(inbox.scan_inbox()) == 1
    job = _only_job(mongo_db)
    assert job["status"] == "succeeded" and job["rows_loaded"] == 200, job
