"""Lookups: ``GET /promotions/{id}`` on a cache hit, a negative-cache hit and a cache miss.

The API (uvicorn, uvloop, httptools, 1 worker) is compared in the same run with bare
references: for cache hits, a minimal Starlette app on the same uvicorn settings doing the
same Redis GET and returning the same bytes, and a raw ASGI app returning a constant body
(the ceiling for any Python service); for misses (both cache levels cold: each run serves a
freshly loaded version), a bare ``AsyncMongoClient`` ``find_one`` loop at the same
concurrency. Load comes from ``wrk`` in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
from bson.raw_bson import RawBSONDocument
from pymongo import AsyncMongoClient

from bench.common import ROOT, add_common_args, interleave, medians, paired_ratio, report, table
from bench.parse import data_file
from bench.stack import Stack, stack
from devstack.services import Service, free_port
from shared.dataset import datasets, lifecycle
from shared.fileformat.bucket_layout import bucket_count
from shared.fileformat.promotion_rows import ChunkStats, parse_chunk, parse_chunk_rows
from worker.bucket_writer import write_rows

LUA = ROOT / "bench" / "lookups.lua"
VERSION = 1
# The reference layout (one document per row, as before bucketed versions) for the bare
# find_one loop the service's misses are measured against.
ROW_DOCUMENTS = "bench_row_documents"


def load(st: Stack, path: Path, version: int = VERSION, activate: bool = True) -> list[str]:
    """Load the file straight into ``version`` (bucketed, as a job lays it out), make it
    live; return its ids."""
    db = st.mongo_db()
    data = path.read_bytes()
    keys, elements = parse_chunk_rows(data, 0, ChunkStats())
    buckets = bucket_count(len(data), len(data) / max(1, len(keys)), 100)
    lifecycle.register_version(db, version, "bench", buckets=buckets)
    rows = write_rows(db[datasets.collection_name(version)], keys, elements, buckets, 5000).rows
    lifecycle.mark_ready(db, version, rows)
    if activate:
        lifecycle.activate_if_newest(db, version, rows, "bench")
    return list(dict.fromkeys(key.decode() for key in keys))


def load_row_documents(st: Stack, path: Path) -> None:
    """The same rows one document each (the layout before buckets), for the reference."""
    coll = st.mongo_db()[ROW_DOCUMENTS]
    for batch in parse_chunk(path.read_bytes(), 0, 5000, ChunkStats()):
        coll.insert_many([RawBSONDocument(raw) for raw in batch.values()], ordered=False)


def start_reference(st: Stack, app: str) -> tuple[Service, str]:
    """A reference app (``bench.ref_app:app``, ``bench.raw_app:app``) with the API's
    uvicorn settings, on a free port."""
    port = free_port()
    ref = Service(
        app.split(":")[0],
        [
            *(sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)),
            *("--workers", "1", "--loop", "uvloop", "--http", "httptools", "--no-access-log"),
        ],
        env={**st.env, "REF_VERSION": str(VERSION)},
        port=port,
        log_path=st.tmp / "logs" / f"{app.split(':')[0]}.log",
    )
    ref.start().wait_ready(30)
    return ref, f"http://127.0.0.1:{port}"


def wait_live(url: str, some_id: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/promotions/{some_id}").status_code == 200:
            return
        time.sleep(0.2)
    raise TimeoutError("the API did not serve the dataset")


async def _warm(url: str, ids: list[str]) -> None:
    sem = asyncio.Semaphore(32)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(i: str) -> None:
            async with sem:
                r = await client.get(f"/promotions/{i}")
                assert r.status_code in (200, 404), r.text

        await asyncio.gather(*(one(i) for i in ids))


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def wrk(
    url: str, ids_file: Path, mode: str, seconds: float, connections: int, pid: int
) -> dict[str, float]:
    """wrk against ``url``; also the CPU time the server process ``pid`` used meanwhile."""
    cpu0 = cpu_seconds(pid)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{int(seconds)}s",
            "--timeout",
            "5s",
            "-s",
            str(LUA),
            url,
            "--",
            str(ids_file),
            mode,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    cpu = cpu_seconds(pid) - cpu0
    line = next(x for x in out.splitlines() if x.startswith("WRK "))
    r = json.loads(line[4:])
    return {
        "req_per_s": r["requests"] / (r["duration_us"] / 1e6),
        "req_per_core_s": r["requests"] / cpu,
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "errors": r["socket_errors"],
        "non_2xx": r["non_2xx"],
    }


async def _find_one_loop(
    mongo_url: str,
    db: str,
    ids: list[str],
    seconds: float,
    concurrency: int,
    buckets: int | None = None,
) -> dict[str, float]:
    """Bare ``find_one`` by id from one process: of the row documents, or (``buckets``) of
    the bucketed version, one bucket with a projection of the one id, as the service reads."""
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_url, maxPoolSize=200)
    coll = client[db][ROW_DOCUMENTS if buckets is None else datasets.collection_name(VERSION)]
    await coll.find_one({"_id": ids[0]})
    latencies: list[float] = []
    position = 0
    stop = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal position
        while time.perf_counter() < stop:
            key = ids[position % len(ids)]
            position += 1
            t = time.perf_counter()
            await coll.find_one(*datasets.rows_query([key], buckets))
            latencies.append(time.perf_counter() - t)

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await client.close()
    q = statistics.quantiles(latencies, n=100)
    return {
        "req_per_s": len(latencies) / elapsed,
        "req_per_core_s": len(latencies) / cpu,
        "p50_ms": q[49] * 1e3,
        "p99_ms": q[98] * 1e3,
        "errors": 0,
        "non_2xx": 0,
    }


def add_load_args(parser: argparse.ArgumentParser, seconds: int = 8) -> None:
    """Options every wrk-driven lookup benchmark shares, plus --runs / --append-results."""
    parser.add_argument("--rows", type=int, default=20_000, help="dataset rows")
    parser.add_argument("--hot-ids", type=int, default=2000, help="ids used for cache hits")
    parser.add_argument("--seconds", type=int, default=seconds, help="per measurement")
    parser.add_argument("--connections", type=int, default=64, help="concurrency")
    add_common_args(parser)


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk (make bench installs it)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_args(parser)
    parser.add_argument("--skip-miss", action="store_true", help="cache hits only")
    args = parser.parse_args(argv)
    require_wrk()
    path = data_file(args.rows, seed=3, clean=True)
    with stack(api=True) as st:
        assert st.api_url is not None
        ids = load(st, path)
        load_row_documents(st, path)
        wait_live(st.api_url, ids[0])
        files = st.tmp / "ids"
        files.mkdir()
        hot, absent, cold = files / "hot", files / "absent", files / "cold"
        hot.write_text("\n".join(ids[: args.hot_ids]) + "\n")
        absent_ids = [str(uuid.uuid4()) for _ in range(1000)]
        absent.write_text("\n".join(absent_ids) + "\n")
        cold.write_text("\n".join(ids) + "\n")
        asyncio.run(_warm(st.api_url, ids[: args.hot_ids] + absent_ids))
        ref, ref_url = start_reference(st, "bench.ref_app:app")
        raw, raw_url = start_reference(st, "bench.raw_app:app")
        secs, conns = args.seconds, args.connections
        assert st.api is not None and st.api.proc is not None
        assert ref.proc is not None and raw.proc is not None
        api_url, api_pid, ref_pid, raw_pid = st.api_url, st.api.proc.pid, ref.proc.pid, raw.proc.pid
        next_version = VERSION

        def miss_run() -> dict[str, float]:
            # Both levels cold: a new version (new keys everywhere), an empty Redis.
            nonlocal next_version
            next_version += 1
            load(st, path, next_version)
            # Redis is not flushed: the new version's keys are new anyway, and the bare
            # reference reads version 1's keys (a flush turned its later hits into 404s).
            time.sleep(1.5)  # every process serves a new version within 1 s
            return wrk(api_url, cold, "sequential", secs, conns, api_pid)

        cases = [
            ("hit: API", lambda: wrk(api_url, hot, "random", secs, conns, api_pid)),
            (
                "hit: bare Starlette + Redis GET",
                lambda: wrk(ref_url, hot, "random", secs, conns, ref_pid),
            ),
            ("hit: raw ASGI constant", lambda: wrk(raw_url, hot, "random", secs, conns, raw_pid)),
            ("negative hit: API", lambda: wrk(api_url, absent, "random", secs, conns, api_pid)),
            (
                "negative hit: bare Starlette",
                lambda: wrk(ref_url, absent, "random", secs, conns, ref_pid),
            ),
        ]
        refs = {
            "hit: API": ["hit: bare Starlette + Redis GET", "hit: raw ASGI constant"],
            "negative hit: API": ["negative hit: bare Starlette"],
        }
        if not args.skip_miss:
            cases += [
                ("miss: API (both cache levels cold)", miss_run),
                (
                    "miss: bare AsyncMongoClient find_one (one document per row)",
                    lambda: asyncio.run(
                        _find_one_loop(st.mongo_url, st.env["MONGO_DB"], ids, secs, conns)
                    ),
                ),
            ]
            buckets = datasets.read_buckets_sync(st.mongo_db(), VERSION)
            cases.append(
                (
                    "miss: bare AsyncMongoClient find_one of a bucket, one id projected",
                    lambda: asyncio.run(
                        _find_one_loop(st.mongo_url, st.env["MONGO_DB"], ids, secs, conns, buckets)
                    ),
                )
            )
            refs["miss: API (both cache levels cold)"] = [
                "miss: bare AsyncMongoClient find_one (one document per row)"
            ]
            refs["miss: bare AsyncMongoClient find_one of a bucket, one id projected"] = [
                "miss: bare AsyncMongoClient find_one (one document per row)"
            ]
        try:
            samples = interleave(args.runs, cases)
        finally:
            ref.stop()
            raw.stop()
    rows = []
    for name, _ in cases:
        m = medians(samples[name])
        ratios = []
        for ref_name in refs.get(name, []):
            ratio = paired_ratio(samples[name], samples[ref_name], "req_per_s")
            cpu_ratio = paired_ratio(samples[name], samples[ref_name], "req_per_core_s")
            ratios.append(f"{ratio:.2f}x / {cpu_ratio:.2f}x vs {ref_name.split(': ')[1]}")
        rows.append(
            [
                name,
                m["req_per_s"],
                m["req_per_core_s"],
                m["p50_ms"],
                m["p99_ms"],
                int(m["errors"]),
                int(m["non_2xx"]),
                "; ".join(ratios) or "(reference)",
            ]
        )
    headers = ["case", "req/s", "req per server CPU s", "p50 ms", "p99 ms", "socket errors"]
    body = table([*headers, "non-2xx", "paired ratio: req/s / per CPU s"], rows)
    body += (
        f"\n\nConcurrency {args.connections} (wrk -t1), {args.seconds:g} s per measurement, "
        f"{args.rows:,} rows loaded, {args.hot_ids:,} hot ids, 1,000 absent ids. "
        "Targets: hit ≥ 2.5x bare Starlette + Redis and ≥ 0.5x raw ASGI; miss ≥ 0.80x bare "
        "find_one (issue #10) and ≥ 0.9x a bare find_one of today's row documents (issue "
        "#15: the service reads buckets). 'req per server CPU s': requests per CPU second "
        "of the serving process (the API or the bare app; for the bare find_one loop, the "
        "loop's process), Redis and the store not included."
    )
    report("Lookups", body, args.runs, args.append_results)


if __name__ == "__main__":
    main()
