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
    guarded.headers["Authorization"] = "Bearer s3cret-token"  # reading the job needs it too
    assert wait_job(guarded, r.json()["job_id"])["status"] == "succeeded"


WRITE = {"Authorization": "Bearer s3cret-token"}
READ = {"Authorization": "Bearer r3ad-token"}
GUARDED_READS = [
    "/jobs",
    "/jobs/none",
    "/jobs/none/rejects",
    "/datasets",
    "/datasets/active",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
]


@pytest.fixture
def readers(clean_state: None, settings: Settings) -> Iterator[TestClient]:
    cfg = settings.model_copy(
        update={"write_token": SecretStr("s3cret-token"), "read_token": SecretStr("r3ad-token")}
    )
    with TestClient(create_app(cfg)) as c:
        yield c


def test_lookups_and_health_stay_open(readers: TestClient) -> None:
    assert readers.get("/promotions/d018ef0b-dbd9-48f1-ac1a-eb4d90e57118").status_code == 404
    assert readers.get("/healthz").status_code == 200
    assert readers.get("/readyz").status_code in (200, 503)
    assert readers.get("/ui/").status_code == 200  # the page's code; its reads send the token


@pytest.mark.parametrize("path", GUARDED_READS)
def test_every_other_read_needs_the_read_or_the_write_token(readers: TestClient, path: str) -> None:
    r = readers.get(path)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
    assert "Authorization: Bearer" in r.json()["detail"]
    r = readers.get(path, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and "not valid for reading" in r.json()["detail"]
    for token in (READ, WRITE):
        assert readers.get(path, headers=token).status_code not in (401, 403), path


def test_with_the_write_token_alone_the_docs_stay_open_and_data_reads_do_not(
    clean_state: None, settings: Settings
) -> None:
    """A browser opening /docs cannot send a header: the docs (no partner data) ask for a
    token only once READ_TOKEN is set; jobs and reports need the write token meanwhile."""
    cfg = settings.model_copy(update={"write_token": SecretStr("s3cret-token")})
    with TestClient(create_app(cfg)) as c:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert c.get(path).status_code == 200, path
        assert c.get("/jobs").status_code == 401
        assert c.get("/jobs", headers=WRITE).status_code == 200


def test_the_read_token_cannot_write(readers: TestClient, settings: Settings) -> None:
    r = readers.post("/add-promotions/", files={"file": ("p.csv", CSV)}, headers=READ)
    assert r.status_code == 403 and "not valid for writing" in r.json()["detail"]
    assert readers.post("/datasets/1/activate", headers=READ).status_code == 403
    assert list(settings.uploads_dir.iterdir()) == []


def test_without_tokens_reads_are_open_but_other_sites_pages_cannot_write(
    clean_state: None, settings: Settings
) -> None:
    with TestClient(create_app(settings)) as c:
        assert c.get("/jobs").status_code == 200
        for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
            r = c.post("/add-promotions/", files={"file": ("p.csv", CSV)}, headers=headers)
            assert r.status_code == 403 and "another site" in r.json()["detail"]
            assert c.post("/datasets/1/activate", headers=headers).status_code == 403
        assert list(settings.uploads_dir.iterdir()) == []
        same = {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}
        assert c.post("/datasets/1/activate", headers=same).status_code == 409  # let through


@pytest.mark.parametrize("path", ["/ui/", "/ui/app.js", "/docs", "/redoc"])
def test_pages_send_a_content_security_policy_and_no_framing(
    readers: TestClient, path: str
) -> None:
    r = readers.get(path, headers=READ)
    assert r.status_code == 200
    policy = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    if path.startswith("/ui"):
        assert "'unsafe-inline'" not in policy


def test_oversized_request_line_and_headers_are_refused(guarded: TestClient) -> None:
    r = guarded.get("/promotions/x", params={"q": "a" * 9000})
    assert r.status_code == 414 and "URL is longer" in r.json()["detail"]
    r = guarded.get("/promotions/x", headers={f"x-h{i}": "v" * 1000 for i in range(20)})
    assert r.status_code == 431 and "headers are larger" in r.json()["detail"]
