"""A scale run as an operator would do it: N rows through the HTTP upload, load and switch,
then a second file of the same size (other ids) replacing the first, with a steady lookup
load alongside the whole time.

Records upload time, time per phase, time to live, rows/s per phase, the reduce tasks'
mean time (from the worker log), peak RSS per process kind (API, each worker process, the
dev store, Redis), peak bytes on the shared volume and in the store's directory, lookups
(rate, p99, errors) while idle (before anything is live, and with the first file live and
no load: the read path's baseline), during each load and during the old version's removal, and
a sampled correctness check after each switch (sampled ids of the live file exact, sampled
ids of the replaced file gone).

The workers keep one version (VERSIONS_TO_KEEP=1) and remove the replaced one after
DROP_GRACE_S=60 s, so the removal happens inside the run. Each size runs once: a scale run
is long, and its figures are read against each other (phases, rows/s), not across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import OUT, add_common_args, quantile_ms, report, table
from bench.parse import data_file
from bench.stack import Stack, stack
from shared.dataset import datasets, lifecycle
from shared.infra.task_names import WRITE_PARTITION

IDLE_S = 10.0
CLIENT_START_S = 5.0  # the open-loop client reads its schedule before the first request
SAMPLE_EVERY_S = 0.5


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _rss(proc: psutil.Process) -> int:
    try:
        return int(proc.memory_info().rss)
    except psutil.Error:
        return 0


def _bytes_under(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class Sampler(threading.Thread):
    """Peak RSS of each process kind (the largest single process of the kind: a worker
    process's bound is per process) and peak bytes on the shared volume and in the store."""

    def __init__(self, st: Stack) -> None:
        super().__init__(daemon=True)
        self.st = st
        self.peak_rss: dict[str, int] = defaultdict(int)
        self.peak_bytes: dict[str, int] = defaultdict(int)
        # (time, bytes the store read from the disk so far, page cache bytes): a lookup
        # whose bucket is no longer in memory reads the disk, which the loads' own writes
        # keep busy. Sampled through the sampled checks too: they are cumulative.
        self.store_io: list[tuple[float, int, int]] = []
        self.stopping = threading.Event()
        # Off during the sampled checks: their burst of lookups (16 at a time) is the
        # bench's, not the load's, and would set the API's peak.
        self.paused = threading.Event()

    def run(self) -> None:
        shared = Path(self.st.env["DATA_DIR"])
        store = self.st.tmp / "mongo"
        while not self.stopping.wait(SAMPLE_EVERY_S):
            self.store_io.append((time.time(), self._store_reads(), _page_cache_bytes()))
            if self.paused.is_set():
                continue
            for svc in self.st.started:
                if svc.proc is None:
                    continue
                for proc in _tree(svc.proc.pid):
                    kind = svc.name
                    if svc.name == "worker" and proc.pid != svc.proc.pid:
                        kind = "worker process"
                    self.peak_rss[kind] = max(self.peak_rss[kind], _rss(proc))
            volume = _bytes_under(shared)
            in_store = _bytes_under(store) if store.exists() else 0
            self.peak_bytes["shared volume"] = max(self.peak_bytes["shared volume"], volume)
            self.peak_bytes["store"] = max(self.peak_bytes["store"], in_store)
            self.peak_bytes["both"] = max(self.peak_bytes["both"], volume + in_store)

    def _store_reads(self) -> int:
        for svc in self.st.started:
            if svc.name == "mongo" and svc.proc is not None:
                with contextlib.suppress(psutil.Error, AttributeError):
                    return sum(int(p.io_counters().read_bytes) for p in _tree(svc.proc.pid))
        return 0

    def store_reads_per_s(self, begin: float, end: float) -> tuple[float, float]:
        """(bytes read from the disk by the store per second, mean page cache bytes) over
        [begin, end)."""
        inside = [x for x in self.store_io if begin <= x[0] < end]
        if len(inside) < 2:
            return float("nan"), float("nan")
        rate = (inside[-1][1] - inside[0][1]) / max(1e-9, inside[-1][0] - inside[0][0])
        return rate, sum(x[2] for x in inside) / len(inside)


def _page_cache_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    return 0


def _ids(path: Path, n: int) -> list[str]:
    """The first ``n`` ids (a 100M-row file read whole would take ~10 GB here)."""
    with path.open() as f:
        return [line.split(",", 1)[0] for line in itertools.islice(f, n)]


class _ReadOnce(io.RawIOBase):
    """The file to upload, dropped from the page cache behind the read: a partner's file is
    on the partner's machine, and 7.7 GB read here would push the store's files out of
    memory, as no real upload does."""

    def __init__(self, path: Path) -> None:
        self._f = path.open("rb", buffering=0)
        self._dropped = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._f.readinto(buffer) or 0
        done = self._f.tell()
        if done - self._dropped >= 64 * 1024 * 1024 or n == 0:
            os.posix_fadvise(self._f.fileno(), 0, done, os.POSIX_FADV_DONTNEED)
            self._dropped = done
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def _upload_and_wait(http: httpx.Client, path: Path) -> dict[str, Any]:
    began = time.time()
    with io.BufferedReader(_ReadOnce(path), 1024 * 1024) as f:
        r = http.post("/add-promotions/", files={"file": (path.name, f, "text/csv")})
    uploaded = time.time()
    r.raise_for_status()
    job_id = r.json()["job_id"]
    while True:
        job: dict[str, Any] = http.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "held"):
            break
        time.sleep(0.5)
    return {"job": job, "began": began, "uploaded": uploaded, "ended": time.time()}


async def _check(url: str, expect: dict[str, str | None]) -> tuple[int, int, int]:
    """(exact, wrong, unanswered) over sampled ids: ``expect`` maps an id to its line's price
    field, or None where the id must not be served. Unanswered: a status other than 200 or
    404 (a 503 while the store is unavailable: the lookups' error count says more); wrong: an
    answer that is not the file's."""
    sem = asyncio.Semaphore(16)
    exact = wrong = unanswered = 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(key: str, price: str | None) -> None:
            nonlocal exact, wrong, unanswered
            async with sem:
                r = await client.get(f"/promotions/{key}")
            if r.status_code not in (200, 404):
                unanswered += 1
                return
            ok = (
                r.status_code == 404
                if price is None
                else (r.status_code == 200 and r.json()["price"] == float(price))
            )
            exact += ok
            wrong += not ok

        await asyncio.gather(*(one(k, p) for k, p in expect.items()))
    return exact, wrong, unanswered


def _sample(path: Path, n: int, seed: int) -> dict[str, str | None]:
    """About ``n`` ids and their price fields, from the lines that follow ``n`` random byte
    offsets: no read of the whole file (a 100M-row file as a dict would not fit in memory).
    The bench's files hold every id once (``generate_distinct``), so each line is the row
    its id must be served as."""
    rng = random.Random(seed)
    size = path.stat().st_size
    rows: dict[str, str | None] = {}
    with path.open("rb") as f:
        for offset in sorted(rng.randrange(size) for _ in range(n)):
            f.seek(offset)
            if offset:
                f.readline()  # the rest of the line the offset fell in
            line = f.readline() or (f.seek(0) or f.readline())
            key, price, _ = line.decode().rstrip("\n").split(",", 2)
            rows[key] = price
    return rows


def _window(result: dict[str, Any], begin: float, end: float) -> dict[str, Any]:
    due, latency, status = result["due"], result["latency"], result["status"]
    picked = [i for i, t in enumerate(due) if begin <= t < end and status[i] != 0]
    lat = sorted(latency[i] for i in picked)
    failed = [i for i in picked if status[i] not in (200, 404)]
    return {
        "n": len(picked),
        "rate": len(picked) / max(1e-9, end - begin),
        "p50_ms": quantile_ms(lat, 0.5) if lat else float("nan"),
        "p99_ms": quantile_ms(lat, 0.99) if lat else float("nan"),
        "errors": len(failed),
        "errors_at": _errors_at([due[i] for i in failed]),
    }


def _errors_at(when: list[float], most: int = 3) -> str:
    """The seconds (UTC, when the requests were due) with the most errors, in time order:
    what to look for in the services' logs."""
    worst = Counter(int(t) for t in when).most_common(most)
    return ", ".join(
        f"{dt.datetime.fromtimestamp(second, dt.UTC):%H:%M:%S} ({n})" for second, n in sorted(worst)
    )


def _partition_seconds(log: str) -> list[float]:
    pattern = re.compile(re.escape(WRITE_PARTITION) + r"\[[^\]]+\] succeeded in ([0-9.]+)s")
    return [float(m) for m in pattern.findall(log)]


def _phases(job: dict[str, Any], db: Any) -> dict[str, float]:
    doc = db[lifecycle.JOBS].find_one({"_id": job["job_id"]}) or {}
    at = {k: v.timestamp() for k, v in (doc.get("phase_at") or {}).items()}
    end = doc["finished_at"].timestamp()
    order = ["queued", "splitting", "loading", "writing", "activating"]
    seen = [p for p in order if p in at]
    out = {}
    for here, nxt in zip(seen, [*seen[1:], None], strict=True):
        out[here] = (at[nxt] if nxt else end) - at[here]
    out["created_at"] = doc["created_at"].timestamp()
    for phase, when in at.items():  # where a load's lookups are split by phase
        out[f"at {phase}"] = when
    return out


def _phase_windows(
    name: str, load: dict[str, Any], ph: dict[str, float]
) -> list[tuple[str, float, float]]:
    """A load's lookups by phase: the upload and plan, the map (no store writes, CPU
    shared with the parsing processes) and the reduce with the switch (paced writes)."""
    if "at loading" not in ph or "at writing" not in ph:
        return []
    return [
        (f"{name}: upload and plan", load["began"], ph["at loading"]),
        (f"{name}: map", ph["at loading"], ph["at writing"]),
        (f"{name}: reduce and switch", ph["at writing"], load["ended"]),
    ]


def _windows(
    loads: list[dict[str, Any]],
    phases: list[dict[str, float]],
    start_at: float,
    idle_live: tuple[float, float] | None,
    removal: tuple[float, float] | None,
) -> list[tuple[str, float, float]]:
    """The report's windows of lookups: (name, begin, end), epoch seconds."""
    windows = [("idle, nothing live", start_at, start_at + IDLE_S)]
    for n, (ld, ph) in enumerate(zip(loads, phases, strict=True), 1):
        windows.append((f"load {n}", ld["began"], ld["ended"]))
        windows += _phase_windows(f"load {n}", ld, ph)
        if n == 1 and idle_live is not None:  # "p99 <= 3x idle" is read against this one
            windows.append(("idle, file 1 live", *idle_live))
    if removal is not None:  # from the end of the sampled check (its burst is not lookups')
        took = removal[1] - loads[1]["ended"]
        windows.append((f"old version's removal ({took:.0f} s after the switch)", *removal))
    return windows


def _wait_removed(db: Any, version: int, timeout: float) -> float | None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        record = lifecycle.read_record(db, version)
        if record is not None and record.state == lifecycle.REMOVED:
            return time.time()
        time.sleep(0.5)
    return None


# Touches every page of N bytes and keeps them (no swap here): memory the page cache
# cannot have.
_HOLD = (
    "import sys, time; n = int(sys.argv[1]); b = bytearray(n); "
    "b[::4096] = b'x' * len(range(0, n, 4096)); print('held', flush=True); time.sleep(1e9)"
)


@contextlib.contextmanager
def held_memory(gib: float) -> Iterator[None]:
    """Memory taken from the page cache for the run, so that a smaller file meets the
    memory pressure of a bigger one (the store's files, the upload and the run files
    against what is left): a 10M-row run holding ~19 GiB of a 24 GiB machine does in
    minutes what a 100M-row run does in half an hour."""
    if gib <= 0:
        yield
        return
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(int(gib * 2**30))], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield
    finally:
        proc.terminate()
        proc.wait()


def run(args: argparse.Namespace) -> str:
    # One file: the first load alone (a store holding nothing else); two: the second
    # replaces the first, as every upload after the first does.
    files = [data_file(args.rows, seed=11 + n, clean=True) for n in range(args.files)]
    first = files[0]
    env = {
        "VERSIONS_TO_KEEP": "1",
        # Longer than the sampled check after the switch, whose burst of lookups is kept
        # out of the removal's window.
        "DROP_GRACE_S": "60",
        # The bench runs no beat to resume a removal its deadline cut: one cleanup must do
        # it (a 100M-row version is 1M bucket documents, emptied at ~2k a second when paced;
        # still under BROKER_VISIBILITY_TIMEOUT_S).
        "DROP_TIMEOUT_S": "850",
        "WORKER_CONCURRENCY": str(args.processes),
    }
    with held_memory(args.hold_gib), stack(api=True, workers=args.processes, extra_env=env) as st:
        assert st.api_url is not None
        sampler = Sampler(st)
        sampler.start()
        keys = [key for path in files for key in _ids(path, 50_000)]
        picks = random.Random(1).choices(keys, k=int(args.rate * args.max_seconds))
        keys_file = st.tmp / f"scale-keys-{uuid.uuid4().hex[:6]}"
        keys_file.write_text("\n".join(picks) + "\n")
        out_file = keys_file.with_suffix(".json")
        start_at = time.time() + CLIENT_START_S
        client = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.open_loop", st.api_url, str(keys_file)),
                *(f"{args.rate:.0f}", "8", f"{start_at:.6f}", str(out_file)),
            ]
        )
        time.sleep(CLIENT_START_S + IDLE_S)
        db = st.mongo_db()
        loads = []
        checks = []
        idle_live: tuple[float, float] | None = None
        with httpx.Client(base_url=st.api_url, timeout=600) as http:
            for n, path in enumerate(files, start=1):
                loads.append(_upload_and_wait(http, path))
                job = loads[-1]["job"]
                assert job["status"] == "succeeded", job
                expect = _sample(path, args.sample, seed=n)
                if n == 2:  # the first file's ids must be gone (the files share none)
                    gone = _sample(first, args.sample // 4, seed=9)
                    expect.update({k: None for k in gone if k not in expect})
                sampler.paused.set()
                checks.append(asyncio.run(_check(st.api_url, expect)))
                sampler.paused.clear()
                checked_at = time.time()
                if n < len(files):  # the read path's own baseline: a version live, no load
                    idle_live = (time.time(), time.time() + IDLE_S)
                    time.sleep(IDLE_S)
        removed_at = (
            _wait_removed(db, int(loads[0]["job"]["dataset_version"]), 1200)
            if len(loads) > 1
            else None
        )
        time.sleep(2.0)
        client.terminate()
        client.wait()
        sampler.stopping.set()
        sampler.join()
        result = json.loads(out_file.read_text())
        # Kept for a second look (the stack's directory goes): each lookup's time and
        # status, and the services' logs.
        kept = OUT / f"scale-{args.rows}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
        shutil.copytree(st.tmp / "logs", kept / "logs")
        shutil.copy(out_file, kept / "lookups.json")
        phases = [_phases(load["job"], db) for load in loads]
        log = (st.tmp / "logs" / "worker.log").read_text()
        versions = [int(load["job"]["dataset_version"]) for load in loads]
        live = datasets.read_active_sync(db)
        assert live is not None and live.version == versions[-1]
    removal = None if removed_at is None else (checked_at, removed_at + 1.0)
    windows = _windows(loads, phases, start_at, idle_live, removal)
    (kept / "windows.json").write_text(json.dumps(windows, indent=1))
    (kept / "store_io.json").write_text(json.dumps(sampler.store_io))
    return _report(args, loads, phases, checks, result, sampler, log, windows)


def _report(
    args: argparse.Namespace,
    loads: list[dict[str, Any]],
    phases: list[dict[str, float]],
    checks: list[tuple[int, int, int]],
    result: dict[str, Any],
    sampler: Sampler,
    log: str,
    windows: list[tuple[str, float, float]],
) -> str:
    mib = 1024 * 1024
    rows: list[list[object]] = []
    for n, (load, ph, check) in enumerate(zip(loads, phases, checks, strict=True), 1):
        exact, wrong, unanswered = check
        job = load["job"]
        rows.append(
            [
                f"file {n}",
                f"{load['uploaded'] - load['began']:.1f}",
                f"{ph.get('loading', 0):.1f}",
                f"{ph.get('writing', 0):.1f}",
                f"{ph.get('activating', 0):.1f}",
                f"{load['ended'] - load['began']:.1f}",
                f"{job['rows_loaded'] / max(1e-9, ph.get('loading', 0)):,.0f}",
                f"{job['rows_loaded'] / max(1e-9, ph.get('writing', 0)):,.0f}",
                f"{job.get('partitions_total')}",
                f"{exact:,} exact, {wrong} wrong, {unanswered} unanswered",
            ]
        )
    body = table(
        [
            "load",
            "upload s",
            "map s",
            "reduce s",
            "switch s",
            "time to live s",
            "map rows/s",
            "reduce rows/s",
            "partitions",
            "sampled check",
        ],
        rows,
    )
    parts = _partition_seconds(log)
    if parts:
        per = args.rows / max(1, len(parts) // args.files)
        body += (
            f"\n\nReduce tasks: {len(parts)} over {args.files} load(s), "
            f"mean {sum(parts) / len(parts):.2f} s "
            f"(max {max(parts):.2f} s) for ~{per:,.0f} rows each: "
            f"{per / (sum(parts) / len(parts)):,.0f} rows/s per worker process."
        )
    body += "\n\n" + table(
        [
            *("lookups", "requests", "rate /s", "p50 ms", "p99 ms", "errors"),
            *("most errors at (UTC)", "store disk reads MiB/s", "page cache GiB"),
        ],
        [
            [
                *(name, w["n"], f"{w['rate']:.0f}", f"{w['p50_ms']:.1f}", f"{w['p99_ms']:.1f}"),
                *(w["errors"], w["errors_at"], f"{reads / mib:.1f}", f"{cache / mib / 1024:.1f}"),
            ]
            for name, begin, end in windows
            for w in [_window(result, begin, end)]
            for reads, cache in [sampler.store_reads_per_s(begin, end)]
        ],
    )
    body += "\n\n" + table(
        ["peak (sampled checks excluded)", "value"],
        [[f"RSS {k}", f"{v / mib:,.0f} MiB"] for k, v in sorted(sampler.peak_rss.items())]
        + [[f"bytes {k}", f"{v / mib:,.0f} MiB"] for k, v in sorted(sampler.peak_bytes.items())],
    )
    size = Path(data_file(args.rows, seed=11, clean=True)).stat().st_size
    held = f", {args.hold_gib:g} GiB of memory held from the page cache" if args.hold_gib else ""
    body += (
        f"\n\n{args.rows:,} rows per file ({size / mib:,.0f} MiB), {args.processes} worker "
        f"processes, {args.rate:.0f} lookups/s (open loop, ids of every file) throughout"
        f"{held}. "
        "Phases from the job record (map = loading, reduce = writing, switch = activating "
        "incl. warm-up); time to live from the upload's first byte."
    )
    times = "twice" if args.files == 2 else "once"
    return report(f"Scale run: {args.rows:,} rows, {times}", body, 1, args.append_results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows in each file")
    parser.add_argument(
        "--files", type=int, choices=(1, 2), default=2, help="1: one load; 2: a second replaces it"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="lookups per second")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--sample", type=int, default=20_000, help="ids checked per switch")
    parser.add_argument(
        "--max-seconds", type=float, default=3600, help="longest run the lookups cover"
    )
    parser.add_argument(
        "--hold-gib",
        type=float,
        default=0.0,
        help="memory held away from the page cache for the run (see held_memory)",
    )
    add_common_args(parser, runs=1)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
