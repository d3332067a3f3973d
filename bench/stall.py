"""Stall: lookups while the store stalls (SIGSTOP) for a few seconds every half minute, with
the circuit breaker on and off.

Two API processes on the same store and Redis, one with ``STORE_BREAKER=false``; runs
alternate between them. Each run sends, open loop (``bench.open_loop``, own processes, so
a stall counts fully: latency is measured from when a request was due), lookups of cached
ids (Zipf over ids warmed beforehand) and of uncached ids (each asked once, all in the
dataset: every one needs the store) at fixed rates, while the store is paused for
``--stall`` seconds every ``--period`` seconds. During the stalls (and the second after
each): p99 and error share per kind, and, sampled every 100 ms, the API's memory (RSS), its
open TCP connections (all, and those to the store) and the breaker gauge. Outside the
stalls, p99 per kind as the calm reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import add_common_args, interleave, quantile_ms, report, table
from bench.lookups import _warm, load, wait_live
from bench.open_loop import zipf_sequence
from bench.parse import data_file
from bench.stack import Stack, stack
from devstack.services import Service, api_command, free_port

START_DELAY_S = 2.0  # the clients connect before the first request is due
RECOVERY_S = 1.0  # the second after a stall ends counts with it
SAMPLE_S = 0.1


def store_service(st: Stack) -> Service:
    store = st.started[0]
    assert store.name == "mongo"
    return store


class Sampler(threading.Thread):
    """The API process's RSS, TCP connections and breaker gauge, every ``SAMPLE_S``."""

    def __init__(self, pid: int, url: str, store_port: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.url = url
        self.store_port = store_port
        self.samples: list[dict[str, float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=1.0) as http:
            while not self.stopping.wait(SAMPLE_S):
                conns = self.proc.net_connections(kind="tcp")
                gauge = float("nan")
                try:
                    for line in http.get("/metrics").text.splitlines():
                        if line.startswith("promotions_store_breaker_open "):
                            gauge = float(line.split()[1])
                except httpx.HTTPError:
                    pass
                self.samples.append(
                    {
                        "t": time.time(),
                        "rss_mib": self.proc.memory_info().rss / 2**20,
                        "conns": len(conns),
                        "store_conns": sum(
                            1 for c in conns if c.raddr and c.raddr.port == self.store_port
                        ),
                        "breaker_open": gauge,
                    }
                )


def _client(url: str, keys: list[str], rate: float, connections: int, start_at: float) -> Any:
    tmp = Path(tempfile.mkdtemp(prefix="stall-"))
    keys_file, out = tmp / "keys", tmp / "out.json"
    keys_file.write_text("\n".join(keys))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.open_loop",
            url,
            str(keys_file),
            str(rate),
            str(connections),
            str(start_at),
            str(out),
        ]
    )
    return proc, out


def _stats(
    result: dict[str, Any], windows: list[tuple[float, float]], inside: bool
) -> dict[str, float]:
    lat: list[float] = []
    errors = 0
    for due, latency, status in zip(
        result["due"], result["latency"], result["status"], strict=True
    ):
        if status == 0:
            continue
        if any(b <= due < e for b, e in windows) != inside:
            continue
        lat.append(latency)
        errors += status not in (200, 404)
    lat.sort()
    if not lat:
        return {"p99_ms": float("nan"), "error_share": float("nan"), "requests": 0}
    return {
        "p99_ms": quantile_ms(lat, 0.99),
        "p50_ms": lat[len(lat) // 2] * 1000,
        "error_share": errors / len(lat),
        "requests": len(lat),
    }


def _recovery_s(result: dict[str, Any], stalls: list[tuple[float, float]]) -> float:
    """Worst over the stalls: from SIGCONT to the last uncached request that failed."""
    worst = 0.0
    for _, end in stalls:
        failed = [
            due - end
            for due, status in zip(result["due"], result["status"], strict=True)
            if end <= due < end + 5 and status not in (0, 200, 404)
        ]
        worst = max(worst, max(failed, default=0.0))
    return worst


def one_run(
    st: Stack,
    store: Service,
    url: str,
    pid: int,
    hot: list[str],
    cold: list[str],
    args: argparse.Namespace,
) -> dict[str, float]:
    duration = args.lead + (args.cycles - 1) * args.period + args.stall + args.tail
    cached_keys = zipf_sequence(hot, int(args.rate * duration), 1.0, seed=len(cold))
    uncached_keys = cold[: int(args.uncached_rate * duration)]
    del cold[: len(uncached_keys)]
    start_at = time.time() + START_DELAY_S
    clients = [
        _client(url, cached_keys, args.rate, 16, start_at),
        _client(url, uncached_keys, args.uncached_rate, args.connections, start_at),
    ]
    store_port = int(st.mongo_url.rsplit(":", 1)[1].split("/")[0])
    sampler = Sampler(pid, url, store_port)
    sampler.start()
    stalls: list[tuple[float, float]] = []
    try:
        for k in range(args.cycles):
            begin = start_at + args.lead + k * args.period
            time.sleep(max(0.0, begin - time.time()))
            store.signal_group(signal.SIGSTOP)
            paused = time.time()
            time.sleep(args.stall)
            store.signal_group(signal.SIGCONT)
            stalls.append((paused, time.time()))
    finally:
        store.signal_group(signal.SIGCONT)
    results = []
    for proc, out in clients:
        proc.wait(duration + 120)
        results.append(json.loads(out.read_text()))
    sampler.stopping.set()
    sampler.join(5)
    windows = [(b, e + RECOVERY_S) for b, e in stalls]
    cached_in, uncached_in = (_stats(r, windows, True) for r in results)
    cached_out, uncached_out = (_stats(r, windows, False) for r in results)
    during = [s for s in sampler.samples if any(b <= s["t"] < e for b, e in windows)]
    calm = [s for s in sampler.samples if not any(b - 1 <= s["t"] < e + 2 for b, e in windows)]
    closed_after = []
    for _, end in stalls:
        after = [s for s in sampler.samples if s["t"] >= end and s["breaker_open"] == 0]
        closed_after.append(after[0]["t"] - end if after else float("nan"))
    return {
        "cached_p99_calm_ms": cached_out["p99_ms"],
        "cached_p99_stall_ms": cached_in["p99_ms"],
        "cached_errors_stall": cached_in["error_share"],
        "uncached_p99_calm_ms": uncached_out["p99_ms"],
        "uncached_p99_stall_ms": uncached_in["p99_ms"],
        "uncached_p50_stall_ms": uncached_in["p50_ms"],
        "uncached_errors_stall": uncached_in["error_share"],
        "uncached_errors_calm": uncached_out["error_share"],
        "recovery_s": _recovery_s(results[1], stalls),
        "rss_calm_mib": max((s["rss_mib"] for s in calm), default=float("nan")),
        "rss_stall_mib": max((s["rss_mib"] for s in during), default=float("nan")),
        "conns_calm": max((s["conns"] for s in calm), default=float("nan")),
        "conns_stall": max((s["conns"] for s in during), default=float("nan")),
        "store_conns_calm": max((s["store_conns"] for s in calm), default=float("nan")),
        "store_conns_stall": max((s["store_conns"] for s in during), default=float("nan")),
        "breaker_open_share": (
            sum(1 for s in during if s["breaker_open"] == 1) / len(during) if during else 0.0
        ),
        "breaker_closed_after_s": max(closed_after, default=float("nan")),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, runs=2)
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--hot", type=int, default=2_000, help="cached ids (warmed first)")
    parser.add_argument("--rate", type=float, default=200, help="cached lookups per second")
    parser.add_argument(
        "--uncached-rate", type=float, default=100, help="uncached lookups per second"
    )
    parser.add_argument("--connections", type=int, default=64, help="of the uncached client")
    parser.add_argument("--period", type=float, default=30, help="a stall starts every ... s")
    parser.add_argument("--stall", type=float, default=5, help="seconds the store is paused")
    parser.add_argument("--cycles", type=int, default=2, help="stalls per run")
    parser.add_argument("--lead", type=float, default=8, help="calm seconds before the first")
    parser.add_argument("--tail", type=float, default=8, help="calm seconds after the last")
    parser.add_argument("--lookup-timeout-ms", type=int, default=300)
    args = parser.parse_args(argv)
    needed = args.hot + args.runs * 2 * int(
        args.uncached_rate * (args.lead + (args.cycles - 1) * args.period + args.stall + args.tail)
    )
    if needed > args.rows:
        raise SystemExit(f"--rows must be at least {needed:,} (hot ids + every uncached lookup)")

    if os.environ.get("MONGO_URL"):  # `make bench` against a real server goes on
        print("bench.stall pauses the dev store itself (SIGSTOP): skipped with MONGO_URL set")
        return
    env = {"LOOKUP_TIMEOUT_MS": str(args.lookup_timeout_ms), "LOCAL_CACHE_MAX_BYTES": "0"}
    with stack(api=True, extra_env=env) as st:
        store = store_service(st)
        assert st.api is not None and st.api.proc is not None and st.api_url is not None
        port = free_port()
        off = Service(
            "api-breaker-off",
            api_command("127.0.0.1", port),
            env={**st.env, "STORE_BREAKER": "false"},
            port=port,
            log_path=st.tmp / "logs" / "api-breaker-off.log",
        )
        st.started.append(off.start().wait_ready(60))
        assert off.proc is not None
        off_url = f"http://127.0.0.1:{port}"
        ids = load(st, data_file(args.rows, seed=11, clean=True))
        hot, cold = ids[: args.hot], ids[args.hot :]
        for url in (st.api_url, off_url):
            wait_live(url, hot[0])
            asyncio.run(_warm(url, hot))
        api_url, api_pid, off_pid = st.api_url, st.api.proc.pid, off.proc.pid
        runs = interleave(
            args.runs,
            [
                ("breaker on", lambda: one_run(st, store, api_url, api_pid, hot, cold, args)),
                ("breaker off", lambda: one_run(st, store, off_url, off_pid, hot, cold, args)),
            ],
        )

    rows = []
    for name, samples in runs.items():
        for i, m in enumerate(samples):
            rows.append(
                [
                    f"{name}, run {i + 1}",
                    f"{m['cached_p99_calm_ms']:.1f} / {m['cached_p99_stall_ms']:.1f}",
                    f"{m['cached_errors_stall']:.1%}",
                    f"{m['uncached_p99_calm_ms']:.1f} / {m['uncached_p50_stall_ms']:.0f} / "
                    f"{m['uncached_p99_stall_ms']:.0f}",
                    f"{m['uncached_errors_stall']:.0%} ({m['uncached_errors_calm']:.1%})",
                    f"{m['recovery_s']:.2f}",
                    f"{m['rss_calm_mib']:.0f} / {m['rss_stall_mib']:.0f}",
                    f"{m['conns_calm']:.0f} / {m['conns_stall']:.0f}",
                    f"{m['store_conns_calm']:.0f} / {m['store_conns_stall']:.0f}",
                    f"{m['breaker_open_share']:.0%}, {m['breaker_closed_after_s']:.2f} s",
                ]
            )
    body = table(
        [
            "run",
            "cached p99 ms: calm / stall",
            "cached errors, stall",
            "uncached ms: p99 calm / p50 stall / p99 stall",
            "uncached errors: stall (calm)",
            "uncached recovered after SIGCONT, s",
            "API RSS MiB: calm / stall",
            "API TCP conns: calm / stall",
            "of them to the store",
            "breaker open in stall; closed after SIGCONT",
        ],
        rows,
    )
    body += (
        f"\n\n{args.rows:,} rows; {args.rate:g} cached lookups/s (Zipf over {args.hot:,} "
        f"warmed ids, Redis hits: the process cache is off) and {args.uncached_rate:g} "
        f"uncached lookups/s (each id once, {args.connections} connections), open loop; the "
        f"store paused {args.stall:g} s every {args.period:g} s, {args.cycles} stalls per "
        f"run; LOOKUP_TIMEOUT_MS={args.lookup_timeout_ms}, BREAKER_FAILURES and "
        "BREAKER_OPEN_MS at their defaults. 'Stall' = requests due while the store was "
        f"paused and in the {RECOVERY_S:g} s after; 'calm' = the rest. Errors = answers "
        "other than 200/404 (here all 503 with Retry-After). Memory, connections and the "
        f"breaker gauge sampled every {SAMPLE_S * 1000:.0f} ms (maxima)."
    )
    report(
        "Stall: lookups while the store pauses, breaker on and off",
        body,
        args.runs,
        args.append_results,
    )


if __name__ == "__main__":
    main()
