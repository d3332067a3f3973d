"""What the dev store's topology costs a load: a single-node replica set (an oplog entry
written for every stored document) against a standalone server (no oplog, as a standalone
mongod), docs/decisions/standalone-dev-store.md.

Per case a fresh dev store on disk: bucket documents of packed rows (``ROWS_PER_BUCKET``
rows, 36-character ids) inserted five an ``insert_many`` as the reduce does (no retryable
writes), then one-bucket reads with a one-id projection timed alone, then the same reads
while a second client inserts buckets without pause, as a load beside a live version does.
The store's CPU seconds (``psutil`` on its process) say what each insert costs it.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pymongo
from bson.raw_bson import RawBSONDocument

from bench.common import (
    add_common_args,
    interleave,
    medians,
    paired_ratio,
    quantile_ms,
    report,
    table,
)
from devstack.services import Service, free_port, mongo_command
from shared.fileformat.bucket_layout import bucket_document, encode_element

DATE = b"2018-08-04 05:32:31 +0200 CEST"
PER_INSERT = 5  # buckets an insert_many: INSERT_BATCH_ROWS (500) at 100 rows a bucket
CASES = {"single-node replica set": True, "standalone": False}


def _store_cpu(proc: psutil.Process) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)])


def _docs(rng: random.Random, first: int, buckets: int, per_bucket: int) -> list[bytes]:
    return [
        bucket_document(
            b,
            [
                encode_element(k, k, 60.683466, DATE)
                for k in (rng.randbytes(18).hex().encode() for _ in range(per_bucket))
            ],
        )
        for b in range(first, first + buckets)
    ]


def _insert(coll: Any, docs: list[bytes]) -> None:
    for at in range(0, len(docs), PER_INSERT):
        coll.insert_many([RawBSONDocument(d) for d in docs[at : at + PER_INSERT]], ordered=False)


def _reads(coll: Any, rng: random.Random, buckets: int, n: int) -> list[float]:
    latencies = []
    for _ in range(n):
        b = rng.randrange(buckets)
        t = time.perf_counter()
        coll.find_one({"_id": b}, {"r.x": 1})
        latencies.append(time.perf_counter() - t)
    return sorted(latencies)


def _measure(replica_set: bool, buckets: int, per_bucket: int, reads: int) -> dict[str, float]:
    rng = random.Random(7)
    docs = _docs(rng, 0, buckets, per_bucket)
    more = _docs(rng, buckets, buckets, per_bucket)
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        port = free_port()
        command = mongo_command(port, tmp, replica_set=replica_set)
        store = Service("mongo", command, port=port, log_path=Path(tmp) / "m.log")
        store.start().wait_ready(60)
        try:
            assert store.proc is not None
            proc = psutil.Process(store.proc.pid)
            url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
            client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                url, retryWrites=False
            )
            coll = client["bench"]["v"]
            cpu0, t0 = _store_cpu(proc), time.perf_counter()
            _insert(coll, docs)
            cpu1, t1 = _store_cpu(proc), time.perf_counter()
            idle = _reads(coll, rng, buckets, reads)
            # Reads beside a load: another client inserts the next buckets without pause.
            loader: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                url, retryWrites=False
            )
            stop = threading.Event()
            inserted = [0]

            def load() -> None:
                target = loader["bench"]["w"]
                for at in range(0, len(more), PER_INSERT):
                    if stop.is_set():
                        break
                    batch = more[at : at + PER_INSERT]
                    target.insert_many([RawBSONDocument(d) for d in batch], ordered=False)
                    inserted[0] += len(batch)

            thread = threading.Thread(target=load)
            t2 = time.perf_counter()
            thread.start()
            busy = _reads(coll, rng, buckets, reads)
            stop.set()
            thread.join()
            t3 = time.perf_counter()
            loader.close()
            client.close()
        finally:
            store.stop()
    rows = buckets * per_bucket
    return {
        "rows_per_s": rows / (t1 - t0),
        "rows_per_store_cpu_s": rows / (cpu1 - cpu0),
        "idle_p99_ms": quantile_ms(idle, 0.99),
        "busy_p50_ms": busy[len(busy) // 2] * 1000,
        "busy_p99_ms": quantile_ms(busy, 0.99),
        "busy_rows_per_s": inserted[0] * per_bucket / (t3 - t2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, default=3000)
    parser.add_argument("--rows-per-bucket", type=int, default=100)
    parser.add_argument("--reads", type=int, default=2000)
    add_common_args(parser, runs=3)
    args = parser.parse_args(argv)
    samples = interleave(
        args.runs,
        [
            (name, partial(_measure, rs, args.buckets, args.rows_per_bucket, args.reads))
            for name, rs in CASES.items()
        ],
    )
    rows = []
    for name, runs in samples.items():
        m = medians(runs)
        rows.append(
            [
                name,
                f"{m['rows_per_s']:,.0f}",
                f"{m['rows_per_store_cpu_s']:,.0f}",
                f"{m['idle_p99_ms']:.2f}",
                f"{m['busy_p50_ms']:.2f}",
                f"{m['busy_p99_ms']:.2f}",
                f"{m['busy_rows_per_s']:,.0f}",
            ]
        )
    new, old = samples["standalone"], samples["single-node replica set"]
    body = table(
        [
            "dev store",
            "insert rows/s",
            "rows per store CPU s",
            "reads alone p99 ms",
            "reads beside inserts p50 ms",
            "p99 ms",
            "rows/s inserted meanwhile",
        ],
        rows,
    )
    body += (
        f"\n\nStandalone ÷ replica set, paired by run: inserted rows per store CPU second "
        f"{paired_ratio(new, old, 'rows_per_store_cpu_s'):.2f}x, insert rows/s "
        f"{paired_ratio(new, old, 'rows_per_s'):.2f}x, reads' p99 beside inserts "
        f"{paired_ratio(new, old, 'busy_p99_ms'):.2f}x, rows/s inserted meanwhile "
        f"{paired_ratio(new, old, 'busy_rows_per_s'):.2f}x. {args.buckets:,} buckets of "
        f"{args.rows_per_bucket} rows, inserts of {PER_INSERT} buckets, {args.reads:,} one-id "
        f"bucket reads alone and beside inserts; a fresh dev store on disk per case."
    )
    report(
        "Dev store topology: single-node replica set against standalone",
        body,
        args.runs,
        args.append_results,
    )


if __name__ == "__main__":
    main()
