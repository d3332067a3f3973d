"""A sick store never holds a request: a paused store (SIGSTOP, as in an election, a long GC
or a saturated disk) and a slow one (a proxy delaying its answers) cost an uncached lookup
at most its deadline, then a 503 with Retry-After; cached lookups keep answering; the
breaker opens, shows in /readyz and /metrics, and closes within a second of the store
answering again. Workers' store calls are bounded the same way."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pymongo
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.main import create_app
from devstack.services import Service, free_port, mongo_command
from shared.errors import TransientError, store_errors
from shared.readpath.cache import cache_key
from shared.settings import Settings, get_settings
from tests.delay_proxy import delay_proxy
from tests.helpers import load_dataset, wait_for

pytestmark = pytest.mark.usefixtures("clean_state")

DATE = "2018-08-04 05:32:31 +0200 CEST"
IDS = [f"id-{n}" for n in range(400)]
DEADLINE_S = 0.3
# What a 503 may take beyond the deadline: the test client, a thread hop, a shared machine.
MARGIN_S = 0.4


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory, settings: Settings, logs_dir: Path
) -> Iterator[Service]:
    """A store of the module's own (it gets paused), holding IDS as version 1; each test
    reads ids of its own."""
    port = free_port()
    svc = Service(
        "mongo-stall",
        mongo_command(port, str(tmp_path_factory.mktemp("stall") / "db")),
        port=port,
        log_path=logs_dir / "mongo-stall.log",
    )
    svc.start().wait_ready(60)
    try:
        client: pymongo.MongoClient[Any] = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}")
        assert load_dataset(client[settings.mongo_db], 1, [f"{i},1.5,{DATE}" for i in IDS])
        client.close()
        yield svc
    finally:
        svc.signal_group(signal.SIGCONT)  # a failed test may have left it paused
        svc.stop()


def pause(store: Service) -> None:
    """SIGSTOP, and wait until the kernel says it is stopped."""
    store.signal_group(signal.SIGSTOP)
    assert store.proc is not None
    process = psutil.Process(store.proc.pid)
    wait_for(lambda: process.status() == psutil.STATUS_STOPPED, 5, 0.001)


def app_settings(settings: Settings, port: int, **update: Any) -> Settings:
    """Lookups with a 300 ms deadline; no process cache, so every cached answer is a Redis
    hit (the level a stalled store could hold up). A direct connection: the store names
    itself as a replica set member, which would lead the driver around a proxy."""
    return settings.model_copy(
        update={
            "mongo_url": SecretStr(f"mongodb://127.0.0.1:{port}/?directConnection=true"),
            "lookup_timeout_ms": int(DEADLINE_S * 1000),
            "local_cache_max_bytes": 0,
            **update,
        }
    )


def timed_get(c: TestClient, path: str) -> tuple[int, float, Any]:
    started = time.monotonic()
    r = c.get(path)
    return r.status_code, time.monotonic() - started, r


def breaker_gauge(c: TestClient) -> float:
    found = re.search(r"^promotions_store_breaker_open (\S+)$", c.get("/metrics").text, re.M)
    assert found, "the breaker gauge is not exported"
    return float(found.group(1))


@pytest.mark.slow
def test_paused_store_uncached_503_within_the_deadline_cached_200_breaker_opens_and_closes(
    store: Service, settings: Settings, redis_client: redis.Redis
) -> None:
    assert store.port is not None
    cfg = app_settings(settings, store.port, breaker_failures=3, breaker_open_ms=500)
    with TestClient(create_app(cfg)) as c:
        cached = IDS[:20]
        for key in cached:
            assert c.get(f"/promotions/{key}").status_code == 200
        assert breaker_gauge(c) == 0
        # The Redis fills are written behind the answers.
        wait_for(lambda: all(redis_client.exists(cache_key(1, k)) for k in cached), 5, 0.02)
        pause(store)
        try:
            uncached = IDS[100:110]
            answers = []
            for key in uncached:
                status, took, r = timed_get(c, f"/promotions/{key}")
                answers.append((status, took, r))
                assert status == 503, r.text
                assert r.headers["Retry-After"] == "1"
                assert "store is unavailable" in r.json()["detail"]
                assert took < DEADLINE_S + MARGIN_S, answers
            # The first ones waited out their deadline; once the breaker opened (3 in a
            # row), the rest were refused without waiting.
            assert all(took >= DEADLINE_S * 0.9 for _, took, _ in answers[:3])
            assert all(took < DEADLINE_S / 2 for _, took, _ in answers[3:]), answers
            breaker = c.app.state.services.gate.breaker  # type: ignore[attr-defined]
            assert breaker.opened == 1
            assert breaker_gauge(c) == 1
            ready = c.get("/readyz").json()
            assert ready["status"] == "unavailable" and ready["checks"]["breaker"] != "closed"
            # Cached answers keep coming, at cache speed.
            for key in cached:
                status, took, r = timed_get(c, f"/promotions/{key}")
                assert status == 200 and r.json()["id"] == key
                assert took < DEADLINE_S / 2
        finally:
            store.signal_group(signal.SIGCONT)
        resumed = time.monotonic()
        while True:  # recovers within a second; the ids refused above were never cached
            status, _, _ = timed_get(c, f"/promotions/{uncached[0]}")
            if status == 200 or time.monotonic() - resumed > 5:
                break
            time.sleep(0.05)
        recovered_in = time.monotonic() - resumed
        assert status == 200 and recovered_in < 1.0, recovered_in
        for key in uncached:
            assert c.get(f"/promotions/{key}").json()["id"] == key
        assert breaker.state == "closed" and breaker_gauge(c) == 0
        assert c.get("/readyz").json()["checks"]["breaker"] == "closed"


@pytest.mark.slow
def test_slow_store_past_the_deadline_is_503_below_it_200(
    store: Service, settings: Settings
) -> None:
    assert store.port is not None
    with delay_proxy(store.port) as proxy:
        cfg = app_settings(settings, proxy.port)
        with TestClient(create_app(cfg)) as c:
            assert c.get(f"/promotions/{IDS[0]}").status_code == 200  # connected, warm
            proxy.delay_s = 2 * DEADLINE_S
            for key in IDS[200:203]:
                status, took, r = timed_get(c, f"/promotions/{key}")
                assert status == 503 and r.headers["Retry-After"] == "1", r.text
                assert DEADLINE_S * 0.9 <= took < DEADLINE_S + MARGIN_S, took
            proxy.delay_s = DEADLINE_S / 6
            for key in IDS[203:206]:
                status, took, r = timed_get(c, f"/promotions/{key}")
                assert status == 200 and r.json()["id"] == key, r.text
                assert took >= DEADLINE_S / 6
            # The ids refused while it was slow were not cached as "not found".
            for key in IDS[200:203]:
                assert c.get(f"/promotions/{key}").json()["id"] == key


@pytest.mark.slow
def test_with_the_breaker_off_every_uncached_lookup_waits_its_deadline(
    store: Service, settings: Settings, redis_client: redis.Redis
) -> None:
    """``STORE_BREAKER=false``: nothing is refused early (the benchmark's baseline)."""
    assert store.port is not None
    cfg = app_settings(settings, store.port, store_breaker=False, breaker_failures=2)
    with TestClient(create_app(cfg)) as c:
        assert c.get(f"/promotions/{IDS[0]}").status_code == 200
        wait_for(lambda: redis_client.exists(cache_key(1, IDS[0])), 5, 0.02)
        pause(store)
        try:
            for key in IDS[300:305]:
                status, took, _ = timed_get(c, f"/promotions/{key}")
                assert status == 503 and DEADLINE_S * 0.9 <= took < DEADLINE_S + MARGIN_S
            # Store reads of more batches than may be out at once wait on the store; a
            # cache hit arriving meanwhile does not wait behind them.
            with ThreadPoolExecutor(8) as pool:
                stuck = [pool.submit(c.get, f"/promotions/{key}") for key in IDS[310:318]]
                time.sleep(0.1)
                status, took, _ = timed_get(c, f"/promotions/{IDS[0]}")
                assert status == 200 and took < DEADLINE_S / 2, took
                assert all(f.result().status_code == 503 for f in stuck)
            assert c.app.state.services.gate.breaker.state == "closed"  # type: ignore[attr-defined]
            assert breaker_gauge(c) == 0
        finally:
            store.signal_group(signal.SIGCONT)


@pytest.mark.slow
def test_a_worker_store_call_is_bounded_by_its_timeout_on_a_paused_store(
    store: Service, settings: Settings
) -> None:
    """A task's store call returns a transient error within about twice
    TASK_STORE_TIMEOUT_S (the driver retries a read once; then its retry policy takes over)
    instead of holding the task for 120 s, twice."""
    from shared.infra import mongo

    assert store.port is not None
    outcome: list[BaseException | None] = []

    def call(db: Any) -> None:
        try:
            with store_errors():
                db["jobs"].find_one({"_id": "x"})
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MONGO_URL", f"mongodb://127.0.0.1:{store.port}")
        patch.setenv("TASK_STORE_TIMEOUT_S", "1")
        patch.setenv("MONGO_TIMEOUT_MS", "500")  # the retry's connection handshake
        patch.setattr(mongo, "_task_clients", {})
        get_settings.cache_clear()
        try:
            db = mongo.task_database()
            db.command("ping")  # connected while the store answers
            pause(store)
            started = time.monotonic()
            thread = threading.Thread(target=call, args=(db,), daemon=True)
            thread.start()
            thread.join(8)
            took = time.monotonic() - started
        finally:
            store.signal_group(signal.SIGCONT)
            get_settings.cache_clear()
        thread.join(30)
        db.client.close()
    get_settings.cache_clear()  # the session's environment again
    # Two reads of 1 s, server selection and the new connection's handshake (0.5 s each).
    assert took < 2 * 1 + 2 * 0.5 + 1.5, took
    assert outcome and isinstance(outcome[0], TransientError), outcome


@pytest.mark.slow
def test_an_unreachable_cache_leaves_the_store_the_rest_of_the_deadline(
    store: Service, settings: Settings
) -> None:
    """Redis that never answers in time (a partition: connects and reads hang until
    REDIS_TIMEOUT_S, longer than a lookup's deadline) must not turn every uncached lookup
    into a 503: the cache gets a share of the budget, then counts as down for its cool-down
    and the store answers."""
    assert store.port is not None
    redis_port = int(settings.redis_url.get_secret_value().rsplit(":", 1)[1].split("/")[0])
    with delay_proxy(redis_port) as proxy:
        proxy.delay_s = 5.0
        cache_url = f"redis://127.0.0.1:{proxy.port}/0"
        cfg = app_settings(
            settings, store.port, redis_url=SecretStr(cache_url), redis_timeout_s=2.0
        )
        with TestClient(create_app(cfg)) as c:
            for key in IDS[300:303]:
                status, took, r = timed_get(c, f"/promotions/{key}")
                assert status == 200 and r.json()["id"] == key, r.text
                assert took < DEADLINE_S + MARGIN_S, took
            assert c.get("/promotions/not-stored").status_code == 404
