"""What an upload costs the API process that also serves lookups: its CPU seconds per GiB
stored, the upload's rate, and the lookups' latency while it runs against just before.

One API process (as `make run` starts it), no worker (the job stays queued: only the upload
is measured), nothing live (a lookup is answered by the API alone, so its latency is the
API's event loop). An open-loop client sends lookups throughout; the bench uploads
``--gib`` GiB of a generated file over loopback, as fast as the API takes it, once per run.
Cases are settings of the API (``--env CASE:NAME=VALUE``); code variants are compared by
running the bench on each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import add_common_args, interleave, medians, quantile_ms, report, table
from bench.parse import data_file
from bench.stack import stack

IDLE_S = 5.0
RATE = 200.0
CLIENT_START_S = 3.0


def _upload_file(gib: float) -> Path:
    """The 10M-row bench file repeated whole until at least ``gib`` GiB (ids repeat: no
    worker loads it), made once."""
    source = Path(data_file(10_000_000, seed=11, clean=True))
    copies = max(1, -(-int(gib * 2**30) // source.stat().st_size))
    out = source.with_name(f"upload-{copies}x-{source.name}")
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        with tmp.open("wb") as w:
            for _ in range(copies):
                with source.open("rb") as f:
                    shutil.copyfileobj(f, w, 16 * 2**20)
        tmp.rename(out)
    return out


def _window(result: dict[str, Any], begin: float, end: float) -> tuple[float, float, int]:
    lat = sorted(
        result["latency"][i]
        for i, t in enumerate(result["due"])
        if begin <= t < end and result["status"][i] != 0
    )
    return quantile_ms(lat, 0.5), quantile_ms(lat, 0.99), len(lat)


def _measure(path: Path, env: dict[str, str]) -> dict[str, float]:
    with stack(api=True, workers=0, extra_env=env) as st:
        assert st.api_url is not None and st.api is not None and st.api.proc is not None
        api = psutil.Process(st.api.proc.pid)
        keys_file = st.tmp / f"keys-{uuid.uuid4().hex[:6]}"
        seconds = IDLE_S + 120
        keys_file.write_text("".join(f"{uuid.uuid4()}\n" for _ in range(int(RATE * seconds))))
        out_file = keys_file.with_suffix(".json")
        start_at = time.time() + CLIENT_START_S
        client = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.open_loop", st.api_url, str(keys_file)),
                *(f"{RATE:.0f}", "8", f"{start_at:.6f}", str(out_file)),
            ]
        )
        time.sleep(CLIENT_START_S + IDLE_S)
        cpu = api.cpu_times()
        began = time.time()
        with httpx.Client(base_url=st.api_url, timeout=600) as http, path.open("rb") as f:
            r = http.post("/add-promotions/", files={"file": (path.name, f, "text/csv")})
        ended = time.time()
        after = api.cpu_times()
        # A refusal is a result (503 when the store could not record the job in time
        # under the upload's writes): counted, not a crash of the bench.
        refused = r.status_code != 202
        if refused:
            print(f"  refused: {r.status_code} {r.text}", file=sys.stderr)
        time.sleep(1.0)
        client.terminate()
        client.wait()
        result = json.loads(out_file.read_text())
    gib = path.stat().st_size / 2**30
    idle = _window(result, began - IDLE_S, began)
    during = _window(result, began, ended)
    return {
        "cpu_s_per_gib": (after.user + after.system - cpu.user - cpu.system) / gib,
        "mib_per_s": path.stat().st_size / 2**20 / (ended - began),
        "idle_p50_ms": idle[0],
        "idle_p99_ms": idle[1],
        "p50_ms": during[0],
        "p99_ms": during[1],
        "lookups": during[2],
        "refused": float(refused),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="size of the upload")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="CASE:NAME=VALUE",
        help="an API setting for a case (a new case name makes a new case); repeatable",
    )
    add_common_args(parser, runs=3)
    args = parser.parse_args(argv)
    cases: dict[str, dict[str, str]] = {"as configured": {}}
    for item in args.env:
        case, setting = item.split(":", 1)
        name, value = setting.split("=", 1)
        cases.setdefault(case, {})[name] = value
    path = _upload_file(args.gib)
    samples = interleave(
        args.runs, [(name, partial(_measure, path, env)) for name, env in cases.items()]
    )
    rows = []
    for name, runs in samples.items():
        m = medians(runs)
        rows.append(
            [
                name,
                f"{m['cpu_s_per_gib']:.2f}",
                f"{m['mib_per_s']:.0f}",
                f"{m['idle_p50_ms']:.2f} / {m['idle_p99_ms']:.1f}",
                f"{m['p50_ms']:.2f} / {m['p99_ms']:.1f}",
                f"{m['lookups']:.0f}",
                f"{sum(r['refused'] for r in runs):.0f} of {len(runs)}",
            ]
        )
    body = table(
        [
            "case",
            "API CPU s per GiB",
            "upload MiB/s",
            "lookups before p50 / p99 ms",
            "lookups during p50 / p99 ms",
            "lookups during",
            "uploads refused",
        ],
        rows,
    )
    settings = "; ".join(
        f"{name}: {' '.join(f'{k}={v}' for k, v in env.items())}"
        for name, env in cases.items()
        if env
    )
    body += (
        f"\n\n{path.stat().st_size / 2**30:.2f} GiB uploaded (multipart, loopback) to one API "
        f"process, no worker, nothing live; {RATE:.0f} lookups/s open loop throughout "
        f"(answered by the API alone); before: the {IDLE_S:g} s just before the upload. "
        f"Medians of the runs. {settings}"
    )
    report("Upload cost in the API process", body, args.runs, args.append_results)


if __name__ == "__main__":
    main()
