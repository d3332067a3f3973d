"""The process cache's byte bound is the memory its entries really hold: an operator budgets
``LOCAL_CACHE_MAX_BYTES`` as process memory. Measured with tracemalloc, not estimated: an
answer built by the lookup path once held ~4 KiB (the JSON encoder's buffer) while the
cache counted its ~100 characters, so a 64 MiB cache held ~500 MiB."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator

import pytest

from api.local_cache import LocalCache
from shared.readpath.cache import answer_body

DATE = "2018-08-04T05:32:31+02:00"
ENTRIES = 20_000


def answers(n: int) -> Iterator[tuple[str, bytes]]:
    """Answers as the lookup path and the warm-up build them (uuid-like ids)."""
    for i in range(n):
        key = f"{i:08x}-4e6f-4a1b-9c2d-{i:012x}"
        yield key, answer_body({"_id": key, "price": i / 7, "expiration_date": DATE})


def traced_bytes(fill: LocalCache, n: int) -> int:
    """What ``n`` answers put into ``fill`` hold, by tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key, body in answers(n):
            fill.put(1, key, body)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_the_bytes_the_cache_counts_are_the_bytes_its_entries_hold() -> None:
    cache = LocalCache(1 << 40)  # room for everything: every entry counts
    traced = traced_bytes(cache, ENTRIES)
    assert len(cache) == ENTRIES
    # Measured 0.86-0.91 (ENTRY_OVERHEAD rounds up); 7.5 when answers kept the encoder's
    # buffer.
    assert 0.7 <= traced / cache.current_bytes <= 1.25, (traced, cache.current_bytes)


def test_a_full_cache_holds_no_more_memory_than_its_bound() -> None:
    bound = 2 * 1024 * 1024
    cache = LocalCache(bound)
    traced = traced_bytes(cache, ENTRIES)  # ~5x what fits: most are evicted
    assert cache.current_bytes <= bound
    assert traced <= 1.25 * bound, traced


@pytest.mark.parametrize("length", [1, 100, 3000])
def test_an_answer_holds_about_its_own_length(length: int) -> None:
    kept: list[bytes] = [b""] * 1000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(len(kept)):
            kept[i] = answer_body({"_id": "x" * length, "price": i / 7})
        held = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert held <= len(kept[0]) + 64, (held, len(kept[0]))  # a bytes object's header: 33 B


def test_adopting_a_fresh_cache_drops_every_old_entry_and_keeps_the_bound() -> None:
    cache, fresh = LocalCache(1 << 20), LocalCache(1 << 20)
    for key, body in answers(100):
        cache.put(1, key, body)
    fresh.put(2, "a", b"{}")
    cache.adopt(fresh)
    assert len(cache) == 1 and cache.get(2, "a") == b"{}" and cache.get(1, "0" * 8) is None
    assert cache.max_bytes == 1 << 20
