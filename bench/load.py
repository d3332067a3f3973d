"""Reads during a load: lookup latency while a 200k-row file loads, throttle on and off.

An open-loop client (``bench.open_loop``, own process) sends lookups at a fixed rate: most
to hot ids (Zipf-like over the first ``--hot-ids`` ids, cached) and ``--cold-share`` to
ids asked once each (cache misses: store reads that compete with the load's inserts). After
an idle window the file is uploaded to the API and two worker processes load it; p99 while
the job runs is compared with p99 of the idle window, and 503 answers are counted. The
workers are started per run with ``INGEST_THROTTLE`` on or off, runs interleaved; the ingest
time of both is the throttle's cost.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx

from bench.common import add_common_args, report, table
from bench.ingest import tree_cpu_seconds
from bench.lookups import load, wait_live
from bench.open_loop import window, zipf_sequence
from bench.parse import data_file
from bench.stack import Stack, _wait_for_log, stack
from devstack.services import Service, worker_command
from shared import datasets

TARGET = 3.0
IDLE_S = 10.0
MAX_LOAD_S = 150.0


def run_once(
    st: Stack, ids: list[str], cold: list[str], env: dict[str, str], args: argparse.Namespace
) -> dict[str, float]:
    assert st.api_url is not None
    workers = Service(
        "worker",
        worker_command(2, f"bench-{uuid.uuid4().hex[:6]}"),
        env={**st.env, "LOG_LEVEL": "INFO", **env},
        log_path=st.tmp / "logs" / f"worker-{uuid.uuid4().hex[:4]}.log",
    )
    workers.start()
    try:
        _wait_for_log(workers, "ready.", 90)
        seconds = IDLE_S + MAX_LOAD_S
        n = int(args.rate * seconds)
        hot = zipf_sequence(ids[: args.hot_ids], n, 1.0, seed=len(cold))
        rng = random.Random(len(cold))
        cold_iter = iter(cold)
        keys = [next(cold_iter) if rng.random() < args.cold_share else k for k in hot]
        keys_file = st.tmp / f"load-keys-{uuid.uuid4().hex[:6]}"
        keys_file.write_text("\n".join(keys) + "\n")
        out_file = keys_file.with_suffix(".json")
        start_at = time.time() + 1.0
        client = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.open_loop", st.api_url, str(keys_file)),
                *(f"{args.rate:.0f}", str(args.connections), f"{start_at:.6f}", str(out_file)),
            ]
        )
        time.sleep(max(0.0, start_at + IDLE_S - time.time()))
        assert workers.proc is not None
        cpu0 = tree_cpu_seconds(workers.proc.pid)
        began = time.time()
        path = data_file(args.rows, seed=11, clean=True)
        with httpx.Client(base_url=st.api_url, timeout=120) as http:
            with path.open("rb") as f:
                r = http.post("/add-promotions/", files={"file": ("p.csv", f, "text/csv")})
            job_id = r.json()["job_id"]
            while True:
                job: dict[str, Any] = http.get(f"/jobs/{job_id}").json()
                if job["status"] in ("succeeded", "failed"):
                    break
                time.sleep(0.2)
        ended = time.time()
        cpu = tree_cpu_seconds(workers.proc.pid) - cpu0
        assert job["status"] == "succeeded", job
        client.terminate()  # the schedule runs longer than any load
        client.wait()
    finally:
        workers.stop()
    result = json.loads(out_file.read_text()) if out_file.exists() else None
    return {"began": began, "ended": ended, "cpu": cpu, "result": result}  # type: ignore[dict-item]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows in the loaded file")
    parser.add_argument("--rate", type=float, default=1000, help="lookups per second")
    parser.add_argument("--hot-ids", type=int, default=2000)
    parser.add_argument("--cold-share", type=float, default=0.05, help="share of cold ids")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--ceiling",
        type=float,
        default=0,
        help="also run with INGEST_MAX_ROWS_PER_S set to this (rows/s per worker process)",
    )
    add_common_args(parser, runs=1)
    args = parser.parse_args(argv)
    path = data_file(args.rows, seed=11, clean=True)
    cases = {
        "throttle on": {"INGEST_THROTTLE": "true"},
        "throttle off": {"INGEST_THROTTLE": "false"},
    }
    if args.ceiling:
        cases[f"throttle on, ceiling {args.ceiling:,.0f} rows/s per process"] = {
            "INGEST_THROTTLE": "true",
            "INGEST_MAX_ROWS_PER_S": f"{args.ceiling:g}",
        }
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    with stack(api=True) as st:
        assert st.api_url is not None
        # The file's own ids: every version loaded from it answers them. The version comes
        # from the counter, so that the uploads' versions follow it (and never collide).
        ids = load(st, path, datasets.allocate_version_sync(st.mongo_db()))
        wait_live(st.api_url, ids[0])
        cold_pool = ids[args.hot_ids :]
        random.Random(2).shuffle(cold_pool)
        per_run = len(cold_pool) // (len(cases) * args.runs)
        n = 0
        for i in range(args.runs):
            for name, env in cases.items():
                cold = cold_pool[n * per_run : (n + 1) * per_run]
                n += 1
                out = run_once(st, ids, cold, env, args)
                res: Any = out["result"]
                idle = window(res, out["began"] - IDLE_S, out["began"])
                during = window(res, out["began"], out["ended"])
                m = {
                    "idle_p50_ms": idle["p50_ms"],
                    "idle_p99_ms": idle["p99_ms"],
                    "load_p50_ms": during["p50_ms"],
                    "load_p99_ms": during["p99_ms"],
                    "ratio": during["p99_ms"] / idle["p99_ms"],
                    "status_503": during["status_503"] + idle["status_503"],
                    "errors": during["errors"] + idle["errors"],
                    "ingest_s": out["ended"] - out["began"],
                    "worker_cpu_s": out["cpu"],
                    "requests": during["requests"],
                }
                samples[name].append(m)
                shown = ", ".join(f"{k}={v:,.3g}" for k, v in m.items())
                print(f"  run {i + 1}/{args.runs} {name}: {shown}", file=sys.stderr, flush=True)
    rows = []
    for name, runs in samples.items():
        for i, m in enumerate(runs):
            rows.append(
                [
                    f"{name}, run {i + 1}",
                    f"{m['idle_p50_ms']:.2f} / {m['idle_p99_ms']:.2f}",
                    f"{m['load_p50_ms']:.2f} / {m['load_p99_ms']:.2f}",
                    f"{m['ratio']:.2f}",
                    int(m["status_503"]),
                    int(m["errors"]),
                    f"{m['ingest_s']:.1f}",
                    f"{m['worker_cpu_s']:.1f}",
                ]
            )
    on = samples["throttle on"]
    ratio = statistics.median(m["ratio"] for m in on)
    n503 = sum(m["status_503"] for m in on)
    cost = statistics.median(m["ingest_s"] for m in on) / statistics.median(
        m["ingest_s"] for m in samples["throttle off"]
    )
    verdict = "met" if ratio <= TARGET and n503 == 0 else "MISSED"
    body = table(
        [
            "run",
            "idle: p50 / p99 ms",
            "during load: p50 / p99 ms",
            "p99 load ÷ idle",
            "503s",
            "other errors",
            "ingest s (upload → succeeded)",
            "worker CPU s",
        ],
        rows,
    )
    body += (
        f"\n\n{args.rows:,}-row upload, 2 worker processes; open loop at {args.rate:,.0f} "
        f"lookups/s, {1 - args.cold_share:.0%} Zipf over {args.hot_ids:,} hot (cached) ids, "
        f"{args.cold_share:.0%} ids asked once (store reads), {args.connections} connections; "
        f"idle window {IDLE_S:g} s just before the upload. Target (throttle on): p99 during "
        f"÷ p99 idle ≤ {TARGET:g} and 0 answers 503: **{verdict}** (median {ratio:.2f}, "
        f"{n503} answers 503). Ingest time with the throttle: {cost:.2f}x of without. "
        "Worker CPU s: all worker processes during the job."
    )
    report("Reads during a load", body, args.runs, args.append_results)


if __name__ == "__main__":
    main()
