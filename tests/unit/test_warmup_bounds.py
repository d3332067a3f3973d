"""Warm-up bounds, the local cache's byte bound and hot-id ranking: pure logic, and the
finalizer's warm-up against a server that never answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from pymongo import MongoClient

from api.local_cache import ENTRY_OVERHEAD, LocalCache
from shared.readpath.cache import NEGATIVE
from shared.readpath.hot_ids import HotIdSampler, merge_ranked, window_key
from shared.readpath.warmup import REDIS_TIMEOUT_S, run_warmup, warm_before_switch
from shared.settings import Settings

BATCH_IDS = 32


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def rows(batch: list[str]) -> dict[str, dict[str, Any]]:
    """Every id but those starting with 'x' exists."""
    return {
        k: {"id": k, "price": 1.0, "expiration_date": "2018-01-01 00:00:00 +0000 UTC"}
        for k in batch
        if not k.startswith("x")
    }


def test_warmup_writes_every_hot_id_found_or_absent() -> None:
    stored: dict[str, bytes] = {}
    ids = ["a", "xb", "c"]
    clock = Clock()
    result = run_warmup(
        ids, lambda batch, left: rows(batch), stored.update, 5.0, BATCH_IDS, clock, clock.sleep
    )
    assert result.warmed == 3 and result.found == 2 and not result.timed_out
    assert stored["xb"] == NEGATIVE
    assert orjson.loads(stored["a"]) == {
        "id": "a",
        "price": 1.0,
        "expiration_date": "2018-01-01 00:00:00 +0000 UTC",
    }


def test_warmup_stops_at_its_deadline_and_gives_the_store_only_the_time_left() -> None:
    clock = Clock()
    lefts: list[float] = []

    def slow_fetch(batch: list[str], left: float) -> dict[str, dict[str, Any]]:
        lefts.append(left)
        clock.now += 0.4  # each batch takes 0.4 s
        return rows(batch)

    stored: dict[str, bytes] = {}
    ids = [f"id{i}" for i in range(10 * BATCH_IDS)]
    result = run_warmup(ids, slow_fetch, stored.update, 1.0, BATCH_IDS, clock, clock.sleep)
    # read 0.0-0.4 s, pause 0.4-0.8 s, read 0.8-1.2 s: the deadline (1.0 s) ends it
    assert result.timed_out and result.warmed == 2 * BATCH_IDS
    assert lefts == pytest.approx([1.0, 0.2])
    assert clock.slept == pytest.approx([0.4, 0.0])  # no pause goes past the deadline
    assert result.seconds == pytest.approx(1.2)
    assert len(stored) == 2 * BATCH_IDS


def test_warmup_reads_small_batches_and_leaves_the_store_half_of_the_time() -> None:
    clock = Clock()
    sizes: list[int] = []

    def fetch(batch: list[str], left: float) -> dict[str, dict[str, Any]]:
        sizes.append(len(batch))
        clock.now += 0.01 * len(sizes)  # 10, 20, 30 ms
        return rows(batch)

    ids = [f"id{i}" for i in range(2 * BATCH_IDS + 5)]
    result = run_warmup(ids, fetch, lambda a: None, 5.0, BATCH_IDS, clock, clock.sleep)
    assert sizes == [BATCH_IDS, BATCH_IDS, 5] and result.warmed == len(ids)
    # After each read a pause as long as it, none after the last: the switch is not held.
    assert clock.slept == pytest.approx([0.01, 0.02])
    assert not result.timed_out


def test_a_failing_warmup_never_raises_and_keeps_what_it_wrote() -> None:
    calls = 0

    def failing(batch: list[str], left: float) -> dict[str, dict[str, Any]]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("store went away")
        return rows(batch)

    stored: dict[str, bytes] = {}
    ids = [f"id{i}" for i in range(3 * BATCH_IDS)]
    clock = Clock()
    result = run_warmup(ids, failing, stored.update, 5.0, BATCH_IDS, clock, clock.sleep)
    assert result.error == "ConnectionError: store went away"
    assert result.warmed == BATCH_IDS == len(stored)


def test_no_hot_ids_no_work() -> None:
    clock = Clock()
    result = run_warmup(
        [], lambda b, left: pytest.fail("no fetch"), lambda a: None, 5.0, BATCH_IDS, clock
    )
    assert result.warmed == 0 and result.error is None


def test_the_local_cache_is_bounded_in_bytes_least_recently_used_first() -> None:
    body = b"x" * 60
    entry = len(body) + len("id00") + ENTRY_OVERHEAD
    cache = LocalCache(max_bytes=10 * entry)
    for i in range(10):
        cache.put(1, f"id{i:02d}", body)
    assert len(cache) == 10 and cache.current_bytes == 10 * entry
    assert cache.get(1, "id00") == body  # now the most recently used
    cache.put(2, "id10", NEGATIVE + b"")  # negative answers are kept too (smaller)
    assert cache.get(1, "id01") is None  # the least recently used went
    assert cache.get(1, "id00") == body and cache.get(2, "id10") == NEGATIVE
    assert cache.current_bytes <= 10 * entry
    # Versions are separate keys: the same id in another version is another entry.
    assert cache.get(2, "id00") is None


def test_a_zero_byte_local_cache_keeps_nothing() -> None:
    cache = LocalCache(max_bytes=0)
    cache.put(1, "a", b"{}")
    assert cache.get(1, "a") is None and len(cache) == 0


def test_hot_ids_merge_current_window_first_without_repeats() -> None:
    assert merge_ranked([b"a", b"b"], [b"b", b"c", b"d"], limit=3) == ["a", "b", "c"]
    assert merge_ranked([], [b"z"], limit=5) == ["z"]
    assert window_key(600.0) == window_key(899.0) != window_key(900.0)
    assert window_key(900.0, 1) == window_key(600.0)


def test_the_sampler_counts_one_lookup_in_n() -> None:
    sampler = HotIdSampler(redis=None, sample_every=4, flush_s=1.0, max_ids=10)  # type: ignore[arg-type]
    for _ in range(40):
        sampler.note("hot")
    for _ in range(3):
        sampler.note("cold")
    assert sampler.counts["hot"] == 10 and sum(sampler.counts.values()) == 10


@pytest.fixture
def stalled_server() -> Iterator[str]:
    """A server that accepts connections and never answers (a store frozen mid-failover,
    a host gone behind a load balancer): host:port."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    host, port = listener.getsockname()
    yield f"{host}:{port}"
    listener.close()


def test_a_stalled_store_holds_the_switch_no_longer_than_the_warmup_bound(
    stalled_server: str,
) -> None:
    """The finalizer warms just before it moves the pointer: a warm-up whose store never
    answers must give up at its deadline, not after the client's own selection timeout."""
    client: MongoClient[Any] = MongoClient(
        f"mongodb://{stalled_server}", serverSelectionTimeoutMS=20_000, connectTimeoutMS=20_000
    )
    stalled_redis = f"redis://{stalled_server}/0"
    settings = Settings(warmup_max_seconds=0.5, redis_url=SecretStr(stalled_redis))
    try:
        started = time.monotonic()
        result = warm_before_switch(client["promotions"], 7, settings)
        took = time.monotonic() - started
    finally:
        client.close()
    assert result.error is not None and result.warmed == 0
    assert took < settings.warmup_max_seconds + REDIS_TIMEOUT_S + 1.0, took  # not 20 s
