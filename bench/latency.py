"""Lookup latency at half of peak: p50/p99 of cache hits under a fixed request rate.

wrk (closed loop) finds the peak; then an open-loop client sends requests on a fixed
schedule at half that rate and measures each latency from the moment the request was *due*,
not from when it was sent, so a stall in the server counts fully (no coordinated omission).
The client speaks HTTP/1.1 keep-alive on raw asyncio streams in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import quantile_ms, report, table
from bench.lookups import _warm, add_load_args, load, require_wrk, wait_live, wrk
from bench.parse import data_file
from bench.stack import stack

TARGET_P99_MS = 5.0


async def _open_loop(
    host: str, port: int, ids: list[str], rate: float, seconds: float, connections: int
) -> dict[str, float]:
    total = int(rate * seconds)
    due = asyncio.Queue[float]()
    latencies: list[float] = []
    errors = 0
    rng = random.Random(1)

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        while True:
            scheduled = await due.get()
            if scheduled < 0:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            key = rng.choice(ids)
            writer.write(f"GET /promotions/{key} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
            latencies.append(time.perf_counter() - scheduled)
        writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    start = time.perf_counter() + 0.2
    for i in range(total):
        due.put_nowait(start + i / rate)
    for _ in workers:
        due.put_nowait(-1.0)
    await asyncio.gather(*workers)
    latencies.sort()
    return {
        "requests": len(latencies),
        "achieved_per_s": len(latencies) / (time.perf_counter() - start),
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": quantile_ms(latencies, 0.99),
        "max_ms": latencies[-1] * 1000,
        "errors": errors,
    }


def client_main(argv: list[str]) -> None:
    """Runs in its own process: ``--client URL IDS_FILE RATE SECONDS CONNECTIONS``."""
    url, ids_file, rate, seconds, connections = argv
    host, port = url.removeprefix("http://").split(":")
    ids = Path(ids_file).read_text().split()
    result = asyncio.run(
        _open_loop(host, int(port), ids, float(rate), float(seconds), int(connections))
    )
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_args(parser, seconds=10)
    args = parser.parse_args(argv)
    require_wrk()
    path = data_file(args.rows, seed=3, clean=True)
    with stack(api=True) as st:
        assert st.api_url is not None and st.api is not None and st.api.proc is not None
        ids = load(st, path)
        wait_live(st.api_url, ids[0])
        hot = st.tmp / "hot-ids"
        hot.write_text("\n".join(ids[: args.hot_ids]) + "\n")
        asyncio.run(_warm(st.api_url, ids[: args.hot_ids]))
        rows = []
        for run in range(args.runs):
            peak = wrk(st.api_url, hot, "random", args.seconds, args.connections, st.api.proc.pid)
            rate = peak["req_per_s"] / 2
            out = subprocess.run(
                [
                    *(sys.executable, "-m", "bench.latency", "--client", st.api_url, str(hot)),
                    *(f"{rate:.0f}", str(args.seconds), str(args.connections)),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            half = json.loads(out.strip().splitlines()[-1])
            print(f"  run {run + 1}/{args.runs}: peak {peak['req_per_s']:,.0f}/s, half: {half}")
            rows.append((peak["req_per_s"], half))
    p99 = statistics.median(h["p99_ms"] for _, h in rows)
    body = table(
        [
            "run",
            "peak req/s (wrk, c=64)",
            "offered req/s",
            "achieved",
            "p50 ms",
            "p99 ms",
            "max ms",
        ],
        [
            (
                *(i + 1, f"{p:,.0f}", f"{p / 2:,.0f}", f"{h['achieved_per_s']:,.0f}"),
                *(f"{h['p50_ms']:.2f}", f"{h['p99_ms']:.2f}", f"{h['max_ms']:.1f}"),
            )
            for i, (p, h) in enumerate(rows)
        ],
    )
    verdict = "met" if p99 <= TARGET_P99_MS else "MISSED"
    body += (
        f"\n\nCache hits, {args.connections} connections, open loop at half of the peak measured "
        f"just before, {args.seconds} s per run; latency from each request's due time. "
        f"Target p99 ≤ {TARGET_P99_MS:g} ms: **{verdict}** (median p99 {p99:.2f} ms)."
    )
    print(report("Lookup latency at half of peak", body, args.runs, args.append_results))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
    else:
        main()
