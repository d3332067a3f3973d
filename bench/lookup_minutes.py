"""A second look at a scale run's lookups, kept by ``bench.scale`` in
``bench/out/scale-<rows>-<UTC time>/lookups.json``: per window of time and per status,
how many, their median and p99. Status 200 answers came from the live file's ids, 404 from
ids not live; a delay both share is upstream of the store."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.common import quantile_ms


def by_window(result: dict[str, Any], seconds: int) -> list[list[str]]:
    """Rows of (window start UTC, status, count, p50 ms, p99 ms); unanswered left out."""
    groups: dict[tuple[int, int], list[float]] = defaultdict(list)
    for due, latency, status in zip(
        result["due"], result["latency"], result["status"], strict=True
    ):
        if status:
            groups[(int(due) // seconds * seconds, status)].append(latency)
    rows = []
    for (start, status), values in sorted(groups.items()):
        values.sort()
        at = dt.datetime.fromtimestamp(start, dt.UTC)
        rows.append(
            [
                f"{at:%H:%M:%S}",
                str(status),
                str(len(values)),
                f"{quantile_ms(values, 0.5):.1f}",
                f"{quantile_ms(values, 0.99):.1f}",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lookups", type=Path, help="a kept lookups.json")
    parser.add_argument("--seconds", type=int, default=60, help="window length")
    args = parser.parse_args(argv)
    print("window (UTC) | status | lookups | p50 ms | p99 ms")
    for row in by_window(json.loads(args.lookups.read_text()), args.seconds):
        print(" | ".join(row))


if __name__ == "__main__":
    main()
