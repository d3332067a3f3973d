"""`make run` tells its workers what the dev store it starts needs (``DEV_STORE_ENV``:
removals emptied in paced batches before the drop), unless the operator configured it, and
never when the store is someone else's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.run import plan_services
from devstack.services import DEV_STORE_ENV, Service, free_port
from shared.settings import get_settings


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Settings for a `make run` whose store and Redis are not running yet."""
    redis_port = free_port()
    monkeypatch.setenv("MONGO_URL", f"mongodb://127.0.0.1:{free_port()}")
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{redis_port}/0")
    monkeypatch.setenv("BROKER_URL", f"redis://127.0.0.1:{redis_port}/1")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("DEVSTACK_DIR", str(tmp_path / "devstack"))
    monkeypatch.delenv("REMOVE_BATCH_DOCS", raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def worker(services: list[Service]) -> Service:
    return next(s for s in services if s.name == "worker")


def test_workers_of_the_dev_store_it_starts_empty_removals_first(
    local: pytest.MonkeyPatch,
) -> None:
    services = plan_services()
    assert "mongo" in [s.name for s in services]
    assert worker(services).env["REMOVE_BATCH_DOCS"] == DEV_STORE_ENV["REMOVE_BATCH_DOCS"]


def test_the_operators_setting_wins(local: pytest.MonkeyPatch) -> None:
    local.setenv("REMOVE_BATCH_DOCS", "0")
    get_settings.cache_clear()
    assert worker(plan_services()).env["REMOVE_BATCH_DOCS"] == "0"


def test_a_store_it_does_not_start_gets_the_defaults(local: pytest.MonkeyPatch) -> None:
    local.setenv("MONGO_URL", "mongodb://db.example:27017")
    get_settings.cache_clear()
    services = plan_services()
    assert "mongo" not in [s.name for s in services]
    assert "REMOVE_BATCH_DOCS" not in worker(services).env
