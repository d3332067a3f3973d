"""What a bucket row's encoding costs the store: ``{p, e, [i]}`` subdocuments against one
packed binary value per row (docs/decisions/packed-rows.md).

The same rows (``ROWS_PER_BUCKET`` per bucket, 36-character ids, the seed's date form) are
inserted as bucket documents of each format into a fresh dev store, five buckets an insert
as the reduce does, then 2,000 single-bucket reads with a one-id projection are timed. The
store's CPU seconds (``psutil`` on its process) say what each format costs it; on this
2-core machine the store's CPU is what a load takes from the lookups beside it.
"""

from __future__ import annotations

import argparse
import random
import struct
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pymongo
from bson.raw_bson import RawBSONDocument

from bench.common import add_common_args, interleave, medians, paired_ratio, report, table
from devstack.services import Service, free_port, mongo_command
from shared.fileformat.bucket_layout import bucket_document, encode_element

DATE = b"2018-08-04 05:32:31 +0200 CEST"
_i32 = struct.Struct("<i").pack


def subdocument_element(key: bytes, row_id: bytes, price: float, expiration_date: bytes) -> bytes:
    """The row element before packing: ``key: {p: price, e: date, [i: id]}``."""
    body = b"\x01p\x00" + struct.pack("<d", price)
    body += b"\x02e\x00" + _i32(len(expiration_date) + 1) + expiration_date + b"\x00"
    if row_id != key:
        body += b"\x02i\x00" + _i32(len(row_id) + 1) + row_id + b"\x00"
    return b"\x03" + key + b"\x00" + _i32(len(body) + 5) + body + b"\x00"


FORMATS: dict[str, Callable[[bytes, bytes, float, bytes], bytes]] = {
    "subdocument rows": subdocument_element,
    "packed rows": encode_element,
}


def _store_cpu(proc: psutil.Process) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)])


def _measure(
    encode: Callable[[bytes, bytes, float, bytes], bytes], buckets: int, per_bucket: int
) -> dict[str, float]:
    rng = random.Random(7)
    keys = [[rng.randbytes(18).hex().encode() for _ in range(per_bucket)] for _ in range(buckets)]
    docs = [
        bucket_document(b, [encode(k, k, 60.683466, DATE) for k in keys[b]]) for b in range(buckets)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        store = Service("mongo", mongo_command(port, tmp), port=port, log_path=Path(tmp) / "m.log")
        store.start().wait_ready(60)
        try:
            assert store.proc is not None
            proc = psutil.Process(store.proc.pid)
            client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                f"mongodb://127.0.0.1:{port}", retryWrites=False
            )
            coll = client["bench"]["v"]
            cpu0, t0 = _store_cpu(proc), time.perf_counter()
            for at in range(0, buckets, 5):
                batch = [RawBSONDocument(d) for d in docs[at : at + 5]]
                coll.insert_many(batch, ordered=False)
            cpu1, t1 = _store_cpu(proc), time.perf_counter()
            for _ in range(2000):
                b = rng.randrange(buckets)
                coll.find_one({"_id": b}, {f"r.{rng.choice(keys[b]).decode()}": 1})
            cpu2, t2 = _store_cpu(proc), time.perf_counter()
            client.close()
        finally:
            store.stop()
    rows = buckets * per_bucket
    return {
        "rows_per_s": rows / (t1 - t0),
        "rows_per_store_cpu_s": rows / (cpu1 - cpu0),
        "bytes_per_row": sum(map(len, docs)) / rows,
        "lookups_per_s": 2000 / (t2 - t1),
        "store_cpu_ms_per_lookup": (cpu2 - cpu1) / 2000 * 1000,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, default=3000)
    parser.add_argument("--rows-per-bucket", type=int, default=100)
    add_common_args(parser, runs=3)
    args = parser.parse_args(argv)
    samples = interleave(
        args.runs,
        [
            (name, partial(_measure, encode, args.buckets, args.rows_per_bucket))
            for name, encode in FORMATS.items()
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
                f"{m['bytes_per_row']:.0f}",
                f"{m['lookups_per_s']:,.0f}",
                f"{m['store_cpu_ms_per_lookup']:.2f}",
            ]
        )
    old, new = samples["subdocument rows"], samples["packed rows"]
    body = table(
        [
            "row format",
            "insert rows/s",
            "rows per store CPU s",
            "bytes/row",
            "lookups/s",
            "store CPU ms/lookup",
        ],
        rows,
    )
    body += (
        f"\n\nPacked ÷ subdocument, paired by run: inserted rows per store CPU second "
        f"{paired_ratio(new, old, 'rows_per_store_cpu_s'):.2f}x, insert rows/s "
        f"{paired_ratio(new, old, 'rows_per_s'):.2f}x, lookups/s "
        f"{paired_ratio(new, old, 'lookups_per_s'):.2f}x. {args.buckets:,} buckets of "
        f"{args.rows_per_bucket} rows, inserts of 5 buckets, then 2,000 one-id bucket reads; "
        f"a fresh dev store per case."
    )
    report(
        "Bucket row format: subdocuments against packed rows", body, args.runs, args.append_results
    )


if __name__ == "__main__":
    main()
