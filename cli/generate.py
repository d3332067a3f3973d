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
