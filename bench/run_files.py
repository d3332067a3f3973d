"""Run files on the shared volume: their bytes against the file's, per row.

The plan refuses a job whose run files would not fit (``shuffle_files.room_problem``); its
estimate, the file's bytes plus ``RUN_BYTES_PER_ROW`` per row, comes from this measurement.
Each file is mapped as one chunk with the layout a job would choose; no services needed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zlib
from pathlib import Path

from bench.common import add_common_args, report, table
from bench.parse import data_file
from shared.fileformat.promotion_rows import ChunkStats, parse_chunk_rows
from shared.settings import get_settings
from worker.shuffle_files import (
    RUN_BYTES_PER_ROW,
    job_dir,
    keep_last,
    space_needed,
    write_chunk_runs,
)


def measure(path: Path) -> list[object]:
    settings = get_settings()
    data = path.read_bytes()
    keys, elements = parse_chunk_rows(data, 0, ChunkStats())
    mean_line = len(data) / max(1, data.count(b"\n"))
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        kept_keys, kept_elements = keep_last(keys, elements)
        write_chunk_runs(runs, "bench", 0, kept_keys, kept_elements, settings.shuffle_slices)
        files = list(job_dir(runs, "bench").iterdir())
        written = sum(f.stat().st_size for f in files)
        raw = b"".join(f.read_bytes() for f in files)
    # Would compressing them pay? zlib level 1 (the fastest in the standard library) over
    # the whole run file: its size and its cost in CPU against the map's.
    began = time.perf_counter()
    packed = len(zlib.compress(raw, 1))
    seconds = time.perf_counter() - began
    estimate = space_needed(len(data), mean_line)
    return [
        path.name,
        f"{len(data):,}",
        f"{written:,}",
        f"{written / len(data):.2f}x",
        f"{(written - len(data)) / len(keys):.1f}",
        f"{estimate:,} ({estimate / written:.2f}x)",
        f"{packed / len(data):.2f}x",
        f"{len(raw) / seconds / 1e6:.0f} MB/s",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows in each file")
    add_common_args(parser, runs=1)
    args = parser.parse_args(argv)
    rows = [measure(data_file(args.rows, seed=11, clean=clean)) for clean in (True, False)]
    body = table(
        [
            "file",
            "file bytes",
            "run file bytes",
            "run ÷ file",
            "extra bytes per valid row",
            "plan's estimate",
            "zlib-1 ÷ file",
            "zlib-1 speed",
        ],
        rows,
    )
    body += (
        f"\n\nOne chunk per file, the layout a job would choose. The plan's estimate is the "
        f"file's bytes plus {RUN_BYTES_PER_ROW} per row (rows from the mean line length) and "
        "must stay above what is written. zlib-1: the run files compressed at level 1, "
        "their size against the file's and the compression's speed on one core."
    )
    report("Run files: bytes on the shared volume", body, args.runs, args.append_results)


if __name__ == "__main__":
    main()
