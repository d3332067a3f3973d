"""Operations surface over real services: /metrics, request ids, dataset listing and rollback."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from api.main import create_app
from devstack.services import Service, api_command, free_port
from shared.dataset import datasets, job_records, lifecycle
from shared.settings import Settings
from tests.helpers import load_dataset, wait_for

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
    mongo_db[lifecycle.JOBS].insert_one(job_records.new_job("j1", 1, "x.csv", 10, "upload"))
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
    # Second asks are answered by the process's own cache; Redis and the store see misses.
    assert moved("promotions_cache_lookups_total", result="miss") == 2
    assert moved("promotions_cache_lookups_total", result="local_hit") == 1
    assert moved("promotions_cache_lookups_total", result="local_negative_hit") == 1
    assert moved("promotions_cache_lookups_total", result="hit") == 0
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


def test_datasets_lists_kept_versions_with_the_active_flag(
    client: TestClient, mongo_db: Any
) -> None:
    load_dataset(mongo_db, 1, [ROW], job_id="job-1")
    load_dataset(mongo_db, 2, [ROW, "x,1,2018-08-04 05:32:31 +0200 CEST"], job_id="job-2")
    lifecycle.register_version(mongo_db, 3, "job-3")  # still loading
    listed = client.get("/datasets").json()
    assert [(d["version"], d["state"], d["active"]) for d in listed] == [
        (3, "building", False),
        (2, "ready", True),
        (1, "ready", False),
    ]
    assert listed[1]["rows"] == 2 and listed[1]["job_id"] == "job-2"
    assert listed[1]["created_at"].endswith("Z") and listed[1]["activated_at"].endswith("Z")
    assert listed[0]["activated_at"] is None
    assert [d["version"] for d in client.get("/datasets?limit=1").json()] == [3]


def test_rollback_switches_every_api_process_within_the_bound(
    client: TestClient, mongo_db: Any, api_url: str, settings: Settings
) -> None:
    load_dataset(mongo_db, 1, [ROW])
    load_dataset(mongo_db, 2, [ROW.replace("60.683466", "1.5")])
    other = httpx.Client(base_url=api_url)  # another process: uvicorn
    wait_for(lambda: other.get(f"/promotions/{KEY}").json().get("price") == 1.5, 5)

    r = client.post("/datasets/1/activate")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["rows"] == 1
    assert client.get(f"/promotions/{KEY}").json()["price"] == 60.683466  # this process: at once
    started = time.monotonic()
    wait_for(lambda: other.get(f"/promotions/{KEY}").json()["price"] == 60.683466, 5, 0.02)
    assert time.monotonic() - started <= 1.0
    assert client.get("/datasets/active").json()["version"] == 1
    assert [d["version"] for d in client.get("/datasets").json() if d["active"]] == [1]
    other.close()
    # The pointer's high-water mark stays: an older, slower job still cannot go live.
    assert datasets.read_active_sync(mongo_db).version == 1  # type: ignore[union-attr]
    assert mongo_db[datasets.META_COLLECTION].find_one({"_id": "active"})["high_water"] == 2


def test_rollback_refuses_what_is_not_a_kept_complete_version(
    client: TestClient, mongo_db: Any
) -> None:
    load_dataset(mongo_db, 1, [ROW])
    load_dataset(mongo_db, 2, [ROW])
    assert lifecycle.retire_version(mongo_db, 1)
    assert lifecycle.remove_version(mongo_db, 1, grace_s=0)
    lifecycle.register_version(mongo_db, 3, "job-3")
    assert lifecycle.fail_version(mongo_db, 3)
    lifecycle.register_version(mongo_db, 4, "job-4")
    for version, words in ((99, "does not exist"), (1, "was removed"), (3, "failed"), (4, "still")):
        r = client.post(f"/datasets/{version}/activate")
        assert r.status_code == 409 and words in r.json()["detail"], r.text
    assert client.get("/datasets/active").json()["version"] == 2
    assert client.post("/datasets/0/activate").status_code == 422


def test_a_retired_version_can_be_activated_until_it_is_removed(
    client: TestClient, mongo_db: Any
) -> None:
    load_dataset(mongo_db, 1, [ROW])
    load_dataset(mongo_db, 2, [ROW])
    assert lifecycle.retire_version(mongo_db, 1)
    r = client.post("/datasets/1/activate")
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
    assert lifecycle.read_record(mongo_db, 1).state == "ready"  # type: ignore[union-attr]


def test_rollback_needs_the_write_token(clean_state: None, settings: Settings) -> None:
    guarded = settings.model_copy(update={"write_token": SecretStr("tok")})
    with TestClient(create_app(guarded)) as c:
        assert c.post("/datasets/1/activate").status_code == 401
        bad = c.post("/datasets/1/activate", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 403
        ok = c.post("/datasets/1/activate", headers={"Authorization": "Bearer tok"})
        assert ok.status_code == 409  # authorised; there is just no such version


def test_several_api_workers_share_metrics_and_log_json(
    clean_state: None, mongo_db: Any, tmp_path: Path
) -> None:
    load_dataset(mongo_db, 1, [ROW])
    load_dataset(mongo_db, 2, [ROW])
    port = free_port()
    (tmp_path / "prom").mkdir()
    api = Service(
        "api-multi",
        api_command("127.0.0.1", port, workers=2),
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "LOG_FORMAT": "json"},
        port=port,
        log_path=tmp_path / "api.log",
    )
    api.start().wait_ready(60)
    try:
        lookups = 30
        for _ in range(lookups):  # a new connection each time: spread over the workers
            assert httpx.get(f"http://127.0.0.1:{port}/promotions/{KEY}").status_code == 200
        r = httpx.post(
            f"http://127.0.0.1:{port}/datasets/1/activate", headers={"X-Request-ID": "ops-42"}
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == "ops-42"

        def merged() -> dict[Any, float]:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            return {
                (s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }

        labels = {"method": "GET", "route": LOOKUP_ROUTE, "status": "200"}
        assert value(merged(), "promotions_http_requests_total", **labels) == lookups
        # Cache counters of every process reach the shared files within a second or so.
        wait_for(
            lambda: (
                sum(
                    value(merged(), "promotions_cache_lookups_total", result=result)
                    for result in ("local_hit", "hit", "miss")
                )
                == lookups
            ),
            5,
        )
        assert len(list((tmp_path / "prom").glob("*.db"))) >= 2  # one file set per process
        lines = [
            json.loads(line) for line in api.log_path.read_text().splitlines() if "ops-42" in line
        ]  # type: ignore[union-attr]
        assert any("activated by hand" in entry["message"] for entry in lines), lines
        assert all(entry["request_id"] == "ops-42" for entry in lines)
    finally:
        api.stop()
