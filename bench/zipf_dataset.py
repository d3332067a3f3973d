"""A big dataset for bench.zipf, built by inserting bucket documents directly.

A regular load of 20M rows (upload, map, shuffle, reduce) takes far too long on the dev store
of a shared 2-core machine, so the version is written the way the reduce step writes it
(``bucket_document`` of ``encode_element`` rows, ``insert_many`` of bucket documents) and
then registered, marked ready and activated through ``shared.dataset.lifecycle`` as a job would:
what the API reads is the same layout. Ids are a function of the row number (``id_of``),
so the load generator (bench/zipf.lua) draws them without an id list. The store directory
is kept between runs and reused when it holds the same dataset (``dataset.json``).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis
from bson.raw_bson import RawBSONDocument

from shared.dataset import datasets, lifecycle
from shared.fileformat.bucket_layout import bucket_document, buckets_of, encode_element
from shared.readpath.cache import answer_body, cache_key

VERSION = 1
ROWS_PER_BUCKET = 100
PASS_ROWS = 8_000_000  # rows whose elements one pass holds in memory (~1 GB)
INSERT_DOCS = 50  # bucket documents per insert_many (~5 MB)
FORMAT = 1  # bump when id_of or the row content changes


def id_of(i: int) -> str:
    """Row ``i``'s id, uuid-shaped; bench/zipf.lua has the same formula."""
    return (
        f"{i:08x}-5f1c-4e2a-{i % 65536:04x}-{(i * 104729) % 2147483648:08x}{(i * 7919) % 65536:04x}"
    )


def promotion(i: int) -> dict[str, Any]:
    """Row ``i`` as the API answers it."""
    return {
        "id": id_of(i),
        "price": (i % 100_000) / 100,
        "expiration_date": f"20{27 + i % 3}-{1 + i % 12:02d}-{1 + i % 28:02d} 05:32:31 +0200 CEST",
    }


def _row(i: int) -> bytes:
    p = promotion(i)
    key = p["id"].encode()
    return encode_element(key, key, p["price"], p["expiration_date"].encode())


def fill_cache(redis_url: str, rows: list[int], ttl_s: int) -> None:
    """Put the answers of ``rows`` in Redis as the API would (the state of a cache that has
    seen every one of them within its TTL): the warm benchmark regime."""
    r = redis.Redis.from_url(redis_url)
    for start in range(0, len(rows), 10_000):
        with r.pipeline(transaction=False) as pipe:
            for i in rows[start : start + 10_000]:
                pipe.set(cache_key(VERSION, id_of(i)), answer_body(promotion(i)), ex=ttl_s)
            pipe.execute()


def _marker(rows: int) -> dict[str, Any]:
    return {"rows": rows, "version": VERSION, "format": FORMAT}


def ready(store_dir: Path, rows: int) -> bool:
    marker = store_dir / "dataset.json"
    return marker.exists() and json.loads(marker.read_text()) == _marker(rows)


def build(db: Any, store_dir: Path, rows: int) -> None:
    """Write ``rows`` rows as version 1 of ``db`` and make it live (the database is
    dropped first). Prints progress."""
    (store_dir / "dataset.json").unlink(missing_ok=True)
    db.client.drop_database(db.name)
    buckets = max(1, -(-rows // ROWS_PER_BUCKET))
    lifecycle.register_version(db, VERSION, "bench-zipf", buckets=buckets)
    coll = db[datasets.collection_name(VERSION)]
    passes = max(1, -(-rows // PASS_ROWS))
    started = time.monotonic()
    written = 0
    for p in range(passes):
        members: dict[int, list[bytes]] = defaultdict(list)
        for first in range(0, rows, 1_000_000):
            numbers = range(first, min(rows, first + 1_000_000))
            keys = [id_of(i).encode() for i in numbers]
            for i, bucket in zip(numbers, buckets_of(keys, buckets), strict=True):
                if bucket % passes == p:
                    members[bucket].append(_row(i))
        docs = [(len(members[b]), bucket_document(b, members.pop(b))) for b in sorted(members)]
        for start in range(0, len(docs), INSERT_DOCS):
            batch = docs[start : start + INSERT_DOCS]
            coll.insert_many([RawBSONDocument(doc) for _, doc in batch], ordered=False)
            written += sum(n for n, _ in batch)
            if start % (INSERT_DOCS * 200) == 0:
                rate = written / (time.monotonic() - started)
                print(f"  {written:,} of {rows:,} rows written ({rate:,.0f} rows/s)", flush=True)
    assert written == rows, (written, rows)
    assert lifecycle.mark_ready(db, VERSION, rows)
    assert lifecycle.activate_if_newest(db, VERSION, rows, "bench-zipf") == "switched"
    (store_dir / "dataset.json").write_text(json.dumps(_marker(rows)))
    print(f"dataset: {rows:,} rows in {time.monotonic() - started:.0f} s", flush=True)
