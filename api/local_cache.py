"""First cache level: lookup answers kept in the API process's own memory.

A dataset version never changes once it is live, so ``(version, id) -> response bytes`` can
be kept with no expiry and no invalidation at all: a switch simply asks for other keys, and
the old version's entries age out of the LRU order. Negative answers (``NEGATIVE``) are
kept too. Redis stays the shared second level. Bounded in bytes rather than entries so the
setting maps to what an operator budgets (process memory).
"""

from __future__ import annotations

from cachetools import LRUCache

# What one entry costs beyond the characters of its body and id: key and value tuples, the
# size int, dict slots, the LRU's OrderedDict node (354 B with tracemalloc on CPython 3.11,
# 50k entries) plus the bytes and str object headers (~82 B).
ENTRY_OVERHEAD = 440

Key = tuple[int, str]


def _entry_size(value: tuple[int, bytes]) -> int:
    return value[0]


class LocalCache:
    """An LRU of answers bounded by ``max_bytes``; ``max_bytes=0`` keeps nothing."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # Values carry their own size: the size function sees only the value, and the key
        # (the id) is part of the memory an entry holds.
        self._lru: LRUCache[Key, tuple[int, bytes]] = LRUCache(
            maxsize=max(max_bytes, 1), getsizeof=_entry_size
        )

    def get(self, version: int, key: str) -> bytes | None:
        entry = self._lru.get((version, key))
        return None if entry is None else entry[1]

    def put(self, version: int, key: str, body: bytes) -> None:
        size = len(body) + len(key) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return  # also the ``max_bytes=0`` case: cachetools would raise
        self._lru[(version, key)] = (size, body)

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def current_bytes(self) -> int:
        return int(self._lru.currsize)

    def clear(self) -> None:
        self._lru.clear()

    def adopt(self, fresh: LocalCache) -> None:
        """Hold ``fresh``'s entries instead of its own, which are dropped all at once. At a
        switch: the previous version's entries, evicted one by one as new ones came, left
        their memory fragmented (a process held ~1.4x the bound after switches, ~1.05x
        when they go at once; bench/RESULTS.md "API memory")."""
        self._lru = fresh._lru
