"""Uploads keep the name they were sent under (never as a path): shown by GET /jobs/{id} and
GET /jobs. Real API, store and workers."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.helpers import wait_job

pytestmark = pytest.mark.usefixtures("worker")

BODY = b"a1,1.5,2027-12-01 07:38:51+00\n"


def _job(client: TestClient, response: object) -> dict[str, object]:
    assert response.status_code == 202, response.text  # type: ignore[attr-defined]
    return wait_job(client, response.json()["job_id"])  # type: ignore[attr-defined,no-any-return]


def test_the_multipart_file_name_is_kept_without_its_path(client: TestClient) -> None:
    r = client.post(
        "/add-promotions/", files={"file": ("../../exports/promotions-2026-12-06.csv", BODY)}
    )
    job = _job(client, r)
    assert job["status"] == "succeeded" and job["original_name"] == "promotions-2026-12-06.csv"
    listed = {j["job_id"]: j for j in client.get("/jobs").json()}
    assert listed[job["job_id"]]["original_name"] == "promotions-2026-12-06.csv"


def test_a_raw_body_is_named_by_its_content_disposition(client: TestClient) -> None:
    r = client.post(
        "/add-promotions",
        content=BODY,
        headers={
            "Content-Type": "text/csv",
            "Content-Disposition": "attachment; filename*=UTF-8''prix-%C3%A9t%C3%A9.csv",
        },
    )
    assert _job(client, r)["original_name"] == "prix-été.csv"


def test_the_name_query_parameter_wins(client: TestClient) -> None:
    r = client.post(
        "/uploadfile/?name=C:%5Cdrop%5Cnightly.csv",
        files={"file": ("upload.bin", BODY)},
    )
    assert _job(client, r)["original_name"] == "nightly.csv"
    r = client.post("/uploadfile/", content=BODY, headers={"Content-Type": "text/csv"})
    assert _job(client, r)["original_name"] is None
