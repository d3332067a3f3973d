"""Switch: lookup latency while a new dataset goes live, with and without the warm-up.

An open-loop client (``bench.open_loop``, own process) sends lookups at about half of the
cache-hit peak (measured by wrk just before) over a Zipf-like distribution of the dataset's
ids, all of them cached before the switch (steady state). Meanwhile a new version (same
rows, loaded straight into the store beforehand so that the load itself is not in the
picture: ``bench.load`` measures that) goes live exactly as
the job finalizer does it: ``warm_before_switch`` (skipped in the "no warm-up" runs), the
pointer update, the announcement. p99 over the 10 s after the pointer moved is compared
with the 10 s before; store reads/s after the switch come from the API's own counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import add_common_args, report, table
from bench.lookups import _warm, load, require_wrk, wait_live, wrk
from bench.open_loop import window, zipf_sequence
from bench.parse import data_file
from bench.stack import Stack, stack
from shared.dataset import lifecycle
from shared.readpath.pointer_channel import announce_active
from shared.readpath.warmup import warm_before_switch
from shared.settings import get_settings

TARGET = 1.5
SETTLE_S = 4.0  # first seconds of a run: caches and hot ids fill, not measured
WINDOW_S = 10.0


def counters(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "promotions_cache_lookups_total":
                out[s.labels["result"]] = s.value
            elif s.name == "promotions_store_lookup_duration_seconds_count":
                out["store_queries"] = s.value
    return out


def one_run(
    st: Stack,
    ids: list[str],
    version: int,
    rate: float,
    warm_batch: int | None,
    args: argparse.Namespace,
) -> dict[str, float]:
    """One switch; ``warm_batch``: the warm-up's ids per read, None for no warm-up."""
    assert st.api_url is not None
    db = st.mongo_db()
    asyncio.run(_warm(st.api_url, ids))  # steady state before the switch: all ids cached
    settings = get_settings()
    # The schedule covers the warm-up at its bound too, so the "after" window is always full.
    seconds = SETTLE_S + 2 * WINDOW_S + settings.warmup_max_seconds + 1
    keys = zipf_sequence(ids, int(rate * seconds), args.zipf, seed=version)
    keys_file = st.tmp / f"keys-{version}"
    keys_file.write_text("\n".join(keys) + "\n")
    out_file = st.tmp / f"result-{version}.json"
    start_at = time.time() + 1.0
    client = subprocess.Popen(
        [
            *(sys.executable, "-m", "bench.open_loop", st.api_url, str(keys_file)),
            *(f"{rate:.0f}", str(args.connections), f"{start_at:.6f}", str(out_file)),
        ]
    )
    marks: dict[str, Any] = {}

    def switch() -> None:
        time.sleep(max(0.0, start_at + SETTLE_S + WINDOW_S - time.time()))
        marks["warm_began"] = time.time()
        marks["warmup"] = None
        if warm_batch is not None:
            chosen = settings.model_copy(update={"warmup_batch_ids": warm_batch})
            marks["warmup"] = warm_before_switch(db, version, chosen)
        assert lifecycle.activate_if_newest(db, version, len(ids), f"bench-{version}") == "switched"
        marks["switched"] = time.time()
        announce_active(st.redis_url, version)
        marks["before"] = counters(st.api_url or "")
        time.sleep(WINDOW_S)
        marks["after"] = counters(st.api_url or "")

    switcher = threading.Thread(target=switch)
    switcher.start()
    switcher.join()
    client.wait()
    result = json.loads(out_file.read_text())
    t = marks["switched"]
    before = window(result, t - WINDOW_S, t)
    after = window(result, t, t + WINDOW_S)
    delta = {k: marks["after"].get(k, 0) - marks["before"].get(k, 0) for k in marks["after"]}
    warmup = marks["warmup"]
    lookups = sum(v for k, v in delta.items() if k != "store_queries")
    return {
        "p99_before_ms": before["p99_ms"],
        "p99_after_ms": after["p99_ms"],
        "ratio": after["p99_ms"] / before["p99_ms"],
        "p50_before_ms": before["p50_ms"],
        "p50_after_ms": after["p50_ms"],
        "errors": before["errors"] + after["errors"],
        "store_ids_per_s": delta.get("miss", 0) / WINDOW_S,
        "store_queries_per_s": delta.get("store_queries", 0) / WINDOW_S,
        "local_hit_share": delta.get("local_hit", 0) / max(1, lookups),
        "warmup_s": warmup.seconds if warmup else 0.0,
        "warmed": warmup.warmed if warmup else 0.0,
        "switch_s": marks["switched"] - marks["warm_began"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="dataset rows")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent s")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0, help="req/s (default: half of peak)")
    parser.add_argument(
        "--compare-batch-ids",
        type=int,
        default=0,
        help="also run the warm-up with this many ids per read (e.g. 500, the former size)",
    )
    add_common_args(parser, runs=2)
    args = parser.parse_args(argv)
    require_wrk()
    path = data_file(args.rows, seed=5, clean=True)
    # A bench runs ~15 s before a switch where production runs 30 min: every lookup is
    # sampled so that the hot-id set is as complete as a production process's would be.
    with stack(api=True, extra_env={"HOT_ID_SAMPLE_EVERY": "1"}) as st:
        assert st.api_url is not None and st.api is not None and st.api.proc is not None
        ids = load(st, path)
        wait_live(st.api_url, ids[0])
        hot = st.tmp / "hot-ids"
        hot.write_text("\n".join(ids[:2000]) + "\n")
        asyncio.run(_warm(st.api_url, ids[:2000]))
        peak = wrk(st.api_url, hot, "random", 8, args.connections, st.api.proc.pid)["req_per_s"]
        rate = args.rate or peak / 2
        print(f"  hit peak {peak:,.0f} req/s; offered rate {rate:,.0f} req/s", file=sys.stderr)
        cases: dict[str, int | None] = {
            "warm-up on": get_settings().warmup_batch_ids,
            "warm-up off": None,
        }
        if args.compare_batch_ids:
            cases[f"warm-up on, {args.compare_batch_ids}-id reads"] = args.compare_batch_ids
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        version = 1
        for i in range(args.runs):
            for name in runs:
                version += 1
                load(st, path, version, activate=False)
                m = one_run(st, ids, version, rate, cases[name], args)
                runs[name].append(m)
                shown = ", ".join(f"{k}={v:,.3g}" for k, v in m.items())
                print(f"  run {i + 1}/{args.runs} {name}: {shown}", file=sys.stderr, flush=True)
    rows = []
    for name, samples in runs.items():
        for i, m in enumerate(samples):
            rows.append(
                [
                    f"{name}, run {i + 1}",
                    f"{m['p50_before_ms']:.2f} / {m['p99_before_ms']:.2f}",
                    f"{m['p50_after_ms']:.2f} / {m['p99_after_ms']:.2f}",
                    f"{m['ratio']:.2f}",
                    int(m["errors"]),
                    f"{m['store_ids_per_s']:,.0f} ({m['store_queries_per_s']:,.0f})",
                    f"{m['local_hit_share']:.0%}",
                    f"{m['warmed']:,.0f} in {m['warmup_s']:.2f} s",
                ]
            )
    ratio = statistics.median(m["ratio"] for m in runs["warm-up on"])
    errors = sum(m["errors"] for s in runs.values() for m in s)
    verdict = "met" if ratio <= TARGET and errors == 0 else "MISSED"
    body = table(
        [
            "run",
            "before: p50 / p99 ms",
            "after: p50 / p99 ms",
            "p99 after ÷ before",
            "errors",
            "store ids/s after (queries/s)",
            "local hits after",
            "warm-up",
        ],
        rows,
    )
    body += (
        f"\n\n{args.rows:,} rows, Zipf s={args.zipf:g} over all ids, open loop at {rate:,.0f} "
        f"req/s (half of the wrk -c{args.connections} hit peak {peak:,.0f}), "
        f"{args.connections} connections; windows of {WINDOW_S:g} s before and after the "
        "pointer update. Target (warm-up on): p99 after ÷ p99 before ≤ "
        f"{TARGET:g} with 0 errors: **{verdict}** (median {ratio:.2f})."
    )
    report("Switch: lookups while a new dataset goes live", body, args.runs, args.append_results)


if __name__ == "__main__":
    main()
