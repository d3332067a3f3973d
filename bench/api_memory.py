"""API memory: what the process holds as lookups fill its own cache across switches.

Over a real stack (``bench.stack``: the dev store, Redis, uvicorn): ``--rows`` ids loaded
straight into the store as a version, every id looked up once (each a miss that becomes an
entry of the process cache, ``LOCAL_CACHE_MAX_BYTES``), then ``--switches`` more versions
of the same ids, each going live as the finalizer does it (warm-up of the hot ids, pointer,
announcement) and every id looked up again. The API process's RSS is sampled after each
step: with the cache's bound honest, it levels off once the cache is full instead of
growing with the lookups.

In-process, the same answers (built by the lookup path's ``answer_body``) go into a
``LocalCache`` under tracemalloc: the bytes it accounts against the bytes its entries
really hold, and the top allocation sites.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import tracemalloc
from typing import Any

import httpx
import psutil

from api.local_cache import LocalCache
from bench.common import add_common_args, report, table
from bench.lookups import wait_live
from bench.stack import stack
from shared.dataset import lifecycle
from shared.readpath.cache import answer_body
from shared.readpath.pointer_channel import announce_active
from shared.readpath.warmup import warm_before_switch
from shared.settings import get_settings
from tests.helpers import write_version

DATE = "2018-08-04 05:32:31 +0200 CEST"
MiB = 1 << 20


def ids_of(rows: int) -> list[str]:
    return [f"{n:08x}-4e6f-4a1b-9c2d-{n:012x}" for n in range(rows)]


def go_live(db: Any, version: int, ids: list[str], price: float, redis_url: str) -> None:
    """As the finalizer: version written and ready, warm-up, pointer, announcement."""
    rows = write_version(db, version, [f"{i},{price},{DATE}" for i in ids])
    assert lifecycle.mark_ready(db, version, rows)
    warm_before_switch(db, version)
    assert lifecycle.activate_if_newest(db, version, rows, "bench") == "switched"
    announce_active(redis_url, version)


async def look_up_all(url: str, ids: list[str], concurrency: int = 16) -> int:
    """Every id once (a 503 is asked again); returns the 503s seen."""
    refused = 0
    queue = iter(ids)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def runner() -> None:
            nonlocal refused
            for key in queue:
                while (r := await client.get(f"/promotions/{key}")).status_code == 503:
                    refused += 1
                assert r.status_code in (200, 404), r.text

        await asyncio.gather(*(runner() for _ in range(concurrency)))
    return refused


def wait_version(url: str, some_id: str, price: float) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/promotions/{some_id}")
        if r.status_code == 200 and r.json()["price"] == price:
            return
        time.sleep(0.1)
    raise TimeoutError(f"the API did not serve price {price}")


def stack_run(rows: int, switches: int, cache_bytes: int) -> list[list[object]]:
    ids = ids_of(rows)
    out: list[list[object]] = []
    with stack(
        api=True, extra_env={"LOCAL_CACHE_MAX_BYTES": str(cache_bytes), "LOOKUP_TIMEOUT_MS": "2000"}
    ) as st:
        assert st.api is not None and st.api.proc is not None and st.api_url is not None
        get_settings.cache_clear()  # the stack's environment
        api = psutil.Process(st.api.proc.pid)
        db = st.mongo_db()
        go_live(db, 1, ids, 1.0, st.redis_url)
        wait_live(st.api_url, ids[0])
        out.append(["v1 live, idle", "-", api.memory_info().rss / MiB])
        for n in range(1, switches + 2):
            if n > 1:
                go_live(db, n, ids, float(n), st.redis_url)
                wait_version(st.api_url, ids[0], float(n))
            started = time.monotonic()
            refused = asyncio.run(look_up_all(st.api_url, ids))
            rate = rows / (time.monotonic() - started)
            rss = api.memory_info().rss / MiB
            out.append([f"v{n}: every id looked up", f"{rate:,.0f}/s ({refused} x 503)", rss])
    return out


def cache_run(rows: int) -> tuple[list[list[object]], list[str]]:
    """A LocalCache with room for everything, filled with ``rows`` answers."""
    ids = ids_of(rows)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = LocalCache(1 << 40)
    for n, key in enumerate(ids):
        body = answer_body({"_id": key, "price": float(n), "expiration_date": DATE})
        cache.put(1, key, body)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - before
    top = [str(s) for s in tracemalloc.take_snapshot().statistics("lineno")[:4]]
    tracemalloc.stop()
    accounted = cache.current_bytes
    rows_out: list[list[object]] = [
        [
            f"{len(cache):,}",
            f"{accounted / MiB:.1f}",
            f"{traced / MiB:.1f}",
            f"{traced / accounted:.2f}",
            f"{traced / len(cache):,.0f}",
        ]
    ]
    return rows_out, top


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--switches", type=int, default=2)
    parser.add_argument("--cache-mib", type=int, default=16, help="LOCAL_CACHE_MAX_BYTES in MiB")
    add_common_args(parser, runs=1)
    args = parser.parse_args(argv)
    get_settings.cache_clear()
    cache_rows, top = cache_run(args.rows)
    steps = stack_run(args.rows, args.switches, args.cache_mib * MiB)
    body = (
        table(
            ["entries", "accounted MiB", "traced MiB", "traced ÷ accounted", "B/entry"], cache_rows
        )
        + "\n\nTop allocations (tracemalloc):\n\n"
        + "\n".join(f"- `{line}`" for line in top)
        + "\n\n"
        + table(["API step", "lookups", "API RSS MiB"], steps)
        + f"\n\n{args.rows:,} ids, LOCAL_CACHE_MAX_BYTES={args.cache_mib} MiB, "
        "lookups 16 at a time over HTTP (each id once per version).\n"
    )
    report("API memory: the process cache across switches", body, 1, args.append_results)


if __name__ == "__main__":
    main()
