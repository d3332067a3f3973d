"""Operations surface over real services: /metrics, request ids, dataset listing and rollback."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from shared import job_records
from shared.settings import Settings
from tests.conftest import wait_for
from tests.helpers import load_dataset

ROW = "D018EF0B-dbd9-48f1-ac1a-eb4d90e57118,60.683466,2018-08-04 05:32:31 +0200 CEST"
KEY = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118"
LOOKUP_ROUTE = "/promotions/{promotion_id}"


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _serving(client: TestClient, version: int) -> bool:
    current = client.app.state.services.watcher.current  # type: ignore[attr-defined]
    return current is not None and current.version == version


def test_metrics_expose_the_series_and_move_after_lookups(
    client: TestClient, mongo_db: Any
) -> None:
    load_dataset(mongo_db, 1, [ROW, "other,1,2018-08-04 05:32:31 +0200 CEST"])
    mongo_db[job_records.JOBS].insert_one(job_records.new_job("j1", 1, "x.csv", 10, "upload"))
    wait_for(lambda: _serving(client, 1), 5)
    before = scrape(client)
    assert value(before, "promotions_active_dataset_version") == 1
    assert value(before, "promotions_active_dataset_rows") == 2
    assert value(before, "promotions_jobs", status="queued") == 1
    assert value(before, "promotions_jobs", status="failed") == 0

    assert client.get(f"/promotions/{KEY}").status_code == 200  # miss, from the store
    assert client.get(f"/promotions/{KEY.upper()}").status_code == 200  # hit
    assert client.get("/promotions/absent").status_code == 404  # miss
    assert client.get("/promotions/absent").status_code == 404  # negative hit
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    get_ok = {"method": "GET", "route": LOOKUP_ROUTE}
    assert moved("promotions_http_requests_total", status="200", **get_ok) == 2
    assert moved("promotions_http_requests_total", status="404", **get_ok) == 2
    assert moved("promotions_http_request_duration_seconds_count", **get_ok) == 4
    assert moved("promotions_http_request_duration_seconds_sum", **get_ok) > 0
    assert moved("promotions_cache_lookups_total", result="miss") == 2
    assert moved("promotions_cache_lookups_total", result="hit") == 1
    assert moved("promotions_cache_lookups_total", result="negative_hit") == 1
    assert moved("promotions_store_lookup_duration_seconds_count") == 2
    assert ("promotions_cache_errors_total", frozenset()) in after
    # Ids never become label values.
    assert not any(KEY in str(labels) or "absent" in str(labels) for _, labels in after)


def test_unmatched_paths_share_one_label(client: TestClient) -> None:
    before = scrape(client)
    for path in ("/nope/1", "/nope/2"):
        assert client.get(path).status_code == 404
    after = scrape(client)
    labels = {"method": "GET", "route": "<unmatched>", "status": "404"}
    assert (
        value(after, "promotions_http_requests_total", **labels)
        - value(before, "promotions_http_requests_total", **labels)
        == 2
    )


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "lb-42.a"})
    assert given.headers["x-request-id"] == "lb-42.a"
    made = client.get("/healthz").headers["x-request-id"]
    assert len(made) == 32 and made != client.get("/healthz").headers["x-request-id"]
    forged = client.get("/healthz", headers={"X-Request-ID": "a\tb" + "x" * 200})
    assert len(forged.headers["x-request-id"]) == 32


def test_settings_default_to_text_logs(settings: Settings) -> None:
    assert settings.log_format == "text"
