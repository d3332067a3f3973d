"""Write test files in the partner format: random UUIDs, optional bad rows and duplicates."""

from __future__ import annotations

import gzip
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

BAD_ROWS = (
    "{id},-1.5,2018-08-04 05:32:31 +0200 CEST",
    "{id},abc,2018-08-04 05:32:31 +0200 CEST",
    "{id},12.5,2018-02-30 05:32:31 +0200 CEST",
    "{id},12.5",
    "bad id!,12.5,2018-08-04 05:32:31 +0200 CEST",
)
ZONES = (("+0200", "CEST"), ("+0100", "CET"), ("+0000", "UTC"), ("-0500", "EST"))


def _row(rng: random.Random, row_id: str) -> str:
    price = rng.uniform(0, 100)
    when = datetime(2018, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(0, 3 * 365 * 86400))
    offset, zone = rng.choice(ZONES)
    return f"{row_id},{price:.6f},{when:%Y-%m-%d %H:%M:%S} {offset} {zone}"


def generate(
    rows: int,
    path: Path,
    *,
    bad_ratio: float = 0.0,
    duplicate_ratio: float = 0.0,
    compress: bool = False,
    seed: int | None = None,
) -> None:
    rng = random.Random(seed)
    ids: list[str] = []
    opener = gzip.open if compress else open
    with opener(path, "wt", encoding="utf-8", newline="") as out:
        f: IO[str] = out
        for _ in range(rows):
            roll = rng.random()
            if roll < bad_ratio:
                f.write(rng.choice(BAD_ROWS).format(id=uuid.UUID(int=rng.getrandbits(128))) + "\n")
                continue
            if ids and roll < bad_ratio + duplicate_ratio:
                row_id = rng.choice(ids)
            else:
                row_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                if len(ids) < 100_000:
                    ids.append(row_id)
            f.write(_row(rng, row_id) + "\n")


# generate_distinct writes blocks of this many rows with one call for the random bytes.
BLOCK_ROWS = 65_536
SPAN_DAYS = 3 * 365


def generate_distinct(rows: int, path: Path, *, seed: int | None = None) -> None:
    """Every row valid and every id distinct (random version-4 UUIDs: a repeat among 10^9
    has odds of about 10^-19), the same shape of rows as ``generate``. Written for scale
    runs: ``generate`` makes ~33k rows/s (10 minutes for 20M rows, most of a 100M-row run's
    setup); drawing the random bytes a block at a time and formatting dates from tables
    instead of ``datetime`` is ~10x that (measured: bench/RESULTS.md, scale runs)."""
    rng = random.Random(seed)
    start = datetime(2018, 1, 1, tzinfo=UTC)
    days = [f"{start + timedelta(days=d):%Y-%m-%d}" for d in range(SPAN_DAYS)]
    clock = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86_400)]
    zones = [f"{offset} {zone}" for offset, zone in ZONES]
    variant = "89ab"
    with path.open("w", encoding="utf-8", newline="") as out:
        left = rows
        while left:
            n = min(BLOCK_ROWS, left)
            left -= n
            ids = rng.randbytes(16 * n).hex()
            draws = rng.randbytes(8 * n)
            lines = []
            for i in range(n):
                h = ids[32 * i : 32 * i + 32]
                d = draws[8 * i : 8 * i + 8]
                cents = int.from_bytes(d[0:3], "little") % 100_000_000
                second = int.from_bytes(d[3:7], "little") % (SPAN_DAYS * 86_400)
                lines.append(
                    f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant[d[7] & 3]}{h[17:20]}-{h[20:]},"
                    f"{cents // 1_000_000}.{cents % 1_000_000:06d},"
                    f"{days[second // 86_400]} {clock[second % 86_400]} {zones[d[7] >> 6]}\n"
                )
            out.write("".join(lines))
