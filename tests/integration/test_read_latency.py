"""Loads yield to readers, over a real Redis: the API publishes its store reads' latency
(shared/readpath/read_latency.py) and a worker's throttle (worker/throttle.py) reads and acts on
it."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import redis
from fastapi.testclient import TestClient
from redis.asyncio import Redis as AsyncRedis

from api.main import create_app
from devstack.services import free_port
from shared.readpath.read_latency import (
    BASELINE_MIN_PERIODS,
    INDEX_KEY,
    LOADING_KEY,
    ReadLatencyPublisher,
    key_for,
    read_latencies,
)
from shared.settings import Settings
from tests.helpers import load_dataset, wait_for, wait_job
from worker.throttle import FLAG_EVERY_S, RETRY_S, InsertThrottle, RedisReads

ROW = "D018EF0B-dbd9-48f1-ac1a-eb4d90e57118,60.683466,2018-08-04 05:32:31 +0200 CEST"


def throttle(url: str, **kw: Any) -> InsertThrottle:
    """A worker process's throttle on the real signal; it never really sleeps here."""
    args: dict[str, Any] = {"read_slowdown": 2.0, "read_floor_ms": 2.0, **kw}
    reads = RedisReads(url)
    return InsertThrottle(2.0, 1000.0, sleep=lambda s: None, reads=reads, flag=reads.flag, **args)


def publish(url: str, publisher: ReadLatencyPublisher, ms: float, periods: int) -> float:
    """``periods`` periods of 10 reads of ``ms`` each, published to Redis as an API process
    does; returns the baseline they leave."""

    async def run() -> None:
        async with AsyncRedis.from_url(url) as r:
            publisher.redis = r
            for _ in range(periods):
                for _ in range(10):
                    publisher.observe(ms / 1000)
                await publisher.publish()

    asyncio.run(run())
    return publisher.summary().baseline_ms


def test_the_api_publishes_its_store_reads_and_a_worker_reads_them(
    clean_state: None, mongo_db: Any, redis_client: redis.Redis, settings: Settings
) -> None:
    fast = settings.model_copy(update={"read_latency_publish_s": 0.1})
    url = settings.redis_url.get_secret_value()
    with TestClient(create_app(fast)) as client:
        process = client.app.state.services.read_latency.process  # type: ignore[attr-defined]
        load_dataset(mongo_db, 1, [ROW])
        wait_for(lambda: client.get("/datasets/active").status_code == 200, 10)

        def published_with_baseline() -> bool:
            # Ids nobody asked before: each one is a store read (then a cached 404).
            for _ in range(20):
                assert client.get(f"/promotions/{uuid.uuid4()}").status_code == 404
            mine = [s for s in read_latencies(redis_client) or [] if s.process == process]
            return bool(mine) and mine[0].baseline_ms > 0 and mine[0].reads >= 5

        wait_for(published_with_baseline, 30, interval=0)
        summary = next(s for s in read_latencies(redis_client) or [] if s.process == process)
        assert summary.p90_ms > 0 and sum(summary.counts.values()) == summary.reads
        assert 0 < redis_client.pttl(key_for(process)) <= 2000  # gone soon if the API dies

        # The worker side: reads healthy (no slowdown could be this large), so a paced rate
        # grows by one step per new summary.
        t = throttle(url, read_slowdown=1e6)
        with t.paced(10):
            pass
        deadline = time.monotonic() + 20
        while not t.reads_known and time.monotonic() < deadline:
            for _ in range(20):
                client.get(f"/promotions/{uuid.uuid4()}")
            t.next_reading = 0.0  # read now, whatever the period
            t.rate = 1000.0
            with t.paced(10):
                pass
        assert process in t.marks and t.reads_known
        assert t.rate != 1000.0  # raised by a step (or no longer paced: the step reached it)
    # A stopped API takes its summary with it.
    assert all(s.process != process for s in read_latencies(redis_client) or [])
    assert not redis_client.sismember(INDEX_KEY, process)


def test_slow_reads_published_by_an_api_process_halve_a_workers_rate(
    clean_state: None, settings: Settings
) -> None:
    """Real publisher and Redis on both sides; only the latencies are given."""
    url = settings.redis_url.get_secret_value()
    publisher = ReadLatencyPublisher(None, 0.5, process="api-x")  # type: ignore[arg-type]
    publish(url, publisher, 1.0, BASELINE_MIN_PERIODS)  # calm, before any load
    t = throttle(url)
    for _ in range(3):
        with t.paced(5000):
            time.sleep(0.005)  # the inserts themselves keep their speed throughout
    assert t.rate is None
    t.next_reading = 0.0
    with t.paced(5000):  # the worker sees this API process: its window starts
        time.sleep(0.005)
    assert "api-x" in t.marks and t.rate is None
    publish(url, publisher, 30.0, 1)  # a load: reads 30x slower
    t.next_reading = 0.0
    with t.paced(5000):
        time.sleep(0.005)
    assert t.read_decreases == 1
    assert t.rate is not None and t.rate <= 0.5 * t.achieved


def test_an_api_process_gone_stops_counting(clean_state: None, redis_client: redis.Redis) -> None:
    redis_client.sadd(INDEX_KEY, "gone-without-stopping")  # its key expired long ago
    assert read_latencies(redis_client) == []
    assert not redis_client.sismember(INDEX_KEY, "gone-without-stopping")


def test_an_unreachable_redis_never_fails_or_stalls_a_load() -> None:
    reads = RedisReads(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    calls = 0

    def counted() -> Any:
        nonlocal calls
        calls += 1
        return reads()

    now = 0.0
    t = InsertThrottle(2.0, 1000.0, clock=lambda: now, sleep=lambda s: None, reads=counted)
    for _ in range(20):  # 2 s of batches
        with t.paced(500):
            now += 0.1
    assert calls == 1  # failed once: no signal, and no further attempt for RETRY_S
    assert not t.reads_known and t.rate is None
    now += RETRY_S
    with t.paced(5000):
        now += 0.5
    assert calls == 2


def test_a_workers_load_flag_keeps_its_time_out_of_the_readers_calm_level(
    clean_state: None, redis_client: redis.Redis, settings: Settings
) -> None:
    """Real Redis on both sides: a worker's paced batch flags the load; the publishing API
    process keeps every period that began or ended under the flag out of its baseline."""
    url = settings.redis_url.get_secret_value()
    publisher = ReadLatencyPublisher(None, 0.5, process="api-calm")  # type: ignore[arg-type]
    calm = publish(url, publisher, 1.0, BASELINE_MIN_PERIODS)
    assert calm > 0
    t = throttle(url)
    with t.paced(10):  # a load's batch: flags it for LOADING_TTL_S
        pass
    assert redis_client.exists(LOADING_KEY)
    # Far more loaded periods than the history holds: the calm level does not move.
    history = publisher.p90s.maxlen or 0
    assert publish(url, publisher, 30.0, history + 5) == calm
    redis_client.delete(LOADING_KEY)  # the load ended (its flag expired)
    # The first period after it began under the flag: still not calm.
    assert publish(url, publisher, 30.0, 1) == calm
    assert publish(url, publisher, 30.0, history) > calm  # calm periods count again


def test_a_load_that_never_paces_still_flags_the_readers(
    client: TestClient, worker: Any, redis_client: redis.Redis
) -> None:
    """Real worker processes: a load's map parses at full speed beside the readers and
    never paces a batch, so each task flags the load when it starts. A file that fails in
    the map reaches no paced write at all."""
    time.sleep(FLAG_EVERY_S)  # the session's processes flag at most this often
    redis_client.delete(LOADING_KEY)
    r = client.post("/add-promotions/", files={"file": ("p.csv", b"not,a,row\n" * 5000)})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "failed", job
    assert job["rows_loaded"] == 0, job
    assert redis_client.exists(LOADING_KEY)
