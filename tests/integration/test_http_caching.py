"""Lookups' HTTP caching headers (docs/http-caching.md), on the fast path and on the route.

Each test runs against both: ``fast_lookups=True`` answers process-memory hits with raw ASGI
messages and the rest with the route's responses; ``False`` is FastAPI's route alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.main import create_app
from devstack.services import free_port
from shared.settings import Settings
from tests.helpers import load_dataset, wait_for

ID = "D018EF0B-dbd9-48f1-ac1a-eb4d90e57118"
KEY = ID.lower()
ROW = f"{ID},60.683466,2018-08-04 05:32:31 +0200 CEST"
URL = f"/promotions/{KEY}"


@pytest.fixture(params=[True, False], ids=["fast-path", "route"])
def fast(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def caching(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "lookup_max_age_s": 7,
            "lookup_negative_max_age_s": 3,
            "lookup_stale_if_error_s": 0,
        }
    )


@pytest.fixture
def api(clean_state: None, caching: Settings, fast: bool) -> Iterator[TestClient]:
    with TestClient(create_app(caching, fast_lookups=fast)) as c:
        yield c


def _live(api: TestClient, mongo_db: Any, version: int, row: str = ROW) -> None:
    assert load_dataset(mongo_db, version, [row])
    wait_for(lambda: api.get(URL).headers.get("etag") == f'"v{version}-{KEY}"', 5)


def test_an_answer_carries_its_version_etag_and_max_age(api: TestClient, mongo_db: Any) -> None:
    _live(api, mongo_db, 1)
    for _ in range(2):  # from the store / Redis, then from process memory
        r = api.get(f"/promotions/{ID}")  # any spelling of the id: the same answer and tag
        assert r.status_code == 200 and r.json()["id"] == ID
        assert r.headers["etag"] == f'"v1-{KEY}"'
        assert r.headers["cache-control"] == "public, max-age=7"
        assert "vary" not in r.headers  # the answer depends on the path alone


@pytest.mark.parametrize(
    "sent",
    [f'"v1-{KEY}"', f'W/"v1-{KEY}"', f'"other", "v1-{KEY}"', "*"],
    ids=["exact", "weak", "list", "star"],
)
def test_if_none_match_with_the_current_tag_is_304(
    api: TestClient, mongo_db: Any, sent: str
) -> None:
    _live(api, mongo_db, 1)
    api.app.state.services.lookups.local.clear()  # type: ignore[attr-defined]
    for _ in range(2):  # Redis (the route's Response), then process memory (raw messages)
        r = api.get(URL, headers={"If-None-Match": sent})
        assert r.status_code == 304 and r.content == b""
        assert r.headers["etag"] == f'"v1-{KEY}"'
        assert r.headers["cache-control"] == "public, max-age=7"
        assert "content-type" not in r.headers


def test_after_a_switch_the_old_tag_gets_the_new_answer(api: TestClient, mongo_db: Any) -> None:
    _live(api, mongo_db, 1)
    old = api.get(URL).headers["etag"]
    _live(api, mongo_db, 2, row=f"{ID},1.5,2030-01-01 00:00:00 +0000 UTC")
    for _ in range(2):
        r = api.get(URL, headers={"If-None-Match": old})
        assert r.status_code == 200 and r.json()["price"] == 1.5
        assert r.headers["etag"] == f'"v2-{KEY}"'


def test_a_404_is_cached_for_the_shorter_time_and_has_no_tag(
    api: TestClient, mongo_db: Any
) -> None:
    r = api.get(URL)  # no dataset yet
    assert r.status_code == 404 and r.headers["cache-control"] == "public, max-age=3"
    _live(api, mongo_db, 1)
    for _ in range(2):  # from the store, then the cached negative answer
        r = api.get("/promotions/absent-id", headers={"If-None-Match": "*"})
        assert r.status_code == 404 and r.headers["cache-control"] == "public, max-age=3"
        assert "etag" not in r.headers and "vary" not in r.headers


def test_stale_if_error_is_sent_only_when_configured(
    clean_state: None, caching: Settings, mongo_db: Any, fast: bool
) -> None:
    cfg = caching.model_copy(update={"lookup_stale_if_error_s": 300})
    with TestClient(create_app(cfg, fast_lookups=fast)) as api:
        _live(api, mongo_db, 1)
        found = api.get(URL).headers["cache-control"]
        missing = api.get("/promotions/absent-id").headers["cache-control"]
    assert found == "public, max-age=7, stale-if-error=300"
    assert missing == "public, max-age=3, stale-if-error=300"


def test_a_503_is_never_stored(clean_state: None, caching: Settings, fast: bool) -> None:
    dead = caching.model_copy(
        update={
            "mongo_url": SecretStr(f"mongodb://127.0.0.1:{free_port()}"),
            "mongo_timeout_ms": 200,
            "lookup_stale_if_error_s": 300,
        }
    )
    with TestClient(create_app(dead, fast_lookups=fast)) as api:
        r = api.get(URL)
    assert r.status_code == 503 and r.headers["cache-control"] == "no-store"
    assert "etag" not in r.headers
