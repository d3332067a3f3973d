"""The ingestion pipeline with real Celery worker processes, real Redis broker and a real
MongoDB-compatible server: upload -> job -> parallel chunks -> atomic switch."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cli.generate import generate
from shared.dataset import datasets
from shared.settings import Settings
from tests.helpers import expected_rows, stored_rows, wait_for, wait_job

pytestmark = pytest.mark.usefixtures("worker")


def _upload(client: TestClient, path: Path, field: str = "file") -> dict[str, Any]:
    with path.open("rb") as f:
        r = client.post("/add-promotions/", files={field: (path.name, f, "text/csv")})
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    assert r.headers["location"] == body["status_url"] == f"/jobs/{body['job_id']}"
    return body


def _assert_dataset_is(mongo_db: Any, version: int, path: Path) -> None:
    want = expected_rows(path)
    assert stored_rows(mongo_db, version) == want


def test_a_file_loads_in_parallel_chunks_with_exact_counts(
    client: TestClient, mongo_db: Any, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "p.csv"
    generate(20_000, path, seed=1)
    job = wait_job(client, _upload(client, path)["job_id"])
    assert job["status"] == "succeeded", job
    assert job["chunks_total"] == job["chunks_done"] > 1  # 256 KiB chunks in tests
    assert (job["rows_loaded"], job["rows_rejected"], job["duplicates"]) == (20_000, 0, 0)
    assert job["error"] is None and job["rejects"] == [] and not job["superseded"]
    _assert_dataset_is(mongo_db, job["dataset_version"], path)
    wait_for(lambda: client.get("/datasets/active").status_code == 200, 5)
    assert client.get("/datasets/active").json()["rows"] == 20_000
    for row_id, (orig, price, date) in list(expected_rows(path).items())[::400]:
        r = client.get(f"/promotions/{row_id}")
        assert r.json() == {"id": orig, "price": price, "expiration_date": date}
    # The upload and the shuffle's run files are removed once loaded.
    wait_for(lambda: not any(settings.uploads_dir.iterdir()), 10)
    assert not (settings.runs_dir / job["job_id"]).exists()
    # Buckets, not rows: about rows_per_bucket rows a document, a bucket count on record.
    version = job["dataset_version"]
    buckets = datasets.read_buckets_sync(mongo_db, version)
    assert buckets is not None and job["partitions_total"] == job["partitions_done"] >= 2
    stored = mongo_db[datasets.collection_name(version)].estimated_document_count()
    assert 0.9 * buckets <= stored <= buckets
    assert client.get("/datasets/active").json()["buckets"] == buckets


def test_an_upload_can_allow_the_dataset_to_shrink(
    client: TestClient, mongo_db: Any, tmp_path: Path
) -> None:
    path = tmp_path / "small.csv"
    generate(100, path, seed=4)
    with path.open("rb") as f:
        r = client.post(
            "/add-promotions/?allow_shrink=true", files={"file": (path.name, f, "text/csv")}
        )
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "succeeded" and job["allow_shrink"] is True


def test_a_new_upload_replaces_the_whole_dataset(
    client: TestClient, mongo_db: Any, tmp_path: Path
) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    generate(3_000, first, seed=2)
    generate(3_000, second, seed=3)
    assert wait_job(client, _upload(client, first)["job_id"])["status"] == "succeeded"
    job = wait_job(client, _upload(client, second)["job_id"])
    assert job["status"] == "succeeded"
    wait_for(lambda: client.get("/datasets/active").json()["version"] == job["dataset_version"], 5)
    only_first = next(iter(expected_rows(first)))
    assert client.get(f"/promotions/{only_first}").status_code == 404
    some_second = next(iter(expected_rows(second)))
    assert client.get(f"/promotions/{some_second}").status_code == 200


def test_gzip_upload_is_inflated_while_streaming(client: TestClient, tmp_path: Path) -> None:
    path = tmp_path / "p.csv.gz"
    generate(2_000, path, seed=4, compress=True)
    job = wait_job(client, _upload(client, path)["job_id"])
    assert job["status"] == "succeeded" and job["rows_loaded"] == 2_000


def test_too_many_bad_rows_fail_the_job_and_the_old_data_keeps_serving(
    client: TestClient, mongo_db: Any, settings: Settings, tmp_path: Path
) -> None:
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    generate(2_000, good, seed=5)
    generate(5_000, bad, seed=6, bad_ratio=0.05)
    ok = wait_job(client, _upload(client, good)["job_id"])
    job = wait_job(client, _upload(client, bad)["job_id"])
    assert job["status"] == "failed"
    assert "are invalid, more than the allowed 1.00%" in job["error"]
    assert job["partitions_done"] == 0  # failed once parsed: nothing written to the store
    # Run files removed: by the task that failed it, just after the job shows "failed".
    wait_for(lambda: not (settings.runs_dir / job["job_id"]).exists(), 10)
    assert job["rows_rejected"] > 0 and job["rejects"]
    first = job["rejects"][0]
    bad_lines = bad.read_text().splitlines()
    assert first["line"] >= 1 and bad_lines[first["line"] - 1]  # points at a real line
    assert client.get("/datasets/active").json()["version"] == ok["dataset_version"]
    some_good = next(iter(expected_rows(good)))
    assert client.get(f"/promotions/{some_good}").status_code == 200
    # The half-built collection is dropped in the background.
    name = datasets.collection_name(job_id_version(mongo_db, job["job_id"]))
    wait_for(lambda: name not in mongo_db.list_collection_names(), 30)


def job_id_version(mongo_db: Any, job_id: str) -> int:
    return int(mongo_db["jobs"].find_one({"_id": job_id})["version"])


def test_rejects_below_the_threshold_are_reported_with_file_line_numbers(
    client: TestClient, tmp_path: Path
) -> None:
    path = tmp_path / "p.csv"
    generate(3_000, path, seed=7)
    lines = path.read_text().splitlines()
    lines[1234] = "broken row"
    lines[2500] = lines[2500].replace(",", ",-", 1)
    path.write_text("\n".join(lines) + "\n")
    job = wait_job(client, _upload(client, path)["job_id"])
    assert job["status"] == "succeeded"
    assert job["rows_loaded"] == 2_998 and job["rows_rejected"] == 2
    assert [r["line"] for r in job["rejects"]] == [1235, 2501]
    assert "expected 3 fields" in job["rejects"][0]["reason"]
    assert "negative" in job["rejects"][1]["reason"]


def test_last_row_wins_for_duplicates_across_chunks(
    client: TestClient, mongo_db: Any, tmp_path: Path
) -> None:
    path = tmp_path / "dups.csv"
    generate(8_000, path, seed=8, duplicate_ratio=0.3)
    job = wait_job(client, _upload(client, path)["job_id"])
    assert job["status"] == "succeeded", job
    want = expected_rows(path)
    assert job["duplicates"] == 8_000 - len(want) > 1000
    _assert_dataset_is(mongo_db, job["dataset_version"], path)


def test_plainly_wrong_file_fails_fast_with_a_reason(client: TestClient, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 100)
    job = wait_job(client, _upload(client, path)["job_id"])
    assert job["status"] == "failed" and "binary" in job["error"]
    assert job["chunks_total"] is None


def test_reads_during_a_load_answer_from_the_old_version(
    client: TestClient, tmp_path: Path
) -> None:
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    generate(1_000, old, seed=9)
    generate(40_000, new, seed=10)
    assert wait_job(client, _upload(client, old)["job_id"])["status"] == "succeeded"
    old_rows = list(expected_rows(old).items())[:50]
    wait_for(lambda: client.get(f"/promotions/{old_rows[0][0]}").status_code == 200, 5)
    job_id = _upload(client, new)["job_id"]
    watcher = client.app.state.services.watcher  # type: ignore[attr-defined]
    old_version = watcher.current.version
    answers: list[int] = []
    stop = threading.Event()

    def read_old() -> None:
        while not stop.is_set():
            for row_id, _ in old_rows:
                code = client.get(f"/promotions/{row_id}").status_code
                if watcher.current.version != old_version:
                    return  # the new file went live: old ids may now be absent
                answers.append(code)

    wait_for(lambda: client.get(f"/jobs/{job_id}").json()["status"] == "running", 30)
    reader = threading.Thread(target=read_old)
    reader.start()
    try:
        job = wait_job(client, job_id)
    finally:
        stop.set()
        reader.join()
    assert job["status"] == "succeeded"
    assert len(answers) >= 50 and set(answers) == {200}


def test_broker_down_at_upload_is_503_and_keeps_nothing(
    clean_state: None, settings: Settings, tmp_path: Path, mongo_db: Any
) -> None:
    from pydantic import SecretStr

    from api.main import create_app
    from devstack.services import free_port

    path = tmp_path / "p.csv"
    generate(10, path, seed=11)
    cfg = settings.model_copy(
        update={"broker_url": SecretStr(f"redis://127.0.0.1:{free_port()}/1")}
    )
    with TestClient(create_app(cfg)) as c, path.open("rb") as f:
        r = c.post("/add-promotions/", files={"file": ("p.csv", f)})
    assert r.status_code == 503 and "job queue is unavailable" in r.json()["detail"]
    assert list(settings.uploads_dir.iterdir()) == []
    assert mongo_db["jobs"].count_documents({}) == 0


def test_unknown_job_is_404(client: TestClient) -> None:
    assert client.get("/jobs/nope").status_code == 404
    assert client.get("/jobs").json() == []


CreateJob = Callable[[Any, dict[str, Any]], Awaitable[None]]


@pytest.fixture
def upload_when_creating_the_job_does(
    clean_state: None, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[CreateJob], Any]:
    """An upload through the app, its job record written by the given ``create_job``."""

    def upload(create_job: CreateJob) -> Any:
        from api.main import create_app
        from shared.dataset import job_records

        monkeypatch.setattr(job_records, "create_job", create_job)
        path = tmp_path / "p.csv"
        generate(10, path, seed=11)
        app = create_app(settings)
        with TestClient(app, raise_server_exceptions=False) as c, path.open("rb") as f:
            return c.post("/add-promotions/", files={"file": ("p.csv", f)})

    return upload


def _nothing_kept(settings: Settings, mongo_db: Any) -> None:
    assert list(settings.uploads_dir.iterdir()) == []
    assert mongo_db["jobs"].count_documents({}) == 0


def test_an_insert_whose_answer_is_lost_leaves_no_job_behind_the_503(
    upload_when_creating_the_job_does: Callable[[CreateJob], Any],
    settings: Settings,
    mongo_db: Any,
) -> None:
    """The job record reached the store, the connection dropped before its answer: the
    client hears "not kept", so the record must not stay (the watchdog would send it, and
    it would fail for want of its file: a phantom failed job next to the client's retry)."""
    from pymongo.errors import AutoReconnect

    from shared.dataset import job_records

    real_create_job = job_records.create_job

    async def reached_the_store(db: Any, doc: dict[str, Any]) -> None:
        await real_create_job(db, doc)
        raise AutoReconnect("connection closed")

    r = upload_when_creating_the_job_does(reached_the_store)
    assert r.status_code == 503 and "store is unavailable" in r.json()["detail"]
    _nothing_kept(settings, mongo_db)


def test_a_permanent_store_error_at_upload_is_a_json_500_and_keeps_nothing(
    upload_when_creating_the_job_does: Callable[[CreateJob], Any],
    settings: Settings,
    mongo_db: Any,
) -> None:
    from pymongo.errors import OperationFailure

    async def not_authorized(db: Any, doc: dict[str, Any]) -> None:
        raise OperationFailure("not authorized on promotions to execute command", code=13)

    r = upload_when_creating_the_job_does(not_authorized)
    assert r.status_code == 500 and r.headers["content-type"].startswith("application/json")
    assert "internal error" in r.json()["detail"]
    _nothing_kept(settings, mongo_db)


def test_an_upload_stored_while_the_breaker_opened_waits_for_it_and_is_kept(
    clean_state: None,
    settings: Settings,
    mongo_db: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lookups opened the breaker (the store missed their 300 ms deadlines for a second)
    while a 7.3 GB upload arrived: its job record waits for the breaker's probe within its
    own budget (UPLOAD_RECORD_TIMEOUT_MS) instead of a 503 that throws the file away. Seen
    in the 100M-row scale run."""
    from api.main import create_app
    from api.routes import uploads

    real_receive = uploads.receive_upload
    path = tmp_path / "p.csv"
    generate(10, path, seed=11)
    with TestClient(create_app(settings)) as c, path.open("rb") as f:
        breaker = c.app.state.services.gate.breaker  # type: ignore[attr-defined]

        async def stored_as_the_breaker_opens(*args: Any, **kwargs: Any) -> Any:
            stored = await real_receive(*args, **kwargs)
            for _ in range(settings.breaker_failures):
                breaker.failed()
            assert breaker.state == "open"
            return stored

        monkeypatch.setattr(uploads, "receive_upload", stored_as_the_breaker_opens)
        r = c.post("/add-promotions/", files={"file": ("p.csv", f)})
        assert r.status_code == 202, r.text
        assert breaker.state == "closed"  # the job record was the probe
        assert mongo_db["jobs"].find_one({"_id": r.json()["job_id"]}) is not None
