"""The OpenAPI document matches behaviour: schemathesis (every check) against /openapi.json of
the API on a real port, with real Redis, store and workers behind it. Bounded: a few
examples per operation, so the run takes seconds, not minutes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.services import Service, api_command, free_port

pytestmark = pytest.mark.usefixtures("worker", "clean_state")

MAX_EXAMPLES = 10
ROOT = str(Path(__file__).resolve().parents[2])
TOKEN = "contract-test-token"


@pytest.fixture(scope="module")
def guarded_api(services: None, logs_dir: Path) -> Iterator[str]:
    """The API with a write token, as deployed: the document declares the bearer scheme on
    the write operations, and schemathesis checks they refuse requests without it."""
    port = free_port()
    svc = Service(
        "api-contract",
        api_command("127.0.0.1", port),
        env={"WRITE_TOKEN": TOKEN},
        port=port,
        log_path=logs_dir / "api-contract.log",
    )
    svc.start().wait_ready(60)
    yield f"http://127.0.0.1:{port}"
    svc.stop()


def test_schemathesis_finds_no_failure(guarded_api: str, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{guarded_api}/openapi.json",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "1",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--report-dir",
        str(tmp_path),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks", "PYTHONPATH": ROOT}
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env
    )
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]


def test_the_document_does_not_promise_to_take_an_empty_upload(api_url: str) -> None:
    """An empty body is refused (400), so no upload body schema may admit zero bytes."""
    import httpx

    with httpx.Client(base_url=api_url, timeout=30) as http:
        doc = http.get("/openapi.json").json()
        for path in ("/add-promotions/", "/uploadfile/"):
            content = doc["paths"][path]["post"]["requestBody"]["content"]
            for media_type, spec in content.items():
                schema = spec["schema"]
                if media_type == "multipart/form-data":
                    schema = schema["properties"]["file"]
                assert schema.get("minLength") == 1, (path, media_type)
                if media_type != "multipart/form-data":
                    r = http.post(path, content=b"", headers={"Content-Type": media_type})
                    assert r.status_code == 400 and "empty" in r.json()["detail"], r.text
