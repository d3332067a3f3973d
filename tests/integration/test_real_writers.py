"""Files as real export tools write them, uploaded through the API and loaded by real workers:
every id of the source rows is looked up and its price and instant compared with the source
(the date as served is the text the tool wrote; its instant is read by the reference parser of
the timestamp grammar). PostgreSQL runs as a server of its own, started here."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from devstack.services import free_port
from tests.helpers import wait_job
from tests.integration.real_writers import (
    COMMITTED,
    GENERATED,
    PG_BIN,
    SAMPLES,
    SOURCE,
    PostgresServer,
    postgres_copy,
    truncated,
)
from tests.unit.test_timestamp_grammar import reference

pytestmark = pytest.mark.usefixtures("worker")


def _check_served(client: TestClient, content: bytes, name: str, digits: int) -> None:
    r = client.post("/add-promotions/", files={"file": (name, content)})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "succeeded", (name, job)
    assert job["rows_loaded"] == len(SOURCE) and job["rows_rejected"] == 0, (name, job)
    for row_id, price, when in SOURCE:
        r = client.get(f"/promotions/{row_id}")
        assert r.status_code == 200, (name, row_id, r.text)
        body = r.json()
        assert body["id"] == row_id and body["price"] == price, (name, body)
        written = body["expiration_date"]
        assert written in content.decode("utf-8-sig"), (name, written)  # exactly as written
        assert reference(written) == truncated(when, digits), (name, written, when)


@pytest.mark.parametrize(
    ("writer", "digits"), [(w, d) for _, w, d in GENERATED], ids=[n for n, _, _ in GENERATED]
)
def test_files_written_at_test_time_load_exactly(
    client: TestClient, tmp_path: Path, writer: object, digits: int
) -> None:
    content = writer(tmp_path)  # type: ignore[operator]
    _check_served(client, content, "export.csv", digits)


@pytest.mark.parametrize(("name", "digits"), COMMITTED, ids=[n for n, _ in COMMITTED])
def test_committed_samples_of_other_tools_load_exactly(
    client: TestClient, name: str, digits: int
) -> None:
    _check_served(client, (SAMPLES / name).read_bytes(), name, digits)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip("no PostgreSQL server binaries: `make system-deps` installs postgresql")
    if os.geteuid() == 0 and not _has_user("postgres"):
        pytest.skip("running as root with no 'postgres' user: initdb refuses to run as root")
    root = Path(tempfile.mkdtemp(prefix="promotions-pg-"))
    server = PostgresServer(root, free_port())
    try:
        server.start()
        yield server
        server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata", "America/Sao_Paulo"])
def test_postgresql_copy_to_stdout_with_csv_loads_exactly(
    client: TestClient, postgres: PostgresServer, zone: str
) -> None:
    """'+00' for UTC (every whole-hour zone writes an hour-only offset), '+05:30', '-03'."""
    content = postgres_copy(postgres, zone)
    assert content.startswith(b"id,price,expiration_date\n")
    _check_served(client, content, f"postgres-{zone}.csv", 6)
