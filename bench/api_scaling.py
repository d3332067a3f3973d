"""API scaling: cache-hit lookups with 1 vs 2 uvicorn worker processes, same run.

Informative on a 2-core machine: wrk, Redis and the API share the two cores, so 2 workers
cannot reach 2x here; the per-CPU-second rate shows whether a process scales linearly.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from pathlib import Path

import psutil

from bench.common import report, table
from bench.lookups import _warm, add_load_args, load, require_wrk, wait_live, wrk
from bench.parse import data_file
from bench.stack import Stack, stack
from devstack.services import Service, api_command, free_port


def _api_cpu(pid: int) -> float:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sum(p.cpu_times().user + p.cpu_times().system for p in procs)


def _run(st: Stack, api_workers: int, hot: Path, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    api = Service(
        f"api-{api_workers}",
        api_command("127.0.0.1", port, api_workers),
        env=st.env,
        port=port,
        log_path=st.tmp / "logs" / f"api-{api_workers}.log",
    )
    api.start().wait_ready(60)
    try:
        url = f"http://127.0.0.1:{port}"
        ids = hot.read_text().split()
        wait_live(url, ids[0])
        asyncio.run(_warm(url, ids))  # every worker process's connections
        assert api.proc is not None
        cpu0 = _api_cpu(api.proc.pid)
        r = wrk(url, hot, "random", args.seconds, args.connections, api.proc.pid)
        r["req_per_core_s"] = r["req_per_s"] * args.seconds / (_api_cpu(api.proc.pid) - cpu0)
        return r
    finally:
        api.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_args(parser)
    args = parser.parse_args(argv)
    require_wrk()
    path = data_file(args.rows, seed=3, clean=True)
    results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with stack() as st:
        ids = load(st, path)
        hot = st.tmp / "hot-ids"
        hot.write_text("\n".join(ids[: args.hot_ids]) + "\n")
        for _ in range(args.runs):  # interleaved: 1, 2, 1, 2, ...
            for n in (1, 2):
                results[n].append(_run(st, n, hot, args))
    med = {
        n: {
            k: statistics.median(s[k] for s in v) for k in ("req_per_s", "req_per_core_s", "p99_ms")
        }
        for n, v in results.items()
    }
    body = table(
        ["uvicorn workers", "req/s", "req per API CPU s", "p99 ms", "vs 1 worker"],
        [
            (
                n,
                f"{m['req_per_s']:,.0f}",
                f"{m['req_per_core_s']:,.0f}",
                f"{m['p99_ms']:.2f}",
                f"{m['req_per_s'] / med[1]['req_per_s']:.2f}x",
            )
            for n, m in med.items()
        ],
    )
    body += (
        f"\n\nCache hits, wrk -t1 -c{args.connections}, {args.seconds} s per run. Two cores in "
        "all: wrk and Redis take their share, so this shows headroom, not the per-core ceiling "
        "(see 'req per API CPU s' for that)."
    )
    print(report("API scaling: 1 vs 2 uvicorn workers", body, args.runs, args.append_results))


if __name__ == "__main__":
    main()
