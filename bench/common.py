"""Shared bench plumbing: machine description, interleaved runs, medians, tables, RESULTS.md.

Machines are shared and noisy, so every figure is reported next to a bare reference measured
in the same run, interleaved (A, B, A, B, ...), and summarised by its median.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
RESULTS = ROOT / "bench" / "RESULTS.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    return (
        f"{os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def interleave(
    runs: int, cases: Sequence[tuple[str, Callable[[], dict[str, float]]]]
) -> dict[str, list[dict[str, float]]]:
    """Run every case ``runs`` times as A, B, A, B, ... and collect their metric dicts."""
    out: dict[str, list[dict[str, float]]] = {name: [] for name, _ in cases}
    for i in range(runs):
        for name, fn in cases:
            metrics = fn()
            out[name].append(metrics)
            shown = ", ".join(f"{k}={v:,.3g}" for k, v in metrics.items())
            print(f"  run {i + 1}/{runs} {name}: {shown}", file=sys.stderr, flush=True)
    return out


def medians(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def quantile_ms(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of latencies in seconds, sorted, in ms (the benches' one rule)."""
    return ordered[int(len(ordered) * q)] * 1000


def paired_ratio(a: list[dict[str, float]], b: list[dict[str, float]], key: str) -> float:
    """Median of run-by-run ratios a/b: each pair ran back to back, under the same load."""
    return statistics.median(x[key] / y[key] for x, y in zip(a, b, strict=True))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table (readable as plain text too)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| "
        + " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        + " |"
        for row in cells
    ]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def add_common_args(parser: argparse.ArgumentParser, runs: int = 3) -> None:
    parser.add_argument("--runs", type=int, default=runs, help="interleaved runs per case")
    parser.add_argument(
        "--append-results",
        action="store_true",
        help=f"append the markdown block to {RESULTS.relative_to(ROOT)}",
    )


def report(title: str, body: str, runs: int, append: bool) -> str:
    """Print (and optionally append to RESULTS.md) a block saying how it was measured."""
    spec = sys.modules["__main__"].__spec__
    module = spec.name if spec else sys.argv[0]
    command = ".venv/bin/python -m " + shlex.join([module, *sys.argv[1:]])
    block = (
        f"### {title}\n\n"
        f"- command: `{command}`\n"
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC\n"
        f"- machine: {machine()}\n"
        f"- median of {runs} interleaved runs\n\n"
        f"{body}\n"
    )
    print("\n" + block)
    if append:
        with RESULTS.open("a") as f:
            f.write("\n" + block)
        print(f"appended to {RESULTS.relative_to(ROOT)}")
    return block
