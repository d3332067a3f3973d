"""Runs the dev store (secantusd) with a shorter GIL switch interval.

The dev store serves every connection from a Python thread of one process. While a load's
insert threads run Python code, a lookup's thread gets the GIL back only when the holder
blocks or the switch interval (5 ms by default) runs out, and it needs the GIL several times
per read: behind two busy writers, reads waited tens of milliseconds (the reduce's p99 28-38
ms against 13-17 ms at 0.5 ms here: bench/RESULTS.md "The dev store's GIL switch
interval"). mongod has no such lock: its reads and writes run on threads of their own. So
the stand-in is run closer to what it stands for; it is never used in production.

    python -m devstack.dev_store SWITCH_INTERVAL_MS SECANTUSD_ARGS...
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    interval_ms, *args = argv
    sys.setswitchinterval(float(interval_ms) / 1000)
    from secantus.cli import main as secantusd

    sys.argv = ["secantusd-py", *args]
    result = secantusd()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
