"""End-to-end ingest: upload start → job ``succeeded``, against two bare references.

The service run uploads a generated file to the API and follows the job through the Celery
workers (``--workers`` processes): plan, map (parse into run files), reduce (bucket
documents), switch. The references are bare scripts, the same number of processes
``insert_many(ordered=False)`` into the same server, documents pre-built in memory:

- one document per row (the layout before buckets), in batches of ``--batch-rows`` rows;
- the very bucket documents a job writes, in inserts of about ``--batch-rows`` rows.

Targets (issue #15): service ≥ 10x the first, ≥ 0.8x the second. Runs are interleaved;
ratios are medians of run-by-run ratios. Also: worker CPU per row, peak RSS of the worker
processes, and storage per million rows (``collStats``) of both layouts.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pymongo
from bson.raw_bson import RawBSONDocument

from bench.common import add_common_args, interleave, medians, paired_ratio, report, table
from bench.parse import data_file
from bench.stack import Stack, stack
from shared.dataset import datasets
from shared.fileformat.bucket_layout import buckets_for
from shared.fileformat.promotion_rows import ChunkStats, parse_chunk, parse_chunk_rows
from shared.settings import get_settings
from worker.bucket_writer import insert_batches, merge
from worker.chunking import plan_chunks, read_range
from worker.shuffle_files import PartitionRows

ROW_TARGET = 10.0  # x raw one-document-per-row insert_many
BUCKET_TARGET = 0.8  # x raw insert_many of the prebuilt bucket documents


def _documents(path: Path, start: int, end: int, batch_rows: int) -> list[list[RawBSONDocument]]:
    with path.open("rb") as f:
        data = read_range(f, start, end)
    batches = parse_chunk(data, start, batch_rows, ChunkStats())
    return [[RawBSONDocument(raw) for raw in batch.values()] for batch in batches]


def _raw_loader(
    url: str,
    db: str,
    coll: str,
    path: Path,
    ranges: list[tuple[int, int]],
    batch_rows: int,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    batches = [b for start, end in ranges for b in _documents(path, start, end, batch_rows)]
    _insert_together(url, db, coll, batches, sum(len(b) for b in batches), ready, go, out)


def _insert_together(
    url: str,
    db: str,
    coll: str,
    batches: list[list[RawBSONDocument]],
    rows: int,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    """A loader process's timed part: connected first, started with the others."""
    target = pymongo.MongoClient(url)[db][coll]
    target.find_one()  # connect before the clock starts
    ready.release()
    go.wait()
    t0 = time.time()
    for batch in batches:
        target.insert_many(batch, ordered=False)
    out.put((t0, time.time(), rows))


def bucket_documents(path: Path, batch_rows: int) -> list[tuple[int, list[bytes]]]:
    """The inserts a job makes of this file: its bucket documents (bucket count as the
    planner chooses it), in batches of about ``batch_rows`` rows."""
    data = path.read_bytes()
    keys, elements = parse_chunk_rows(data, 0, ChunkStats())
    buckets = buckets_for(len(set(keys)), 100, get_settings().shuffle_slices)
    merged = merge(PartitionRows(keys, elements), buckets)
    return list(insert_batches(merged.documents, batch_rows))


def _raw_bucket_loader(
    url: str,
    db: str,
    coll: str,
    batches: list[tuple[int, list[bytes]]],
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    docs = [[RawBSONDocument(raw) for raw in batch] for _, batch in batches]
    _insert_together(url, db, coll, docs, sum(rows for rows, _ in batches), ready, go, out)


def _race(
    st: Stack, loader: Any, per_process: list[tuple[Any, ...]]
) -> tuple[str, dict[str, float]]:
    """Start one ``loader`` process per argument tuple on a fresh collection, release them
    together once all are connected; (collection, rows / seconds / rows_per_s)."""
    coll = f"raw_{time.time_ns()}"
    st.mongo_db().create_collection(coll)
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=loader, args=(st.mongo_url, st.env["MONGO_DB"], coll, *args, ready, go, out)
        )
        for args in per_process
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    go.set()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = max(r[1] for r in results) - min(r[0] for r in results)
    rows = sum(r[2] for r in results)
    return coll, {"rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed}


def run_raw_buckets(st: Stack, path: Path, processes: int, batch_rows: int) -> dict[str, float]:
    """Bare insert_many of the prebuilt bucket documents from ``processes`` processes."""
    batches = bucket_documents(path, batch_rows)
    coll, metrics = _race(
        st, _raw_bucket_loader, [(batches[i::processes],) for i in range(processes)]
    )
    st.mongo_db().drop_collection(coll)
    return metrics


def run_raw(st: Stack, path: Path, processes: int, batch_rows: int) -> dict[str, float]:
    """Bare insert_many from ``processes`` processes; chunks dealt round-robin."""
    with path.open("rb") as f:
        chunks = plan_chunks(f, path.stat().st_size, max(1, path.stat().st_size // processes))
    coll, metrics = _race(
        st, _raw_loader, [(path, chunks[i::processes], batch_rows) for i in range(processes)]
    )
    storage = storage_per_million_rows(st.mongo_db(), coll, int(metrics["rows"]))
    st.mongo_db().drop_collection(coll)
    return {**metrics, **storage}


def storage_per_million_rows(db: Any, coll: str, rows: int) -> dict[str, float]:
    """``collStats`` (deprecated in MongoDB 8 but answered; the dev store has no
    ``$collStats`` sizes) per million rows, MB."""
    stats = db.command("collStats", coll)
    per = 1e6 / max(1, rows) / 1e6
    return {
        "documents": float(stats["count"]),
        "data_mb_per_m": stats["size"] * per,
        "storage_mb_per_m": stats["storageSize"] * per,
        "index_mb_per_m": stats["totalIndexSize"] * per,
    }


def _ts(value: datetime | None) -> float:
    return value.timestamp() if value else float("nan")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (Celery's pool processes live on)."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


class PeakRss:
    """Samples the resident memory of a process and of each of its children."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.root = psutil.Process(pid)
        self.every_s = every_s
        self.peak_root = 0
        self.peak_child = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_root = max(self.peak_root, self.root.memory_info().rss)
                for child in self.root.children(recursive=True):
                    self.peak_child = max(self.peak_child, child.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(self.every_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_service(st: Stack, path: Path) -> dict[str, float]:
    """Upload through the API, poll until the job ends, read its phase timestamps."""
    assert st.api_url is not None and st.workers is not None and st.workers.proc is not None
    assert st.api is not None and st.api.proc is not None
    worker_cpu0, api_cpu0 = tree_cpu_seconds(st.workers.proc.pid), tree_cpu_seconds(st.api.proc.pid)
    with (
        PeakRss(st.workers.proc.pid) as rss,
        httpx.Client(base_url=st.api_url, timeout=None) as client,
    ):
        t0 = time.time()
        with path.open("rb") as f:
            r = client.post("/add-promotions/", files={"file": (path.name, f, "text/csv")})
        t_stored = time.time()
        r.raise_for_status()
        job_id = r.json()["job_id"]
        while True:
            job = client.get(f"/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.05)
    worker_cpu = tree_cpu_seconds(st.workers.proc.pid) - worker_cpu0
    api_cpu = tree_cpu_seconds(st.api.proc.pid) - api_cpu0
    if job["status"] != "succeeded":
        raise RuntimeError(f"job failed: {job['error']}")
    doc = st.mongo_db()["jobs"].find_one({"_id": job_id})
    assert doc is not None
    phases = doc.get("phase_at", {})
    split, load, write, activate = (
        _ts(phases.get(p)) for p in ("splitting", "loading", "writing", "activating")
    )
    done = _ts(doc["finished_at"])
    rows = doc["rows_loaded"]
    version = int(doc["version"])
    storage = storage_per_million_rows(st.mongo_db(), datasets.collection_name(version), rows)
    return {
        "rows": rows,
        "seconds": done - t0,
        "rows_per_s": rows / (done - t0),
        "upload_s": t_stored - t0,
        "queued_s": split - t_stored,
        "split_s": load - split,
        "map_s": write - load,
        "reduce_s": activate - write,
        "activate_s": done - activate,
        "chunks": doc["chunks_total"],
        "partitions": doc["partitions_total"],
        "buckets": doc["buckets"],
        "worker_cpu_s": worker_cpu,
        "worker_cpu_us_per_row": worker_cpu / rows * 1e6,
        "rows_per_worker_core_s": rows / worker_cpu,
        "worker_peak_rss_mb": rss.peak_child / (1024 * 1024),
        "api_cpu_s": api_cpu,
        **storage,
    }


def run_memory(rows: int, load_s: float, append: bool) -> None:
    """Peak RSS of the API during a large upload and of worker processes while they load
    production-size chunks (default ``CHUNK_SIZE_BYTES``); stops after ``load_s`` of loading."""
    path = data_file(rows)
    print(f"file {path} ({path.stat().st_size / 1e6:.0f} MB, {rows:,} rows)")
    with stack(api=True, workers=2) as st:
        assert st.api is not None and st.api.proc and st.workers and st.workers.proc
        with PeakRss(st.api.proc.pid) as api, PeakRss(st.workers.proc.pid) as workers:
            t0 = time.time()
            with (
                httpx.Client(base_url=st.api_url or "", timeout=None) as client,
                path.open("rb") as f,
            ):
                r = client.post("/add-promotions/", files={"file": (path.name, f, "text/csv")})
                r.raise_for_status()
                upload_s = time.time() - t0
                time.sleep(load_s)
                job = client.get(f"/jobs/{r.json()['job_id']}").json()
    mb = 1024 * 1024
    body = table(
        ["process", "peak RSS MB", "target MB"],
        [
            [
                f"API (uvicorn) during a {path.stat().st_size / 1e6:.0f} MB upload",
                api.peak_root / mb,
                150,
            ],
            [
                "worker pool process, largest while loading 32 MiB chunks",
                workers.peak_child / mb,
                300,
            ],
            ["worker main process (consumer)", workers.peak_root / mb, 300],
        ],
    )
    body += (
        f"\n\nUpload took {upload_s:.1f} s; sampled every 50 ms until {load_s:g} s into loading "
        f"(phase {job['phase']}, {job['chunks_done']} of {job['chunks_total']} chunks finished)."
    )
    report(f"Memory ({rows:,}-row file)", body, 1, append)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (and raw ones)")
    parser.add_argument("--batch-rows", type=int, default=5000, help="INSERT_BATCH_ROWS")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=4 * 1024 * 1024,
        help="CHUNK_SIZE_BYTES: small enough that every worker process gets chunks",
    )
    parser.add_argument(
        "--skip-row-documents",
        action="store_true",
        help="leave out the one-document-per-row reference (minutes at 2M rows)",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="instead: peak RSS of the API and the workers on a 2M-row file (default chunk size)",
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.memory:
        run_memory(2_000_000, load_s=45, append=args.append_results)
        return
    path = data_file(args.rows, seed=2, clean=True)
    print(f"file {path} ({path.stat().st_size / 1e6:.1f} MB, {args.rows:,} rows)")
    env = {
        "INSERT_BATCH_ROWS": str(args.batch_rows),
        "CHUNK_SIZE_BYTES": str(args.chunk_size),
        "WORKER_CONCURRENCY": str(args.workers),
    }
    with stack(api=True, workers=args.workers, extra_env=env) as st:
        cases = [
            ("service", lambda: run_service(st, path)),
            ("raw buckets", lambda: run_raw_buckets(st, path, args.workers, args.batch_rows)),
        ]
        if not args.skip_row_documents:
            cases.append(("raw rows", lambda: run_raw(st, path, args.workers, args.batch_rows)))
        samples = interleave(args.runs, cases)
    svc, buckets = medians(samples["service"]), medians(samples["raw buckets"])
    bucket_ratio = paired_ratio(samples["service"], samples["raw buckets"], "rows_per_s")
    rows_table: list[list[object]] = [
        [
            f"upload → succeeded, {args.workers} workers",
            int(svc["rows"]),
            svc["seconds"],
            svc["rows_per_s"],
            "",
        ],
        [
            f"raw insert_many of the same bucket documents, {args.workers} processes",
            int(buckets["rows"]),
            buckets["seconds"],
            buckets["rows_per_s"],
            f"service {bucket_ratio:.2f}x",
        ],
    ]
    verdicts = [
        f"≥ {BUCKET_TARGET:.1f}x raw bucket insert_many: "
        f"**{'met' if bucket_ratio >= BUCKET_TARGET else 'MISSED'}** ({bucket_ratio:.2f}x)"
    ]
    storage = [("bucketed (this service)", svc)]
    if not args.skip_row_documents:
        raw = medians(samples["raw rows"])
        row_ratio = paired_ratio(samples["service"], samples["raw rows"], "rows_per_s")
        rows_table.append(
            [
                f"raw insert_many, one document per row, {args.workers} processes",
                int(raw["rows"]),
                raw["seconds"],
                raw["rows_per_s"],
                f"service {row_ratio:.2f}x",
            ]
        )
        verdicts.insert(
            0,
            f"≥ {ROW_TARGET:.0f}x raw one-document-per-row insert_many: "
            f"**{'met' if row_ratio >= ROW_TARGET else 'MISSED'}** ({row_ratio:.2f}x)",
        )
        storage.append(("one document per row", raw))
    body = table(["case", "rows", "seconds", "rows/s", "ratio"], rows_table)
    body += "\n\nPhases of the service run (medians, seconds):\n\n" + table(
        ["upload + store", "queued", "split", "map", "reduce", "activate", "chunks", "partitions"],
        [
            [
                svc["upload_s"],
                svc["queued_s"],
                svc["split_s"],
                svc["map_s"],
                svc["reduce_s"],
                svc["activate_s"],
                int(svc["chunks"]),
                int(svc["partitions"]),
            ]
        ],
    )
    body += (
        f"\n\nWorker CPU (all worker processes): {svc['worker_cpu_s']:.1f} s = "
        f"**{svc['worker_cpu_us_per_row']:.1f} µs per row** "
        f"({svc['rows_per_worker_core_s']:,.0f} rows per worker CPU second: parse, run files, "
        f"merge, insert client side, Celery); peak RSS of a worker pool process "
        f"**{svc['worker_peak_rss_mb']:.0f} MB**; API CPU for the upload {svc['api_cpu_s']:.2f} s."
    )
    body += "\n\nStorage per million rows (`collStats`, MB):\n\n" + table(
        ["layout", "documents", "data", "storage", "indexes"],
        [
            [
                name,
                int(m["documents"]),
                m["data_mb_per_m"],
                m["storage_mb_per_m"],
                m["index_mb_per_m"],
            ]
            for name, m in storage
        ],
    )
    body += "\n\nTargets: " + "; ".join(verdicts) + " (medians of run-by-run ratios)."
    body += (
        f" Chunk size {args.chunk_size:,} bytes, batch {args.batch_rows:,} rows, "
        f"{int(svc['buckets']):,} buckets."
    )
    report(f"End-to-end ingest ({args.rows:,} rows)", body, args.runs, args.append_results)


if __name__ == "__main__":
    main()
