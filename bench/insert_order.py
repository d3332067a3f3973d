"""Does the order the reduce inserts bucket documents in matter once the collection
outgrows the store's cache?

The shuffle's reduce tasks each own a set of slices, whose buckets (``b mod S`` fixes the
slice) are spread over the whole ``_id`` range: each task sweeps the collection in
ascending ``_id`` order. The layout before it gave each task a contiguous ``_id`` range.
This inserts the same bucket documents (``ROWS_PER_BUCKET`` rows of ~90 bytes each) both
ways, partition after partition, into a fresh dev store whose WiredTiger cache is
``--cache`` (MongoDB's ``storage.wiredTiger.engineConfig.cacheSizeGB`` is the same knob),
and reports rows/s over the first and the last fifth of the load: a growing gap is the
cost of scattered inserts into a B-tree that no longer fits the cache.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pymongo
from bson.raw_bson import RawBSONDocument

from bench.common import add_common_args, report, table
from devstack.services import Service, free_port, mongo_command
from shared.fileformat.bucket_layout import bucket_document, buckets_for, encode_element, reversal

ROW_BYTES = 60


def _documents(buckets: int, rows_per_bucket: int) -> dict[int, bytes]:
    filler = os.urandom(ROW_BYTES // 2).hex().encode()
    return {
        b: bucket_document(
            b,
            [
                encode_element(b"k%d_%d" % (b, i), b"k%d_%d" % (b, i), 1.5, filler)
                for i in range(rows_per_bucket)
            ],
        )
        for b in range(buckets)
    }


def _orders(buckets: int, slices: int, partitions: int) -> dict[str, list[list[int]]]:
    """Bucket numbers per reduce task, in the order each inserts them."""
    per = -(-slices // partitions)
    rev = reversal(slices)
    by_slices = []
    for first in range(0, slices, per):
        chosen = {rev[p] for p in range(first, min(slices, first + per))}
        by_slices.append(sorted(b for b in range(buckets) if b % slices in chosen))
    step = -(-buckets // partitions)
    contiguous = [list(range(b, min(buckets, b + step))) for b in range(0, buckets, step)]
    return {"slices (this layout)": by_slices, "contiguous ranges": contiguous}


def _load(
    url: str, name: str, tasks: list[list[int]], docs: dict[int, bytes], batch: int
) -> list[float]:
    """Rows/s of each fifth of the load."""
    coll = pymongo.MongoClient(url)["order"][name]
    total = sum(map(len, tasks))
    marks: list[float] = [time.perf_counter()]
    done = 0
    for task in tasks:
        for at in range(0, len(task), batch):
            part = task[at : at + batch]
            coll.insert_many([RawBSONDocument(docs[b]) for b in part], ordered=False)
            done += len(part)
            while len(marks) < 6 and done >= total * len(marks) / 5:
                marks.append(time.perf_counter())
    return [marks[i + 1] - marks[i] for i in range(5)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--cache", default="64M", help="the dev store's WiredTiger cache")
    parser.add_argument("--rows-per-bucket", type=int, default=100)
    parser.add_argument("--slices", type=int, default=4096)
    add_common_args(parser, runs=1)
    args = parser.parse_args(argv)
    buckets = buckets_for(args.rows, args.rows_per_bucket, args.slices)
    partitions = max(1, args.rows // 250_000)
    docs = _documents(buckets, args.rows_per_bucket)
    batch = max(1, 5000 // args.rows_per_bucket)
    rows = []
    for name, tasks in _orders(buckets, args.slices, partitions).items():
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            command = [*mongo_command(port, tmp), "--cache-size", args.cache]
            store = Service("mongo", command, port=port, log_path=Path(tmp) / "mongo.log")
            store.start().wait_ready(60)
            try:
                fifths = _load(f"mongodb://127.0.0.1:{port}", "v", tasks, docs, batch)
            finally:
                store.stop()
        per_fifth = buckets * args.rows_per_bucket / 5
        rates = [per_fifth / s for s in fifths]
        rows.append([name, *(f"{r:,.0f}" for r in rates), f"{rates[-1] / rates[0]:.2f}"])
    body = table(
        ["insert order", "1st fifth rows/s", "2nd", "3rd", "4th", "5th", "last ÷ first"], rows
    )
    body += (
        f"\n\n{buckets:,} buckets of {args.rows_per_bucket} rows ({args.rows:,} rows), "
        f"{partitions} reduce tasks one after the other, inserts of {batch} buckets, dev store "
        f"with a {args.cache} WiredTiger cache."
    )
    report("Insert order against the store's cache", body, 1, args.append_results)


if __name__ == "__main__":
    main()
