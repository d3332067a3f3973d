"""The lookup fast path answers exactly like the documented FastAPI route."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from shared.settings import Settings
from tests.helpers import load_dataset, wait_for

ROW = "D018EF0B-dbd9-48f1-ac1a-eb4d90e57118,60.683466,2018-08-04 05:32:31 +0200 CEST"
PATHS = [
    "/promotions/d018ef0b-dbd9-48f1-ac1a-eb4d90e57118",
    "/promotions/D018EF0B-DBD9-48F1-AC1A-EB4D90E57118",
    "/promotions/absent-id",
    "/promotions/" + "a" * 65,
    "/promotions/has%20space",
    "/promotions/a/b",
]
ROUTE = "/promotions/{promotion_id}"


def _answers(client: TestClient) -> list[tuple[int, dict[str, str], bytes]]:
    out = []
    for path in PATHS:
        r = client.get(path, headers={"X-Request-ID": "same-id"})
        out.append((r.status_code, dict(r.headers), r.content))
    return out


def test_fast_path_and_fastapi_route_give_the_same_answers(
    client: TestClient, mongo_db: Any, settings: Settings
) -> None:
    with TestClient(create_app(settings, fast_lookups=False)) as plain:
        assert _answers(client) == _answers(plain)  # no dataset yet: 404s
        load_dataset(mongo_db, 1, [ROW])
        for c in (client, plain):
            wait_for(lambda c=c: c.get(PATHS[0]).status_code == 200, 5)
        for _ in range(2):  # cold, then cached (positive and negative)
            fast = _answers(client)
            assert fast == _answers(plain)
    assert [status for status, _, _ in fast] == [200, 200, 404, 422, 422, 404]


def _counted(client: TestClient, status: int) -> float:
    """GET answers with ``status`` counted under the lookup route's template, as /metrics
    shows them."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "promotions_http_requests_total" and sample.labels == {
                "method": "GET",
                "route": ROUTE,
                "status": str(status),
            }:
                return sample.value
    return 0.0


def test_fast_path_lookups_are_counted_under_the_route_template(client: TestClient) -> None:
    """By what this one request adds: the counters are the process's, and the route's own
    answers in earlier tests have already made the label."""
    before = _counted(client, 404)
    assert client.get(PATHS[2]).status_code == 404
    assert _counted(client, 404) == before + 1
    metrics = client.get("/metrics").text
    assert 'route="/promotions/{promotion_id}"' in metrics
