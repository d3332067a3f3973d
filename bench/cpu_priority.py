"""Does the worker's lower priority reach a process in another session? (worker/cpu_priority.py)

Two CPU-bound "workers" (one per core, each started in a session of its own, as ``make
run`` starts services) beside a "reader" in another session that, every 4 ms, does 2 ms of
CPU work (a request's share of the API, Redis or the store) and measures how much later than
2 ms after it was due it finished: the wait a lookup has at every hop while a load's map
keeps the cores busy. Cases side by side in one run, alternated: nobody busy; workers at
niceness 0; workers niced alone (what the earlier niceness runs measured); workers niced with
their session's scheduling group (``lower_priority``).

    .venv/bin/python -m bench.cpu_priority [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, quantile_ms, table

HOG = """
import sys, time
from pathlib import Path
from worker.cpu_priority import lower_priority
niceness, group = int(sys.argv[1]), Path(sys.argv[2])
lower_priority(niceness, group)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    pass
"""

PROBE = """
import sys, time
late = []
start = time.perf_counter()
for i in range(int(sys.argv[1])):
    due = start + i * 0.004
    time.sleep(max(0.0, due - time.perf_counter()))
    t = time.process_time()
    while time.process_time() - t < 0.002:  # 2 ms of CPU, a request's work
        pass
    late.append(max(0.0, time.perf_counter() - due - 0.002))
print(" ".join(f"{x:.6f}" for x in late))
"""

CASES = {
    "nothing busy": None,
    "workers at niceness 0": (0, True),
    "workers niced 10, process only": (10, False),
    "workers niced 10 with their group": (10, True),
}


def _case(spec: tuple[int, bool] | None, samples: int, dummy: Path) -> list[float]:
    hogs = []
    if spec is not None:
        niceness, group = spec
        target = "/proc/self/autogroup" if group else str(dummy)
        for _ in range(os.cpu_count() or 2):
            hogs.append(
                subprocess.Popen(
                    [sys.executable, "-c", HOG, str(niceness), target, "60"],
                    start_new_session=True,
                )
            )
        time.sleep(1.0)  # both cores busy
    try:
        out = subprocess.run(
            [sys.executable, "-c", PROBE, str(samples)],
            check=True,
            capture_output=True,
            text=True,
            start_new_session=True,
        ).stdout
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    return sorted(float(x) for x in out.split())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args(argv)
    if not Path("/proc/self/autogroup").exists():
        print("this kernel has no autogroup scheduling: niceness alone ranks processes")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dummy = Path(tmp) / "autogroup"
        dummy.write_text("/autogroup-0 nice 0\n")
        for r in range(1, args.rounds + 1):
            for name, spec in CASES.items():
                late = _case(spec, args.samples, dummy)
                rows.append(
                    [
                        f"{name}, round {r}",
                        f"{quantile_ms(late, 0.5):.3f}",
                        f"{quantile_ms(late, 0.99):.3f}",
                        f"{late[-1] * 1000:.1f}",
                    ]
                )
    print(f"- command: `.venv/bin/python -m bench.cpu_priority --rounds {args.rounds}`")
    print(f"- machine: {machine()}\n")
    print(table(["case", "late p50 ms", "late p99 ms", "late max ms"], rows))


if __name__ == "__main__":
    main()
