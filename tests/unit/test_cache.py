"""The lookup cache's promises, with a Redis double that can be taken down and a clock the
test moves by hand: answers and counters while Redis works, and the cool-down after a Redis
failure (lookups stop asking Redis for ``cooldown_s``, then try it again) — without it, every
lookup during an outage would wait for a failing Redis call first.

(tests/integration/test_lookups.py and test_faults.py check lookups against a real Redis
that is stopped and started.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

import shared.readpath.cache
from shared.readpath.cache import (
    MAX_PENDING_FILLS,
    NEGATIVE,
    PromotionCache,
    answer_body,
    cache_key,
)

T = TypeVar("T")


class Clock:
    """Stands in for the ``time`` module in shared.readpath.cache: ``monotonic()`` moves only when
    the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class FlakyRedis:
    """A dict behind Redis's async get/set; while ``down``, every call fails like a lost
    connection. ``calls`` counts the calls that reached it."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.ttl: dict[str, int] = {}
        self.down = False
        self.calls = 0
        self.pipelines: list[list[tuple[str, bytes, int]]] = []

    async def _reach(self) -> None:
        self.calls += 1
        await asyncio.sleep(0)  # a round trip: other lookups run meanwhile
        if self.down:
            raise RedisConnectionError("Connection refused")

    async def get(self, name: str) -> bytes | None:
        await self._reach()
        return self.data.get(name)

    async def set(self, name: str, value: bytes, ex: int) -> None:
        await self._reach()
        self.data[name], self.ttl[name] = value, ex

    async def mget(self, names: list[str]) -> list[bytes | None]:
        await self._reach()
        return [self.data.get(name) for name in names]

    def pipeline(self, transaction: bool) -> FlakyPipeline:
        assert transaction is False  # fills need no MULTI/EXEC
        return FlakyPipeline(self)


class FlakyPipeline:
    """``async with redis.pipeline() as pipe: pipe.set(...); await pipe.execute()``: one
    round trip; ``redis.pipelines`` records the (name, value, ttl) of each."""

    def __init__(self, redis: FlakyRedis) -> None:
        self.redis = redis
        self.sets: list[tuple[str, bytes, int]] = []

    async def __aenter__(self) -> FlakyPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def set(self, name: str, value: bytes, ex: int) -> None:
        self.sets.append((name, value, ex))

    async def execute(self) -> None:
        await self.redis._reach()
        self.redis.pipelines.append(self.sets)
        for name, value, ex in self.sets:
            self.redis.data[name], self.redis.ttl[name] = value, ex


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(shared.readpath.cache, "time", fake)
    return fake


@pytest.fixture
def redis() -> FlakyRedis:
    return FlakyRedis()


@pytest.fixture
def cache(redis: FlakyRedis, clock: Clock) -> PromotionCache:
    return PromotionCache(redis, ttl_s=3600, negative_ttl_s=60, cooldown_s=5.0)  # type: ignore[arg-type]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_keys_carry_the_dataset_version() -> None:
    assert cache_key(7, "abc") == "promo:v7:abc"


def test_an_answer_is_cached_for_ttl_s_and_a_known_miss_for_negative_ttl_s(
    cache: PromotionCache, redis: FlakyRedis
) -> None:
    run(cache.put(3, "a", b'{"id":"a"}'))
    run(cache.put(3, "b", NEGATIVE))
    assert redis.data == {"promo:v3:a": b'{"id":"a"}', "promo:v3:b": b""}
    assert redis.ttl == {"promo:v3:a": 3600, "promo:v3:b": 60}


def test_lookups_count_hits_known_misses_and_misses(
    cache: PromotionCache, redis: FlakyRedis
) -> None:
    redis.data = {"promo:v3:a": b"{}", "promo:v3:b": NEGATIVE, "promo:v2:c": b"{}"}
    got = [run(cache.get(3, key)) for key in ("a", "b", "c", "b", "c", "a", "a")]
    assert got == [b"{}", NEGATIVE, None, NEGATIVE, None, b"{}", b"{}"]
    c = cache.counters
    assert (c.hits, c.negative_hits, c.misses, c.errors) == (3, 2, 2, 0)


def test_a_string_from_a_decoding_client_is_returned_as_bytes(
    cache: PromotionCache, redis: FlakyRedis
) -> None:
    redis.data = {"promo:v1:a": '{"id":"a"}'}  # type: ignore[dict-item]
    assert run(cache.get(1, "a")) == b'{"id":"a"}'


def test_a_redis_failure_is_a_miss_not_an_error(cache: PromotionCache, redis: FlakyRedis) -> None:
    redis.down = True
    assert run(cache.get(1, "a")) is None
    run(cache.put(1, "a", b"{}"))  # does not raise either
    assert (cache.counters.errors, cache.counters.misses) == (1, 0)


def test_after_a_failure_lookups_leave_redis_alone_for_the_cool_down(
    cache: PromotionCache, redis: FlakyRedis, clock: Clock
) -> None:
    redis.down = True
    run(cache.get(1, "a"))
    assert redis.calls == 1 and cache.degraded
    redis.down = False  # back already, but the cache does not know before the cool-down
    redis.data["promo:v1:a"] = b"{}"
    clock.now += 4.999
    assert run(cache.get(1, "a")) is None
    run(cache.put(1, "b", b"{}"))
    assert redis.calls == 1 and cache.degraded  # neither reached Redis
    assert "promo:v1:b" not in redis.data


def test_after_the_cool_down_the_next_lookup_tries_redis_again(
    cache: PromotionCache, redis: FlakyRedis, clock: Clock
) -> None:
    redis.down = True
    run(cache.get(1, "a"))
    redis.down = False
    redis.data["promo:v1:a"] = b"{}"
    clock.now += 5.0  # exactly cooldown_s later
    assert not cache.degraded
    assert run(cache.get(1, "a")) == b"{}"
    assert redis.calls == 2 and cache.counters.hits == 1


def test_a_failure_after_the_cool_down_starts_a_new_one_from_that_failure(
    cache: PromotionCache, redis: FlakyRedis, clock: Clock
) -> None:
    redis.down = True
    run(cache.get(1, "a"))
    clock.now += 5.0
    run(cache.get(1, "a"))  # still down: a second cool-down, from now
    assert redis.calls == 2 and cache.counters.errors == 2
    clock.now += 4.999
    assert cache.degraded
    clock.now += 0.001
    assert not cache.degraded


def test_a_failing_put_starts_the_cool_down_too(
    cache: PromotionCache, redis: FlakyRedis, caplog: pytest.LogCaptureFixture
) -> None:
    redis.down = True
    with caplog.at_level(logging.WARNING, logger="shared.readpath.cache"):
        run(cache.put(1, "a", b"{}"))
    assert cache.degraded and cache.counters.errors == 1
    assert caplog.messages == ["cache unavailable, serving from the store: Connection refused"]
    run(cache.get(1, "a"))
    assert redis.calls == 1


def test_the_cool_down_lasts_one_second_unless_configured(redis: FlakyRedis, clock: Clock) -> None:
    cache = PromotionCache(redis, ttl_s=3600, negative_ttl_s=60)  # type: ignore[arg-type]
    redis.down = True
    run(cache.get(1, "a"))
    clock.now += 0.999
    assert cache.degraded
    clock.now += 0.001
    assert not cache.degraded


def test_a_new_cache_asks_redis_whatever_the_clock_reads(redis: FlakyRedis, clock: Clock) -> None:
    """The monotonic clock's zero is arbitrary (it can be boot time): no cool-down before
    the first failure."""
    clock.now = 0.0
    cache = PromotionCache(redis, ttl_s=3600, negative_ttl_s=60)  # type: ignore[arg-type]
    assert not cache.degraded
    assert run(cache.get(1, "a")) is None and redis.calls == 1


def test_one_warning_per_outage_however_many_lookups_were_in_flight(
    cache: PromotionCache, redis: FlakyRedis, caplog: pytest.LogCaptureFixture
) -> None:
    redis.down = True

    async def three_lookups() -> list[bytes | None]:
        return await asyncio.gather(*(cache.get(1, k) for k in "abc"))

    with caplog.at_level(logging.WARNING, logger="shared.readpath.cache"):
        assert run(three_lookups()) == [None, None, None]
    assert cache.counters.errors == 3
    assert [r.getMessage() for r in caplog.records] == [
        "cache unavailable, serving from the store: Connection refused"
    ]


# --- Write-behind fills and batched reads ------------------------------------------------------


def test_an_answer_body_is_the_json_of_the_promotion_and_a_miss_is_empty() -> None:
    assert answer_body({"id": "a", "price": 1.5}) == b'{"id":"a","price":1.5}'
    assert answer_body(None) == NEGATIVE


def test_fills_made_together_go_to_redis_in_one_pipeline_with_their_ttls(
    cache: PromotionCache, redis: FlakyRedis
) -> None:
    async def fill() -> None:
        cache.put_later(3, "a", b"{}")
        cache.put_later(3, "b", NEGATIVE)
        cache.put_later(4, "a", b"[]")
        await cache.flush()

    run(fill())
    assert redis.pipelines == [
        [("promo:v3:a", b"{}", 3600), ("promo:v3:b", b"", 60), ("promo:v4:a", b"[]", 3600)]
    ]
    assert redis.data == {"promo:v3:a": b"{}", "promo:v3:b": b"", "promo:v4:a": b"[]"}


def test_fills_made_during_a_flush_go_in_the_next_pipeline(
    cache: PromotionCache, redis: FlakyRedis
) -> None:
    async def fill() -> None:
        cache.put_later(1, "a", b"{}")
        await asyncio.sleep(0)  # the flush has taken "a" and waits for Redis
        cache.put_later(1, "b", b"{}")
        await cache.flush()

    run(fill())
    assert [[name for name, _, _ in p] for p in redis.pipelines] == [["promo:v1:a"], ["promo:v1:b"]]


def test_fills_beyond_max_pending_fills_are_dropped(
    cache: PromotionCache, redis: FlakyRedis
) -> None:
    assert MAX_PENDING_FILLS == 10_000

    async def fill() -> None:
        for i in range(MAX_PENDING_FILLS + 5):
            cache.put_later(1, str(i), b"{}")
        await cache.flush()

    run(fill())
    assert len(redis.data) == MAX_PENDING_FILLS and "promo:v1:9999" in redis.data


def test_a_failed_flush_drops_its_fills_and_starts_the_cool_down(
    cache: PromotionCache, redis: FlakyRedis, clock: Clock
) -> None:
    redis.down = True

    async def fill() -> None:
        cache.put_later(1, "a", b"{}")
        await cache.flush()
        cache.put_later(1, "b", b"{}")  # during the cool-down: dropped at once
        await cache.flush()

    run(fill())
    assert cache.degraded and cache.counters.errors == 1 and redis.calls == 1
    redis.down = False
    clock.now += 5.0
    run(fill())
    assert redis.data == {"promo:v1:a": b"{}", "promo:v1:b": b"{}"}


def test_a_batched_read_is_one_mget_and_counts_each_answer(
    cache: PromotionCache, redis: FlakyRedis
) -> None:
    redis.data = {"promo:v2:a": b"{}", "promo:v2:b": NEGATIVE}
    assert run(cache.get_many(2, ["a", "b", "c"])) == [b"{}", NEGATIVE, None]
    assert redis.calls == 1
    c = cache.counters
    assert (c.hits, c.negative_hits, c.misses) == (1, 1, 1)


def test_a_batched_read_for_prefill_is_not_counted_as_lookups(
    cache: PromotionCache, redis: FlakyRedis
) -> None:
    redis.data = {"promo:v2:a": b"{}", "promo:v2:b": NEGATIVE}
    assert run(cache.get_many(2, ["a", "b", "c"], count=False)) == [b"{}", NEGATIVE, None]
    c = cache.counters
    assert (c.hits, c.negative_hits, c.misses) == (0, 0, 0)


def test_a_batched_read_of_nothing_or_during_the_cool_down_asks_redis_nothing(
    cache: PromotionCache, redis: FlakyRedis
) -> None:
    assert run(cache.get_many(2, [])) == []
    redis.down = True
    assert run(cache.get_many(2, ["a", "b"])) == [None, None]
    assert cache.degraded and redis.calls == 1
    assert run(cache.get_many(2, ["a", "b"])) == [None, None]
    assert redis.calls == 1
