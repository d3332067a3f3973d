"""Which files in the drop folder are complete, and claiming one of them exactly once.

Partners write under a temporary name (a leading ``.``, or ``.part`` / ``.tmp`` at the end)
and rename the file into place when it is complete. As a safety net for writers that do not,
a file is taken only when its size and mtime hold still between two looks and it is at least
``settle_s`` old. Claiming is an ``os.rename`` into uploads/ (same filesystem): atomic, so
when several scans race for a file exactly one wins.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

IGNORED_SUFFIXES = (".part", ".tmp")
SECOND_LOOK_MAX_S = 1.0


def is_ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES)


def _look(inbox: Path) -> dict[str, tuple[int, int]]:
    seen: dict[str, tuple[int, int]] = {}
    with os.scandir(inbox) as entries:
        for entry in entries:
            if is_ignored(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # claimed by a racing scan since it was listed
            seen[entry.name] = (st.st_size, st.st_mtime_ns)
    return seen


def ready_files(inbox: Path, settle_s: float) -> list[Path]:
    """Complete-looking files, oldest first (versions then follow the order they arrived)."""
    oldest_mtime_ns = time.time_ns() - int(settle_s * 1e9)
    first = _look(inbox)
    if not first:
        return []
    time.sleep(min(settle_s, SECOND_LOOK_MAX_S))
    second = _look(inbox)
    ready = [
        (mtime, name)
        for name, (size, mtime) in second.items()
        if first.get(name) == (size, mtime) and mtime <= oldest_mtime_ns
    ]
    return [inbox / name for _, name in sorted(ready)]


def claim(path: Path, target: Path) -> bool:
    """Move ``path`` to ``target``; False if another scan took it first."""
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return False
    return True
