"""Write endpoints need the token when one is configured; lookups stay open; oversized
request lines and headers are refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.main import create_app
from shared.settings import Settings
from tests.helpers import wait_job

CSV = b"d018ef0b-dbd9-48f1-ac1a-eb4d90e57118,60.683466,2018-08-04 05:32:31 +0200 CEST\n"


@pytest.fixture
def guarded(clean_state: None, worker: None, settings: Settings) -> Iterator[TestClient]:
    cfg = settings.model_copy(update={"write_token": SecretStr("s3cret-token")})
    with TestClient(create_app(cfg)) as c:
        yield c


@pytest.mark.parametrize("route", ["/add-promotions/", "/uploadfile/"])
def test_uploads_need_the_bearer_token(guarded: TestClient, route: str, settings: Settings) -> None:
    files = {"file": ("p.csv", CSV)}
    r = guarded.post(route, files=files)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in r.json()["detail"]
    r = guarded.post(route, files=files, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and "not valid" in r.json()["detail"]
    assert list(settings.uploads_dir.iterdir()) == []
    r = guarded.post(route, files=files, headers={"Authorization": "Bearer s3cret-token"})
    assert r.status_code == 202
    assert wait_job(guarded, r.json()["job_id"])["status"] == "succeeded"


def test_reads_stay_open(guarded: TestClient) -> None:
    assert guarded.get("/promotions/d018ef0b-dbd9-48f1-ac1a-eb4d90e57118").status_code in (200, 404)
    assert guarded.get("/jobs").status_code == 200
    assert guarded.get("/healthz").status_code == 200


def test_oversized_request_line_and_headers_are_refused(guarded: TestClient) -> None:
    r = guarded.get("/promotions/x", params={"q": "a" * 9000})
    assert r.status_code == 414 and "URL is longer" in r.json()["detail"]
    r = guarded.get("/promotions/x", headers={f"x-h{i}": "v" * 1000 for i in range(20)})
    assert r.status_code == 431 and "headers are larger" in r.json()["detail"]
