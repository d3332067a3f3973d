"""Open-loop lookup client for benchmarks that watch latency over time (switch, load).

Requests are sent on a fixed schedule (``rate`` per second) whatever the server does, and
each latency is measured from the moment the request was *due*, so a stall counts fully (no
coordinated omission). Ids are drawn from a Zipf-like distribution (rank k with weight
1/k^s) over a list of ids, optionally mixed with a share of cold ids asked once each.
Runs in its own process (uvloop, raw HTTP/1.1 keep-alive streams) and prints one JSON
object: per request its due time (epoch seconds), latency and status.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import uvloop


def zipf_sequence(ids: list[str], n: int, s: float, seed: int) -> list[str]:
    weights = [1.0 / (k**s) for k in range(1, len(ids) + 1)]
    cumulative = list(itertools.accumulate(weights))
    return random.Random(seed).choices(ids, cum_weights=cumulative, k=n)


async def _run(
    host: str, port: int, keys: list[str], rate: float, connections: int, start_at: float
) -> dict[str, Any]:
    due: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    latency = [0.0] * len(keys)
    status = [0] * len(keys)
    offset = time.time() - time.perf_counter()  # perf_counter -> epoch
    stopping = asyncio.Event()  # SIGTERM: stop sending, report what was sent
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        while True:
            i, scheduled = await due.get()
            if i < 0 or stopping.is_set():
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(f"GET /promotions/{keys[i]} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                closing = False
                for line in head.split(b"\r\n"):
                    lower = line.lower()
                    if lower.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                    elif lower.startswith(b"connection:") and b"close" in lower:
                        closing = True
                await reader.readexactly(length)
                status[i] = int(head[9:12])
            except (OSError, asyncio.IncompleteReadError):
                status[i] = -1  # socket error
                closing = True
            latency[i] = time.perf_counter() - scheduled
            if closing:
                # The server ends the keep-alive stream after this answer (nginx does after
                # keepalive_requests), as an HTTP client would see it: open a new one, not an
                # error on the next request.
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
        writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    start = start_at - offset
    for i in range(len(keys)):
        due.put_nowait((i, start + i / rate))
    for _ in workers:
        due.put_nowait((-1, 0.0))
    await asyncio.gather(*workers)
    return {
        "start": start_at,
        "rate": rate,
        "due": [start_at + i / rate for i in range(len(keys))],
        "latency": latency,
        "status": status,
    }


def main(argv: list[str]) -> None:
    """``URL KEYS_FILE RATE CONNECTIONS START_AT_EPOCH OUT_FILE``."""
    url, keys_file, rate, connections, start_at, out = argv
    host, port = url.removeprefix("http://").split(":")
    keys = Path(keys_file).read_text().split()
    result = uvloop.run(_run(host, int(port), keys, float(rate), int(connections), float(start_at)))
    Path(out).write_text(json.dumps(result))


def window(result: dict[str, Any], begin: float, end: float) -> dict[str, float]:
    """p50/p99/max (ms), requests and errors for requests due in [begin, end) (requests
    never sent, status 0, left out)."""
    sent = [
        (d, lt, st)
        for d, lt, st in zip(result["due"], result["latency"], result["status"], strict=True)
        if st != 0 and begin <= d < end
    ]
    lat = sorted(lt for _, lt, _ in sent)
    errors = sum(1 for _, _, st in sent if st not in (200, 404))
    if not lat:
        return {"requests": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "errors": errors}
    return {
        "requests": len(lat),
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        "max_ms": lat[-1] * 1000,
        "errors": errors,
        "status_503": sum(1 for _, _, st in sent if st == 503),
    }


if __name__ == "__main__":
    main(sys.argv[1:])
