"""Reads during a load: lookup latency while a 200k-row file loads, throttle on and off.

An open-loop client (``bench.open_loop``, own process) sends lookups at a fixed rate: most
to hot ids (Zipf-like over the first ``--hot-ids`` ids, cached) and ``--cold-share`` to
ids asked once each (cache misses: store reads that compete with the load's inserts). After
an idle window the file is uploaded to the API and two worker processes load it; p99 while
the job runs is compared with p99 of the idle window, and 503 answers are counted. The
workers are started per run with the case's settings (throttle off; on with the insert
rule only; on with the readers' signal; ...), runs interleaved; the ingest time of each
against "off" is the throttle's cost.

To explain the figures, each run also reports p99 of the cold (store-read) and hot (cached)
lookups separately, the CPU each process used during the job (share of one core), what the
API published as its store reads' p90 (``shared.readpath.read_latency``, sampled from Redis), and
how often the workers' throttle slowed down (from their logs). ``bench/out/load-*.json``
keeps a per-second timeline of each run.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from bench.common import OUT, add_common_args, quantile_ms, report, table
from bench.ingest import tree_cpu_seconds
from bench.lookups import load, wait_live
from bench.open_loop import window, zipf_sequence
from bench.parse import data_file
from bench.stack import Stack, _wait_for_log, stack
from devstack.services import Service, worker_command
from shared.dataset import datasets
from shared.readpath.read_latency import read_latencies

TARGET = 3.0
IDLE_S = 10.0
MAX_LOAD_S = 240.0
TIMELINE_S = 1.0

# name -> worker environment. The first one is the default configuration (the target's).
CASES: dict[str, dict[str, str]] = {
    "reads": {"INGEST_THROTTLE": "true", "INGEST_READ_SIGNAL": "true"},
    "reads2": {
        "INGEST_THROTTLE": "true",
        "INGEST_READ_SIGNAL": "true",
        "INGEST_READ_SLOWDOWN": "2",
    },
    "inserts": {"INGEST_THROTTLE": "true", "INGEST_READ_SIGNAL": "false"},
    "off": {"INGEST_THROTTLE": "false"},
}
LABELS = {
    "reads": "throttle on (default): readers' signal",
    "reads2": "throttle on: readers' signal, INGEST_READ_SLOWDOWN=2",
    "inserts": "throttle on, insert rule only (before)",
    "off": "throttle off",
}


class SignalSampler:
    """Samples what the API processes publish (their store reads' p90) from Redis."""

    def __init__(self, redis_url: str, every_s: float = 0.25) -> None:
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=1)
        self.every_s = every_s
        self.samples: list[tuple[float, float, float]] = []  # at, p90 of the period, baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._last: dict[str, float] = {}

    def _run(self) -> None:
        while not self._stop.is_set():
            for s in read_latencies(self.redis) or []:
                if self._last.get(s.process) != s.at:  # each published period once
                    self._last[s.process] = s.at
                    self.samples.append((s.at, s.p90_ms, s.baseline_ms))
            time.sleep(self.every_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.redis.close()


def cpu_of(procs: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in procs.items():
        try:
            out[name] = tree_cpu_seconds(pid)
        except psutil.Error:
            out[name] = float("nan")
    return out


def run_once(
    st: Stack, ids: list[str], cold: list[str], env: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    assert st.api_url is not None and st.api is not None and st.api.proc is not None
    log_path = st.tmp / "logs" / f"worker-{uuid.uuid4().hex[:4]}.log"
    workers = Service(
        "worker",
        worker_command(2, f"bench-{uuid.uuid4().hex[:6]}"),
        env={**st.env, "LOG_LEVEL": "INFO", **env},
        log_path=log_path,
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
        signal = SignalSampler(st.redis_url)
        signal.start()
        client = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.open_loop", st.api_url, str(keys_file)),
                *(f"{args.rate:.0f}", str(args.connections), f"{start_at:.6f}", str(out_file)),
            ]
        )
        time.sleep(max(0.0, start_at + IDLE_S - time.time()))
        assert workers.proc is not None
        procs = {
            **{svc.name: svc.proc.pid for svc in st.started if svc.proc is not None},
            "worker": workers.proc.pid,
            "client": client.pid,
        }
        cpu0 = cpu_of(procs)
        began = time.time()
        path = data_file(args.rows, seed=11, clean=True)
        with httpx.Client(base_url=st.api_url, timeout=120) as http:
            with path.open("rb") as f:
                r = http.post("/add-promotions/", files={"file": ("p.csv", f, "text/csv")})
            job_id = r.json()["job_id"]
            finishing = 0.0  # when the poll first saw the job past its loading phase
            while True:
                job: dict[str, Any] = http.get(f"/jobs/{job_id}").json()
                if job["status"] in ("succeeded", "failed"):
                    break
                if not finishing and (
                    job["status"] == "finalizing" or job.get("phase") == "activating"
                ):
                    finishing = time.time()
                time.sleep(0.2)
            ended = time.time()
            cpu1 = cpu_of(procs)
        time.sleep(1.0)  # the signal's idle tail, for the timeline
        signal.stop()
        assert job["status"] == "succeeded", job
        client.terminate()  # the schedule runs longer than any load
        client.wait()
    finally:
        workers.stop()
    result = json.loads(out_file.read_text()) if out_file.exists() else None
    doc = st.mongo_db()["jobs"].find_one({"_id": job_id}) or {}
    phases = {k: v.timestamp() for k, v in (doc.get("phase_at") or {}).items()}
    phases["finalizing"] = finishing or ended
    worker_log = log_path.read_text() if log_path.exists() else ""
    return {
        "began": began,
        "ended": ended,
        "cpu": {k: (cpu1[k] - cpu0[k]) / (ended - began) for k in procs},
        "result": result,
        "cold": set(cold),
        "keys": keys,
        "signal": signal.samples,
        "phases": phases,
        "decreases_inserts": worker_log.count("store slower"),
        "decreases_reads": worker_log.count("reads slower"),
    }


def p99(latencies: list[float]) -> float:
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return quantile_ms(ordered, 0.99)


def split(out: dict[str, Any], begin: float, end: float) -> tuple[list[float], list[float]]:
    """Latencies of the cold and the hot lookups due in [begin, end)."""
    res = out["result"]
    cold: list[float] = []
    hot: list[float] = []
    for key, due, lat, status in zip(
        out["keys"], res["due"], res["latency"], res["status"], strict=False
    ):
        if status != 0 and begin <= due < end:
            (cold if key in out["cold"] else hot).append(lat)
    return cold, hot


def timeline(out: dict[str, Any]) -> list[dict[str, float]]:
    """Per second from the idle window to the end: p99 of all, of cold lookups, and the
    p90 the API published."""
    t0 = out["began"] - IDLE_S
    rows = []
    t = t0
    while t < out["ended"] + 1.0:
        cold, hot = split(out, t, t + TIMELINE_S)
        sig = [p for at, p, _ in out["signal"] if t <= at < t + TIMELINE_S and p]
        rows.append(
            {
                "t": round(t - out["began"], 1),
                "p99_ms": p99(cold + hot),
                "cold_p99_ms": p99(cold),
                "cold": len(cold),
                "signal_p90_ms": max(sig) if sig else float("nan"),
            }
        )
        t += TIMELINE_S
    return rows


def measure(out: dict[str, Any]) -> dict[str, float]:
    res: Any = out["result"]
    idle = window(res, out["began"] - IDLE_S, out["began"])
    during = window(res, out["began"], out["ended"])
    cold_idle, hot_idle = split(out, out["began"] - IDLE_S, out["began"])
    cold_load, hot_load = split(out, out["began"], out["ended"])
    sig_idle = [p for at, p, _ in out["signal"] if at < out["began"] and p]
    sig_load = [p for at, p, _ in out["signal"] if out["began"] <= at < out["ended"] and p]
    baselines = [b for _, _, b in out["signal"] if b]
    loading = out["phases"].get("loading", out["began"])
    activating = out["phases"].get("activating", out["phases"]["finalizing"])
    writing = out["phases"].get("writing", activating)
    cold_ph, hot_ph = split(out, loading, activating)
    cold_map, hot_map = split(out, loading, writing)
    cold_red, hot_red = split(out, writing, activating)
    cold_fin, hot_fin = split(out, activating, out["ended"])
    return {
        "idle_p50_ms": idle["p50_ms"],
        "idle_p99_ms": idle["p99_ms"],
        "load_p50_ms": during["p50_ms"],
        "load_p99_ms": during["p99_ms"],
        "ratio": during["p99_ms"] / idle["p99_ms"],
        "status_503": during["status_503"] + idle["status_503"],
        "errors": during["errors"] + idle["errors"],
        "ingest_s": out["ended"] - out["began"],
        "idle_cold_p99_ms": p99(cold_idle),
        "idle_hot_p99_ms": p99(hot_idle),
        "load_cold_p99_ms": p99(cold_load),
        "load_hot_p99_ms": p99(hot_load),
        "loading_p99_ms": p99(cold_ph + hot_ph),
        "finishing_p99_ms": p99(cold_fin + hot_fin),
        "map_p99_ms": p99(cold_map + hot_map),
        "reduce_p99_ms": p99(cold_red + hot_red),
        "map_s": writing - loading,
        "reduce_s": activating - writing,
        "finishing_s": out["ended"] - activating,
        "signal_idle_ms": statistics.median(sig_idle) if sig_idle else float("nan"),
        "signal_load_ms": statistics.median(sig_load) if sig_load else float("nan"),
        "baseline_ms": baselines[-1] if baselines else float("nan"),
        "decreases_inserts": out["decreases_inserts"],
        "decreases_reads": out["decreases_reads"],
        **{f"cpu_{k}": v for k, v in out["cpu"].items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows in the loaded file")
    parser.add_argument("--rate", type=float, default=1000, help="lookups per second")
    parser.add_argument("--hot-ids", type=int, default=2000)
    parser.add_argument("--cold-share", type=float, default=0.05, help="share of cold ids")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated, from: {', '.join(CASES)}; the first is the target's",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="CASE:NAME=VALUE",
        help="an extra worker setting for a case (a new case name makes a new case "
        "on top of the first one's settings; WORKER_NICE=N for the workers' CPU priority); "
        "repeatable",
    )
    add_common_args(parser, runs=1)
    args = parser.parse_args(argv)
    names = args.cases.split(",")
    cases = {name: dict(CASES.get(name, {})) for name in names}
    for item in args.env:
        name, setting = item.split(":", 1)
        var, value = setting.split("=", 1)
        if name not in cases:
            cases[name] = dict(CASES[names[0]])
            names.append(name)
        cases[name][var] = value
    target_case = names[0]
    path = data_file(args.rows, seed=11, clean=True)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    OUT.mkdir(exist_ok=True)
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
                m = measure(out)
                samples[name].append(m)
                tl = timeline(out)
                Path(OUT / f"load-{name}-{i + 1}.json").write_text(
                    json.dumps({"env": env, "metrics": m, "timeline": tl}, indent=1)
                )
                shown = ", ".join(f"{k}={v:,.3g}" for k, v in m.items())
                print(f"  run {i + 1}/{args.runs} {name}: {shown}", file=sys.stderr, flush=True)
                for row in tl:
                    print(
                        "    t={t:6.1f}s p99 {p99_ms:6.1f} ms, cold p99 {cold_p99_ms:6.1f} ms "
                        "({cold:3.0f}), published p90 {signal_p90_ms:5.1f} ms".format(**row),
                        file=sys.stderr,
                    )
    rows = []
    cpu_names = [k for k in next(iter(samples.values()))[0] if k.startswith("cpu_")]
    for name, runs in samples.items():
        for i, m in enumerate(runs):
            rows.append(
                [
                    f"{LABELS.get(name, name)}, run {i + 1}",
                    f"{m['idle_p50_ms']:.2f} / {m['idle_p99_ms']:.2f}",
                    f"{m['load_p50_ms']:.2f} / {m['load_p99_ms']:.2f}",
                    f"{m['ratio']:.2f}",
                    int(m["status_503"]),
                    int(m["errors"]),
                    f"{m['ingest_s']:.1f}",
                    f"{m['idle_cold_p99_ms']:.1f} / {m['load_cold_p99_ms']:.1f}",
                    f"{m['idle_hot_p99_ms']:.1f} / {m['load_hot_p99_ms']:.1f}",
                    f"{m['map_p99_ms']:.1f} ({m['map_s']:.1f} s) / "
                    f"{m['reduce_p99_ms']:.1f} ({m['reduce_s']:.1f} s) / "
                    f"{m['finishing_p99_ms']:.1f} ({m['finishing_s']:.1f} s)",
                    f"{m['signal_idle_ms']:.1f} / {m['signal_load_ms']:.1f} "
                    f"(base {m['baseline_ms']:.1f})",
                    f"{int(m['decreases_reads'])} / {int(m['decreases_inserts'])}",
                    " ".join(f"{m[k]:.0%}" for k in cpu_names),
                ]
            )
    on = samples[target_case]
    ratio = statistics.median(m["ratio"] for m in on)
    n503 = sum(m["status_503"] for m in on)
    target_label = LABELS.get(target_case, target_case)
    verdict = "met" if ratio <= TARGET and n503 == 0 else "MISSED"
    costs = ""
    if "off" in samples and target_case != "off":
        off = statistics.median(m["ingest_s"] for m in samples["off"])
        each = [
            f"{LABELS.get(name, name)} {statistics.median(m['ingest_s'] for m in runs) / off:.2f}x"
            for name, runs in samples.items()
            if name != "off"
        ]
        costs = f"Ingest time against throttle off: {', '.join(each)}. "
    body = table(
        [
            "run",
            "idle: p50 / p99 ms",
            "during load: p50 / p99 ms",
            "p99 load ÷ idle",
            "503s",
            "other errors",
            "ingest s",
            "cold p99 ms idle / load",
            "hot p99 ms idle / load",
            "p99 ms map / reduce / finishing",
            "published read p90 ms idle / load",
            "slow-downs reads / inserts",
            "CPU " + " ".join(k.removeprefix("cpu_") for k in cpu_names),
        ],
        rows,
    )
    settings = "; ".join(
        f"{LABELS.get(name, name)}: " + " ".join(f"{k}={v}" for k, v in env.items())
        for name, env in cases.items()
    )
    body += (
        f"\n\n{args.rows:,}-row upload, 2 worker processes; open loop at {args.rate:,.0f} "
        f"lookups/s, {1 - args.cold_share:.0%} Zipf over {args.hot_ids:,} hot (cached) ids, "
        f"{args.cold_share:.0%} ids asked once (store reads), {args.connections} connections; "
        f"idle window {IDLE_S:g} s just before the upload. Target ({target_label}): "
        f"p99 during ÷ p99 idle ≤ {TARGET:g} and 0 answers 503: **{verdict}** (median "
        f"{ratio:.2f}, {n503} answers 503). {costs}Ingest s: upload → succeeded. "
        "Map / reduce / finishing: lookups due in the job's loading phase (chunks parsed into "
        "run files), in its writing phase (bucket documents inserted), and from its "
        "activating phase (warm-up, switch) to succeeded. Published read p90: median over the "
        "API's 0.5 s periods. CPU: share of one core per process (tree) during the job. "
        f"Worker settings: {settings}."
    )
    report("Reads during a load", body, args.runs, args.append_results)


if __name__ == "__main__":
    main()
