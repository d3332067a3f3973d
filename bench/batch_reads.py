"""Store reads by batch size: how long one ``$in`` read of N ids holds the store, and ids/s.

Why it exists: the warm-up before a switch and the API's batched misses read bucketed
versions with one query per batch (``datasets.find_rows``: ``$in`` of buckets, a projection
of each id's field). A read that holds a single-threaded store long makes every lookup behind
it wait, so the warm-up's batch size (``WARMUP_BATCH_IDS``) is chosen from this table.
Random ids of a loaded version, one client, sizes interleaved run by run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from bench.common import add_common_args, report, table
from bench.lookups import load
from bench.parse import data_file
from bench.stack import stack
from shared.dataset import datasets

SIZES = (1, 8, 16, 32, 64, 128, 256, 500)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows in the version")
    parser.add_argument("--seconds", type=float, default=2.0, help="per size and run")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="ids per read")
    add_common_args(parser, runs=2)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rates: dict[int, list[float]] = {size: [] for size in sizes}
    medians: dict[int, list[float]] = {size: [] for size in sizes}
    with stack() as st:
        ids = load(st, data_file(args.rows, seed=11, clean=True), 1)
        db = st.mongo_db()
        buckets = datasets.read_buckets_sync(db, 1)
        rng = random.Random(1)
        for i in range(args.runs):
            for size in sizes:
                latencies: list[float] = []
                began = time.perf_counter()
                while time.perf_counter() - began < args.seconds:
                    batch = rng.sample(ids, size)
                    t = time.perf_counter()
                    found = datasets.find_rows_sync(db, 1, buckets, batch)
                    latencies.append(time.perf_counter() - t)
                    assert len(found) == size
                elapsed = time.perf_counter() - began
                rates[size].append(size * len(latencies) / elapsed)
                medians[size].append(statistics.median(latencies) * 1000)
                print(
                    f"  run {i + 1}/{args.runs} {size} ids: {rates[size][-1]:,.0f} ids/s, "
                    f"median read {medians[size][-1]:.1f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    rows = [
        [
            size,
            f"{statistics.median(rates[size]):,.0f}",
            f"{statistics.median(medians[size]):.1f}",
            " / ".join(f"{r:,.0f}" for r in rates[size]),
        ]
        for size in sizes
    ]
    body = table(["ids per read", "ids/s", "median read ms", "ids/s per run"], rows)
    body += (
        f"\n\nA bucketed version of {args.rows:,} rows; random ids, one synchronous client, "
        f"{args.seconds:g} s per size and run, sizes interleaved. A read of N ids holds the "
        "store for the 'median read' time: lookups' own reads wait behind it on a "
        "single-threaded store."
    )
    report("Store reads by batch size", body, args.runs, args.append_results)


if __name__ == "__main__":
    main()
