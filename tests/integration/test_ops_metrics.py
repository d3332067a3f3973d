"""The operations series of /metrics (api/ops_metrics.py) over real services: what the
objectives and alerts read (docs/operations.md)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from api.main import create_app
from devstack.services import free_port
from shared.dataset import job_records, lifecycle
from shared.infra.timeutil import now
from shared.settings import Settings
from tests.helpers import load_dataset, wait_for

ROW = "a1,1.5,2018-08-04 05:32:31 +0200 CEST"


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def fresh(clean_state: None, settings: Settings) -> Iterator[TestClient]:
    """The API in-process, re-reading the operations series on every scrape."""
    with TestClient(create_app(settings.model_copy(update={"ops_metrics_ttl_s": 0}))) as c:
        yield c


def test_dataset_age_and_last_switch_follow_the_pointer(fresh: TestClient, mongo_db: Any) -> None:
    before = scrape(fresh)
    assert value(before, "promotions_active_dataset_age_seconds") is None  # nothing live yet
    assert value(before, "promotions_upload_period_seconds") == 1800
    load_dataset(mongo_db, 1, [ROW])  # the watcher sees it within its 0.5 s poll

    def live() -> dict[Any, float] | None:
        samples = scrape(fresh)
        return (
            samples if value(samples, "promotions_active_dataset_age_seconds") is not None else None
        )

    after = wait_for(live, 5)
    age = value(after, "promotions_active_dataset_age_seconds")
    switched = value(after, "promotions_last_switch_timestamp_seconds")
    assert age is not None and 0 <= age < 30
    assert switched is not None and abs(switched - time.time()) < 30


def test_last_job_outcome_phases_rejects_and_stalled_progress(
    fresh: TestClient, mongo_db: Any
) -> None:
    jobs = mongo_db[lifecycle.JOBS]
    t0 = now() - timedelta(hours=1)
    older = job_records.new_job("old", 1, "a.csv", 10, "upload")
    older.update(status="succeeded", finished_at=t0)
    last = job_records.new_job("last", 2, "b.csv", 10, "upload")
    last.update(
        status="failed",
        created_at=t0,
        phase_at={"splitting": t0 + timedelta(seconds=1), "loading": t0 + timedelta(seconds=3)},
        finished_at=t0 + timedelta(seconds=13),
        rows_loaded=950,
        rows_rejected=50,
    )
    running = job_records.new_job("running", 3, "c.csv", 10, "upload")
    running.update(status="running", updated_at=now() - timedelta(minutes=20))
    jobs.insert_many([older, last, running])

    samples = scrape(fresh)
    assert value(samples, "promotions_last_job_status", status="failed") == 1
    assert value(samples, "promotions_last_job_status", status="succeeded") == 0
    assert value(samples, "promotions_last_job_phase_duration_seconds", phase="queued") == 1
    assert value(samples, "promotions_last_job_phase_duration_seconds", phase="loading") == 10
    assert value(samples, "promotions_last_job_phase_duration_seconds", phase="total") == 13
    assert value(samples, "promotions_last_job_rows") == 1000
    assert value(samples, "promotions_last_job_rejected_ratio") == 0.05
    assert value(samples, "promotions_reject_ratio_limit") == 0.01
    stalled = value(samples, "promotions_job_progress_age_seconds")
    assert stalled is not None and 1190 < stalled < 1300

    jobs.update_one({"_id": "running"}, {"$set": {"status": "succeeded", "finished_at": now()}})
    samples = scrape(fresh)
    assert value(samples, "promotions_job_progress_age_seconds") == 0  # nothing unfinished
    assert value(samples, "promotions_last_job_status", status="succeeded") == 1


# A broker database no worker of the session consumes (its worker took one of the two
# messages from the session's broker database in a full run).
IDLE_BROKER_DB = 10


def test_reachability_queue_and_volume(clean_state: None, settings: Settings) -> None:
    url = settings.broker_url.get_secret_value().rsplit("/", 1)[0] + f"/{IDLE_BROKER_DB}"
    cfg = settings.model_copy(update={"ops_metrics_ttl_s": 0, "broker_url": SecretStr(url)})
    queue = redis.Redis.from_url(url)
    queue.rpush("celery", b"{}", b"{}")  # two tasks waiting
    try:
        with TestClient(create_app(cfg)) as fresh:
            samples = scrape(fresh)
    finally:
        queue.delete("celery")
        queue.close()
    for up in ("promotions_store_up", "promotions_cache_up", "promotions_broker_up"):
        assert value(samples, up) == 1, up
    assert value(samples, "promotions_broker_queue_depth") == 2
    free = value(samples, "promotions_shared_volume_free_bytes")
    size = value(samples, "promotions_shared_volume_size_bytes")
    assert free is not None and size is not None and 0 < free <= size
    assert value(samples, "promotions_shared_volume_min_free_bytes") == settings.min_free_bytes


def test_unreachable_cache_and_broker_read_as_down(clean_state: None, settings: Settings) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    broken = settings.model_copy(
        update={"ops_metrics_ttl_s": 0, "redis_url": SecretStr(dead), "broker_url": SecretStr(dead)}
    )
    with TestClient(create_app(broken)) as client:
        samples = scrape(client)
    assert value(samples, "promotions_store_up") == 1
    assert value(samples, "promotions_cache_up") == 0
    assert value(samples, "promotions_broker_up") == 0
    # Unknown, not zero: "no worker online" must not fire because the broker is down.
    assert value(samples, "promotions_workers_online") is None
    assert value(samples, "promotions_broker_queue_depth") is None
