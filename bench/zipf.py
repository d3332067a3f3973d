"""Zipf lookups over a big dataset: the API alone (1 and 2 processes) and through the edge.

Ids drawn from a Zipf distribution (rank k with weight 1/k^s, s = 1.1) over ``--distinct``
ids spread evenly over a ``--rows`` dataset (bench.zipf_dataset, kept between runs).
Closed loop: ``wrk`` with bench/zipf.lua choosing the ids. Open loop: bench/open_loop.py at
a fixed rate, latency from each request's due time. Per case: rate, p50/p99, errors, where
the lookups were answered (edge, API process memory, Redis, store), CPU per request of the
API processes, of nginx and of the load generator. ``--profile`` adds the hit-path and
miss-path cases with py-spy on both API processes (bench/out/zipf-profile-*.txt).

Every case starts with the API's caches empty (Redis flushed, new processes, new edge),
then a warm-up round that is not measured.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pymongo
import redis

from bench import zipf_dataset
from bench.common import OUT, ROOT, report, table
from bench.lookups import require_wrk
from bench.open_loop import window, zipf_sequence
from devstack.edge import edge_service
from devstack.run import wait_until_listening
from devstack.services import Service, api_command, free_port, mongo_command, redis_command
from shared.dataset import datasets

LUA = ROOT / "bench" / "zipf.lua"
ROUTE = 'route="/promotions/{promotion_id}"'
TARGET_RATE = 1_000_000 / 60


def _slug(name: str) -> str:
    return re.sub(r"\W+", "-", name).strip("-")


@dataclass
class Services:
    env: dict[str, str]
    tmp: Path
    warm: bool = False  # Redis holds every drawn id's answer; kept between cases
    edge_cache: Path | None = None  # where nginx keeps its cache (None: next to its config)


def _cpu(pid: int) -> float:
    """CPU seconds of a process and its children (uvicorn workers, nginx workers)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _counters(api_url: str) -> dict[str, float]:
    """Lookups that reached the API and where they were answered (Prometheus text)."""
    text = httpx.get(f"{api_url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("promotions_http_requests_total{") and ROUTE in line:
            out["api_lookups"] = out.get("api_lookups", 0.0) + float(line.rsplit(" ", 1)[1])
        m = re.match(r'promotions_cache_lookups_total\{result="(\w+)"\} (\S+)', line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


@contextmanager
def _api(sv: Services, workers: int) -> Iterator[tuple[str, Service]]:
    port = free_port()
    env = dict(sv.env)
    if workers > 1:
        prom = sv.tmp / f"prom-{port}"
        prom.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
    api = Service(
        f"api-{workers}",
        api_command("127.0.0.1", port, workers),
        env=env,
        port=port,
        log_path=sv.tmp / f"api-{port}.log",
    )
    if not sv.warm:
        redis.Redis.from_url(sv.env["REDIS_URL"]).flushdb()  # every case starts cold
    api.start().wait_ready(120)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/promotions/{zipf_dataset.id_of(0)}").status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError("the API did not serve the dataset")
            time.sleep(0.2)
        yield url, api
    finally:
        api.stop()


def _wrk(
    url: str, args: argparse.Namespace, seconds: float, s: float, distinct: int
) -> dict[str, Any]:
    stride = args.rows // args.distinct  # the same ids whatever the distinct count asked
    proc = subprocess.Popen(
        [
            *("wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{int(seconds)}s"),
            *("--timeout", "5s", "-s", str(LUA), url, "--"),
            *(str(args.rows), str(distinct), str(s), str(stride)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    wrk_cpu = 0.0
    p = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            t = p.cpu_times()
            wrk_cpu = t.user + t.system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    out = proc.stdout.read() if proc.stdout else ""
    line = next(x for x in out.splitlines() if x.startswith("WRK "))
    r: dict[str, Any] = json.loads(line[4:])
    r["wrk_cpu"] = wrk_cpu
    return r


def _profile(pids: list[int], seconds: float, name: str) -> list[Path]:
    """py-spy on each API worker process, collapsed stacks (``--format raw``)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    outs, procs = [], []
    for pid in pids:
        out = OUT / f"zipf-profile-{_slug(name)}-{pid}.txt"
        outs.append(out)
        procs.append(
            subprocess.Popen(
                [
                    *(spy, "record", "--pid", str(pid), "--duration", str(int(seconds))),
                    *("--rate", "100", "--format", "raw", "--output", str(out), "--nonblocking"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    for proc in procs:
        proc.wait()
    return outs


def summarize_profile(files: list[Path], top: int = 14) -> str:
    """Self time by function and inclusive time of a few markers, over all processes."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = stack.split(";")
            total += n
            own[re.sub(r" \(.*?/site-packages/", " (", frames[-1])] += n
            for frame in set(frames):
                inclusive[re.sub(r" \(.*?/site-packages/", " (", frame)] += n
    if not total:
        return "(no samples)"
    rows = [(f"{n / total:.1%}", f"{inclusive[f] / total:.1%}", f) for f, n in own.most_common(top)]
    return table(["self", "inclusive", "function (file:line)"], rows)


def _case(
    sv: Services,
    args: argparse.Namespace,
    name: str,
    workers: int,
    edge: bool,
    s: float,
    distinct: int,
    profile: bool = False,
) -> list[dict[str, Any]]:
    """One configuration: a warm-up round, then ``args.runs`` measured rounds."""
    print(f"case {name}: warm-up {args.warmup} s, then {args.runs} x {args.seconds} s", flush=True)
    rounds = []
    with _api(sv, workers) as (api_url, api):
        assert api.proc is not None
        url = api_url
        nginx = None
        if edge:
            api_port = int(api_url.rsplit(":", 1)[1])
            nginx = edge_service(
                sv.tmp / f"edge-{_slug(name)}",
                free_port(),
                [api_port],
                workers=2,
                cache_dir=sv.edge_cache / _slug(name) if sv.edge_cache else None,
            )
            nginx.start().wait_ready(20)
            url = f"http://127.0.0.1:{nginx.port}"
        try:
            _wrk(url, args, args.warmup, s, distinct)
            for i in range(args.runs):
                label = name if args.runs == 1 else f"{name} #{i + 1}"
                rounds.append(_round(args, label, api, api_url, url, nginx, s, distinct, profile))
        finally:
            if nginx is not None:
                nginx.stop()
    return rounds


def _round(
    args: argparse.Namespace,
    name: str,
    api: Service,
    api_url: str,
    url: str,
    nginx: Service | None,
    s: float,
    distinct: int,
    profile: bool,
) -> dict[str, Any]:
    assert api.proc is not None
    time.sleep(1.2)  # the API mirrors its cache counters every second
    before = _counters(api_url)
    cpu0 = _cpu(api.proc.pid)
    edge0 = _cpu(nginx.proc.pid) if nginx and nginx.proc else 0.0
    profiled: list[Path] = []
    if profile:
        children = psutil.Process(api.proc.pid).children()
        pids = [c.pid for c in children] or [api.proc.pid]
        OUT.mkdir(parents=True, exist_ok=True)
        spy = _spawn_profile(pids, args.seconds, name)
    r = _wrk(url, args, args.seconds, s, distinct)
    if profile:
        profiled = spy()
    api_cpu = _cpu(api.proc.pid) - cpu0
    edge_cpu = (_cpu(nginx.proc.pid) - edge0) if nginx and nginx.proc else 0.0
    time.sleep(1.2)
    after = _counters(api_url)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    n = r["requests"]
    reached = delta.get("api_lookups", 0.0)
    local = delta.get("local_hit", 0.0) + delta.get("local_negative_hit", 0.0)
    redis_hits = delta.get("hit", 0.0) + delta.get("negative_hit", 0.0)
    return {
        "case": name,
        "req_per_s": n / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "errors": r["socket_errors"] + r["non_2xx"],
        "requests": n,
        "edge_hit": (1 - reached / n) if nginx and n else None,
        "local_hit": local / reached if reached else 0.0,
        "redis_hit": redis_hits / reached if reached else 0.0,
        "store": delta.get("miss", 0.0) / reached if reached else 0.0,
        "api_cpu_us": api_cpu / n * 1e6 if n else 0.0,
        "api_per_core_s": reached / api_cpu if api_cpu else 0.0,
        "edge_cpu_us": edge_cpu / n * 1e6 if n else 0.0,
        "wrk_cpu_us": r["wrk_cpu"] / n * 1e6 if n else 0.0,
        "profile": profiled,
    }


def _spawn_profile(pids: list[int], seconds: float, name: str) -> Any:
    """py-spy runs alongside the measured round; the returned function waits for it."""
    result: list[Path] = []

    thread = threading.Thread(target=lambda: result.extend(_profile(pids, seconds, name)))
    thread.start()

    def wait() -> list[Path]:
        thread.join()
        return result

    return wait


def _open_loop(sv: Services, args: argparse.Namespace) -> dict[str, Any]:
    """Fixed rate through the edge (API with 2 processes): latency from the due time."""
    stride = args.rows // args.distinct
    ids = [zipf_dataset.id_of(k * stride) for k in range(args.distinct)]
    n = int(args.open_rate * args.open_seconds)
    keys = sv.tmp / "open-keys"
    keys.write_text("\n".join(zipf_sequence(ids, n, args.s, seed=7)) + "\n")
    print(f"case open loop: {args.open_rate:,.0f}/s for {args.open_seconds} s", flush=True)
    with _api(sv, 2) as (api_url, _):
        nginx = edge_service(
            sv.tmp / "edge-open", free_port(), [int(api_url.rsplit(":", 1)[1])], workers=2
        )
        nginx.start().wait_ready(20)
        url = f"http://127.0.0.1:{nginx.port}"
        try:
            _wrk(url, args, args.warmup, args.s, args.distinct)
            out = sv.tmp / "open-out.json"
            start_at = time.time() + 1.0
            cmd = [sys.executable, "-m", "bench.open_loop", url, str(keys)]
            cmd += [str(args.open_rate), str(args.connections), str(start_at), str(out)]
            subprocess.run(cmd, check=True, cwd=ROOT)
        finally:
            nginx.stop()
    result = json.loads(out.read_text())
    w = window(result, start_at, start_at + args.open_seconds + 60)
    return {"rate": args.open_rate, **w}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000, help="dataset rows")
    parser.add_argument("--distinct", type=int, default=1_000_000, help="ids drawn from")
    parser.add_argument("--s", type=float, default=1.1, help="Zipf exponent")
    parser.add_argument("--seconds", type=int, default=12, help="per measured round")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured round per case")
    parser.add_argument("--runs", type=int, default=1, help="measured rounds per case")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--cases", default="api1,api2,edge,open", help="comma-separated")
    parser.add_argument("--open-rate", type=float, default=8000, help="open loop, per second")
    parser.add_argument("--open-seconds", type=float, default=10)
    parser.add_argument("--profile", action="store_true", help="hit and miss cases, py-spy")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="Redis holds every drawn id's answer (a cache that saw them all within its TTL) "
        "instead of every case starting with empty caches",
    )
    parser.add_argument(
        "--edge-cache-dir", type=Path, help="nginx's cache directory (e.g. on /dev/shm)"
    )
    parser.add_argument("--store-dir", type=Path, default=ROOT / "data" / "bench-zipf")
    parser.add_argument("--append-results", action="store_true")
    args = parser.parse_args(argv)
    require_wrk()
    store_dir: Path = args.store_dir
    (store_dir / "store").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="promotions-zipf-"))
    mongo_port, redis_port = free_port(), free_port()
    (tmp / "redis").mkdir()
    store = Service(
        "store",
        mongo_command(mongo_port, str(store_dir / "store")),
        port=mongo_port,
        log_path=tmp / "store.log",
    )
    rds = Service(
        "redis", redis_command(redis_port, str(tmp / "redis")), port=redis_port, log_path=tmp / "r"
    )
    env = {
        "MONGO_URL": f"mongodb://127.0.0.1:{mongo_port}",
        "MONGO_DB": "bench_zipf",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "BROKER_URL": f"redis://127.0.0.1:{redis_port}/1",
        "DATA_DIR": str(tmp / "shared"),
        "CONFIG_FILE": str(tmp / "no-config.json"),
        "LOG_LEVEL": "WARNING",
    }
    sv = Services(env, tmp, warm=args.warm, edge_cache=args.edge_cache_dir)
    results: list[dict[str, Any]] = []
    open_result: dict[str, Any] | None = None
    try:
        store.start()
        wait_until_listening(store, 0)
        rds.start().wait_ready(20)
        client: pymongo.MongoClient[Any] = pymongo.MongoClient(env["MONGO_URL"], tz_aware=True)
        if not zipf_dataset.ready(store_dir, args.rows):
            print(f"building the dataset ({args.rows:,} rows) in {store_dir}", flush=True)
            zipf_dataset.build(client[env["MONGO_DB"]], store_dir, args.rows)
        if args.warm:
            stride = args.rows // args.distinct
            rows = [k * stride for k in range(args.distinct)]
            # What goes into Redis must be what the store holds: a sample, compared.
            db = client[env["MONGO_DB"]]
            sample = rows[:: max(1, len(rows) // 100)]
            stored = datasets.find_rows_sync(
                db,
                zipf_dataset.VERSION,
                datasets.read_buckets_sync(db, zipf_dataset.VERSION),
                [zipf_dataset.id_of(i) for i in sample],
            )
            for i in sample:
                assert stored[zipf_dataset.id_of(i)] == zipf_dataset.promotion(i), i
            print(f"filling Redis with the answers of {args.distinct:,} ids", flush=True)
            zipf_dataset.fill_cache(env["REDIS_URL"], rows, 3600)
        cases = args.cases.split(",")
        plan = {
            "api1": ("API, 1 process", 1, False),
            "api2": ("API, 2 processes", 2, False),
            "edge": ("edge + API, 2 processes", 2, True),
        }
        for key in cases:
            if key in plan:
                label, workers, edge = plan[key]
                results += _case(sv, args, label, workers, edge, args.s, args.distinct)
        if "open" in cases:
            open_result = _open_loop(sv, args)
        if args.profile:
            # Hits: 2,000 ids, all in each process's memory after the warm-up. Misses: uniform
            # over the distinct ids, Redis flushed: nearly every lookup reads the store.
            results += _case(sv, args, "hit path (profiled)", 2, False, 0.0, 2000, True)
            results += _case(sv, args, "miss path (profiled)", 2, False, 0.0, args.distinct, True)
        client.close()
    finally:
        rds.stop()
        store.stop()
    print(_report(args, results, open_result))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _report(
    args: argparse.Namespace, results: list[dict[str, Any]], open_result: dict[str, Any] | None
) -> str:
    rows = [
        (
            r["case"],
            f"{r['req_per_s']:,.0f}",
            f"{r['req_per_s'] / TARGET_RATE:.2f}x",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            r["errors"],
            _pct(r["edge_hit"]),
            _pct(r["local_hit"]),
            _pct(r["redis_hit"]),
            _pct(r["store"]),
            f"{r['api_cpu_us']:.0f}",
            f"{r['api_per_core_s']:,.0f}",
            f"{r['edge_cpu_us']:.0f}",
            f"{r['wrk_cpu_us']:.0f}",
        )
        for r in results
    ]
    body = (
        "(no closed-loop case)"
        if not rows
        else table(
            [
                *("case", "req/s", "of 1M/min", "p50 ms", "p99 ms", "errors", "edge hits"),
                *("API memory", "Redis", "store", "API CPU µs/req", "API lookups per CPU s"),
                *("nginx CPU µs/req", "wrk CPU µs/req"),
            ],
            rows,
        )
    )
    body += (
        f"\n\nZipf s = {args.s} over {args.distinct:,} ids of a {args.rows:,}-row dataset "
        f"(built by inserting bucket documents directly: bench/zipf_dataset.py); closed loop "
        f"wrk -t{args.threads} -c{args.connections}, {args.warmup} s warm-up then "
        f"{args.seconds} s per case, "
        + (
            "Redis holding every drawn id's answer (--warm), process memory and edge empty "
            "before each case. "
            if args.warm
            else "caches emptied before each case. "
        )
        + "'API memory', 'Redis' "
        "and 'store' are shares of the lookups that reached the API; CPU per request counts "
        "every request of the round (edge hits included). Load generator, nginx, API, Redis "
        "and the store share the 2 cores."
    )
    if open_result:
        o = open_result
        body += (
            f"\n\nOpen loop through the edge (bench/open_loop.py, {args.connections} "
            f"connections, the same Zipf draws): {o['rate']:,.0f}/s due, {o['requests']:,} sent, "
            f"p50 {o['p50_ms']:.2f} ms, p99 {o['p99_ms']:.2f} ms, max {o.get('max_ms', 0):.0f} "
            f"ms, errors {o['errors']}."
        )
    for r in results:
        if r["profile"]:
            body += f"\n\nProfile, {r['case']} (py-spy, both API processes):\n\n"
            body += summarize_profile(r["profile"])
    return report("Zipf lookups over a big dataset", body, args.runs, args.append_results)


if __name__ == "__main__":
    main()
