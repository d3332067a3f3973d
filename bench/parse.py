"""Parse + validate + encode, no database: rows/s per core of the chunk task's CPU work.

Runs exactly what ``load_chunk`` runs on its byte range (``plan_chunks`` → ``read_range`` →
``parse_chunk`` → ``list(batch.values())``), single-threaded, against a naive reference
doing the same job with ``csv.reader``, ``datetime.fromisoformat`` and ``bson.encode``.
Rates use process CPU time (one core), so other load on the machine matters less.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import multiprocessing as mp
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import bson

from bench.common import OUT, add_common_args, interleave, medians, paired_ratio, report, table
from cli.generate import generate, generate_distinct
from shared.fileformat.promotion_rows import ChunkStats, parse_chunk, parse_chunk_strict
from worker.chunking import plan_chunks, read_range

TARGET = 500_000
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def data_file(rows: int, seed: int = 1, clean: bool = False) -> Path:
    """The generated file (cached in bench/out: 2M rows take a while to generate).

    Not clean: 0.1 % invalid rows and 1 % repeated ids, like a partner file. Clean: every
    row valid and distinct, so that every row costs one insert.
    """
    path = OUT / f"promotions-{rows}-seed{seed}{'-clean' if clean else ''}.csv"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        if clean:
            generate_distinct(rows, tmp, seed=seed)
        else:
            generate(rows, tmp, seed=seed, bad_ratio=0.001, duplicate_ratio=0.01)
        tmp.rename(path)
    return path


def quoted_file(plain: Path) -> Path:
    """The same rows with every field in quotes, as ``csv.writer(quoting=QUOTE_ALL)`` and
    several export tools write them."""
    path = plain.with_name(plain.stem + "-quoted.csv")
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with plain.open(newline="") as src, tmp.open("w", newline="") as dst:
            writer = csv.writer(dst, quoting=csv.QUOTE_ALL, lineterminator="\n")
            writer.writerows(line.rstrip("\n").split(",") for line in src)
        tmp.rename(path)
    return path


# The date forms export tools write (docs/file-format.md), from the date as generated
# ('2020-02-09 15:09:31 -0500 EST'): each file has the generated rows with one form.
TOOL_FORMS = {
    "PostgreSQL/DuckDB '2020-02-09 15:09:31.532085+00'": lambda d: d[:19] + ".532085+00",
    "Ruby '2020-02-09 15:09:31 UTC'": lambda d: d[:19] + " UTC",
    "LibreOffice '2020-02-09 5:09:31'": lambda d: d[:11] + d[11:19].removeprefix("0"),
}


def tool_form_file(plain: Path, name: str) -> Path:
    """The rows of ``plain`` with their dates in one export tool's form."""
    form = TOOL_FORMS[name]
    path = plain.with_name(f"{plain.stem}-{name.split()[0].replace('/', '-').lower()}.csv")
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with plain.open() as src, tmp.open("w") as dst:
            for line in src:
                fields = line.rstrip("\n").split(",")
                if len(fields) == 3 and len(fields[2]) >= 19:
                    fields[2] = form(fields[2])
                dst.write(",".join(fields) + "\n")
        tmp.rename(path)
    return path


def _chunks(path: Path, chunk_size: int) -> list[tuple[int, int]]:
    with path.open("rb") as f:
        return plan_chunks(f, path.stat().st_size, chunk_size)


def run_service(
    path: Path, chunk_size: int, batch_rows: int, parse: Any = parse_chunk
) -> dict[str, float]:
    """The chunk task's CPU work over every chunk of the file."""
    wall, cpu = time.perf_counter(), time.process_time()
    rows = docs = 0
    with path.open("rb") as f:
        for start, end in _chunks(path, chunk_size):
            data = read_range(f, start, end)
            stats = ChunkStats()
            for batch in parse(data, start, batch_rows, stats):
                docs += len(list(batch.values()))
            rows += stats.rows_read
    return _rates(rows, docs, wall, cpu)


def _parse_range(args: tuple[Path, int, int, int]) -> int:
    path, start, end, batch_rows = args
    with path.open("rb") as f:
        data = read_range(f, start, end)
    stats = ChunkStats()
    for batch in parse_chunk(data, start, batch_rows, stats):
        list(batch.values())
    return stats.rows_read


def run_processes(path: Path, chunk_size: int, batch_rows: int, processes: int) -> dict[str, float]:
    """Wall-clock rate of ``processes`` processes sharing the chunks (as worker processes do)."""
    jobs = [(path, s, e, batch_rows) for s, e in _chunks(path, chunk_size)]
    with mp.get_context("spawn").Pool(processes) as pool:
        pool.map(_parse_range, jobs[:processes])  # warm: imports, regex compilation
        wall = time.perf_counter()
        rows = sum(pool.map(_parse_range, jobs, chunksize=1))
        wall = time.perf_counter() - wall
    return {"rows": rows, "rows_per_wall_s": rows / wall}


def scaling(path: Path, args: argparse.Namespace) -> str:
    """1 vs 2 processes, interleaved; chunks small enough to share the file out evenly."""
    chunk = 8 * 1024 * 1024
    samples = interleave(
        args.runs,
        [
            (f"{n} process(es)", lambda n=n: run_processes(path, chunk, args.batch_rows, n))
            for n in (1, 2)
        ],
    )
    one, two = medians(samples["1 process(es)"]), medians(samples["2 process(es)"])
    return (
        table(
            ["processes", "rows/s (wall)", "speed-up"],
            [
                [1, one["rows_per_wall_s"], "1.00x"],
                [
                    2,
                    two["rows_per_wall_s"],
                    f"{two['rows_per_wall_s'] / one['rows_per_wall_s']:.2f}x",
                ],
            ],
        )
        + f"\n\n{os.cpu_count()} cores; 8 MiB chunks; other load on the machine counts here."
    )


def _naive_rows(text: str, start: int, batch_rows: int) -> tuple[int, int]:
    rows = docs = 0
    batch: dict[str, bytes] = {}
    for index, row in enumerate(csv.reader(io.StringIO(text))):
        rows += 1
        try:
            row_id, price_text, date = row
            if not _ID.fullmatch(row_id):
                continue
            price = float(price_text)
            if not math.isfinite(price) or price < 0:
                continue
            stamp, offset = date[:19], date[20:25]
            datetime.fromisoformat(stamp)
            datetime.strptime(offset, "%z")
        except ValueError:
            continue
        key = row_id.lower()
        doc = {"_id": key, "price": price, "expiration_date": date, "o": bson.Int64(start + index)}
        if key != row_id:
            doc["id"] = row_id
        batch[key] = bson.encode(doc)
        if len(batch) >= batch_rows:
            docs += len(list(batch.values()))
            batch = {}
    return rows, docs + len(batch)


def run_reference(path: Path, chunk_size: int, batch_rows: int) -> dict[str, float]:
    """Naive: csv.reader + fromisoformat/strptime validation + bson.encode of a dict."""
    wall, cpu = time.perf_counter(), time.process_time()
    rows = docs = 0
    with path.open("rb") as f:
        for start, end in _chunks(path, chunk_size):
            r, d = _naive_rows(read_range(f, start, end).decode(), start, batch_rows)
            rows, docs = rows + r, docs + d
    return _rates(rows, docs, wall, cpu)


def _rates(rows: int, docs: int, wall: float, cpu: float) -> dict[str, float]:
    wall_s, cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "rows": rows,
        "docs": docs,
        "cpu_s": cpu_s,
        "rows_per_core_s": rows / cpu_s,
        "rows_per_wall_s": rows / wall_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--chunk-size", type=int, default=32 * 1024 * 1024)
    parser.add_argument("--batch-rows", type=int, default=5000)
    parser.add_argument(
        "--no-strict",
        action="store_true",
        help="skip the strict line-by-line parser (the implementation before the fast path)",
    )
    parser.add_argument(
        "--scaling", action="store_true", help="instead: 1 vs 2 processes, wall-clock rows/s"
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    path = data_file(args.rows)
    quoted = quoted_file(path)
    print(f"file {path} ({path.stat().st_size / 1e6:.0f} MB, {args.rows:,} rows)")
    if args.scaling:
        body = scaling(path, args)
        report(f"Parse scaling ({args.rows:,} rows)", body, args.runs, args.append_results)
        return
    cases = [
        ("parse_chunk (service)", lambda: run_service(path, args.chunk_size, args.batch_rows)),
        (
            "csv + fromisoformat + bson.encode (reference)",
            lambda: run_reference(path, args.chunk_size, args.batch_rows),
        ),
        (
            "parse_chunk (service), every field quoted",
            lambda: run_service(quoted, args.chunk_size, args.batch_rows),
        ),
    ]
    for name in TOOL_FORMS:
        form_path = tool_form_file(path, name)
        cases.append(
            (
                f"parse_chunk (service), {name}",
                lambda p=form_path: run_service(p, args.chunk_size, args.batch_rows),
            )
        )
    if not args.no_strict:
        cases.append(
            (
                "parse_chunk_strict (line by line, as before)",
                lambda: run_service(path, args.chunk_size, args.batch_rows, parse_chunk_strict),
            )
        )
    samples = interleave(args.runs, cases)
    svc = medians(samples[cases[0][0]])
    rows = []
    for name, _ in cases:
        m = medians(samples[name])
        ratio = paired_ratio(samples[name], samples[cases[1][0]], "rows_per_core_s")
        rows.append(
            [
                name,
                int(m["rows"]),
                m["cpu_s"],
                m["rows_per_core_s"],
                m["rows_per_wall_s"],
                f"{ratio:.2f}x",
            ]
        )
    body = table(["case", "rows", "CPU s", "rows/s per core", "rows/s wall", "vs reference"], rows)
    verdict = "met" if svc["rows_per_core_s"] >= TARGET else "MISSED"
    body += f"\n\nTarget ≥ {TARGET:,} rows/s per core (unquoted file): **{verdict}**."
    report(f"Parse + validate + encode ({args.rows:,} rows)", body, args.runs, args.append_results)


if __name__ == "__main__":
    main()
