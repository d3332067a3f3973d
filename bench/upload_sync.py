"""Does storing a big upload stall the store beside it? ``UPLOAD_SYNC_BYTES`` 0 (one fsync
at the end) against 64 MiB (written back as it comes).

A dev store on the same disk serves single-document reads back to back and one journaled
write every 100 ms (as job records and heartbeats do) while ``GunzipFileWriter`` stores
``--gib`` GiB in 1 MiB pieces, as an upload does. Reported: the store's worst read and
journaled write while the file was stored, and the final fsync's time. The 100M-row runs
saw the API's breaker open (lookups time out at 300 ms) the second a 7.3 GiB upload ended.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pymongo

from bench.common import add_common_args, interleave, medians, quantile_ms, report, table
from devstack.services import Service, free_port, mongo_command
from shared.fileformat.gunzip_file_writer import GunzipFileWriter, StoreLimits
from shared.settings import GiB, MiB


def _store_file(directory: Path, size: int, sync_bytes: int) -> tuple[float, float]:
    """Seconds the whole file took, and its final flush."""
    limits = StoreLimits(
        max_bytes=size * 2, ratio=1, floor=size * 2, min_free_bytes=0, sync_bytes=sync_bytes
    )
    writer = GunzipFileWriter(directory, limits, compressed_size=size)
    piece = os.urandom(MiB)
    began = time.perf_counter()
    for _ in range(size // MiB):
        writer.write_many([piece])
    final = directory / "stored.csv"
    started = time.perf_counter()
    writer.finish(final)
    ended = time.perf_counter()
    final.unlink()
    return ended - began, ended - started


def _measure(size: int, sync_bytes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        port = free_port()
        store = Service("mongo", mongo_command(port, tmp), port=port, log_path=Path(tmp) / "m.log")
        store.start().wait_ready(60)
        try:
            client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                f"mongodb://127.0.0.1:{port}"
            )
            coll = client["bench"]["v"]
            coll.insert_many([{"_id": i, "r": {"a": b"x" * 80}} for i in range(2000)])
            journaled = client["bench"].get_collection(
                "records", write_concern=pymongo.WriteConcern(j=True)
            )
            stop = threading.Event()
            reads: list[float] = []
            writes: list[float] = []

            def read() -> None:
                i = 0
                while not stop.is_set():
                    t = time.perf_counter()
                    coll.find_one({"_id": i % 2000})
                    reads.append(time.perf_counter() - t)
                    i += 1
                    time.sleep(0.002)

            def write() -> None:
                while not stop.is_set():
                    t = time.perf_counter()
                    journaled.update_one({"_id": 1}, {"$inc": {"n": 1}}, upsert=True)
                    writes.append(time.perf_counter() - t)
                    time.sleep(0.1)

            threads = [threading.Thread(target=read), threading.Thread(target=write)]
            for thread in threads:
                thread.start()
            time.sleep(1)
            store_s, fsync_s = _store_file(Path(tmp), size, sync_bytes)
            time.sleep(1)
            stop.set()
            for thread in threads:
                thread.join()
            client.close()
        finally:
            store.stop()
    reads.sort()
    return {
        "read_p99_ms": quantile_ms(reads, 0.99),
        "read_max_ms": reads[-1] * 1000,
        "write_max_ms": max(writes) * 1000,
        "final_fsync_s": fsync_s,
        "store_s": store_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4.0, help="size of the stored file")
    add_common_args(parser, runs=3)
    args = parser.parse_args(argv)
    size = int(args.gib * GiB) // MiB * MiB
    cases = {"sync at the end only (0)": 0, "every 64 MiB": 64 * MiB}
    samples = interleave(
        args.runs, [(name, partial(_measure, size, every)) for name, every in cases.items()]
    )
    rows = []
    for name, runs in samples.items():
        m = medians(runs)
        worst = max(r["read_max_ms"] for r in runs)
        worst_write = max(r["write_max_ms"] for r in runs)
        rows.append(
            [
                name,
                f"{m['read_p99_ms']:.1f}",
                f"{m['read_max_ms']:.0f} (worst {worst:.0f})",
                f"{m['write_max_ms']:.0f} (worst {worst_write:.0f})",
                f"{m['final_fsync_s']:.2f}",
                f"{m['store_s']:.1f}",
            ]
        )
    body = table(
        [
            "UPLOAD_SYNC_BYTES",
            "reads p99 ms",
            "reads max ms",
            "journaled writes max ms",
            "final fsync s",
            "file stored in s",
        ],
        rows,
    )
    body += (
        f"\n\n{args.gib:g} GiB stored in 1 MiB pieces beside a dev store on the same disk "
        "(reads back to back, a journaled write every 100 ms); medians of the runs' figures, "
        "worst run in brackets."
    )
    report("Upload write-back beside the store", body, args.runs, args.append_results)


if __name__ == "__main__":
    main()
