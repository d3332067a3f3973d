"""Which files in the drop folder are complete, and claiming one of them exactly once.

Partners write under a temporary name (a leading ``.``, or ``.part`` / ``.tmp`` at the end)
and rename the file into place when it is complete. As a safety net for writers that do not,
a file is taken only when its size and mtime hold still between two looks and it is at least
``settle_s`` old. Claiming is an ``os.rename`` into uploads/ (same filesystem): atomic, so
when several scans race for a file exactly one wins.

A claim leaves a marker in uploads/ (``.inbox-<job id>.name``, holding the file's name in the
inbox) until its job is recorded: a worker killed mid-claim (out of memory, a deploy's kill)
leaves the partner's only copy under a server-generated name, and the marker is how a later
scan finds it and gives it back instead of letting the sweep of old uploads delete it.

Names are whatever the partner's system wrote: bytes that need not be UTF-8 and may hold
control characters. The marker keeps them as bytes (the file goes back under exactly its
name); what is shown or stored in a job record is the escaped form (``shared.infra.safe_text``).
A claimed name that turns out to be no plain file of its own (a symbolic link, a hard link,
a FIFO swapped in after the scan looked) goes to ``<data_dir>/quarantine/`` with a reason.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from shared.infra.safe_text import escape_name

IGNORED_SUFFIXES = (".part", ".tmp")
SECOND_LOOK_MAX_S = 1.0
CLAIM_PREFIX = ".inbox-"
MARKER_SUFFIX = ".name"


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
            except OSError:
                continue  # claimed by a racing scan since it was listed, or unreadable
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


def claimed_path(uploads: Path, job_id: str) -> Path:
    return uploads / f"{CLAIM_PREFIX}{job_id}.claimed"


def marker_path(uploads: Path, job_id: str) -> Path:
    return uploads / f"{CLAIM_PREFIX}{job_id}{MARKER_SUFFIX}"


def stored_path(uploads: Path, job_id: str) -> Path:
    return uploads / f"{job_id}.csv"


def mark_claim(uploads: Path, job_id: str, name: str) -> Path:
    """Written before the claim's rename, so no moment leaves the file unaccounted for."""
    marker = marker_path(uploads, job_id)
    tmp = marker.with_name(f"{marker.name}.tmp")
    tmp.write_bytes(os.fsencode(name))  # any name, UTF-8 or not, round-trips
    tmp.replace(marker)
    return marker


def marked_name(marker: Path) -> str:
    """The inbox name a marker holds (the file system's str form of its bytes)."""
    return os.fsdecode(marker.read_bytes())


def quarantine(claimed: Path, directory: Path, job_id: str, name: str, reason: str) -> Path:
    """Move a claimed name that is no plain file aside, with a note saying why. ``rename``
    moves a link or FIFO itself, never what it points to; nothing is opened or followed."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / job_id
    os.rename(claimed, target)
    note = directory / f"{job_id}.reason.txt"
    note.write_text(f"name: {escape_name(name)}\nreason: {reason}\n", encoding="utf-8")
    return target


def marked_claims(uploads: Path) -> list[str]:
    """Job ids of the claims whose job is not known to be recorded yet."""
    if not uploads.is_dir():
        return []
    return [
        path.name[len(CLAIM_PREFIX) : -len(MARKER_SUFFIX)]
        for path in uploads.glob(f"{CLAIM_PREFIX}*{MARKER_SUFFIX}")
    ]


def claim_files(uploads: Path, job_id: str) -> list[Path]:
    return [
        marker_path(uploads, job_id),
        claimed_path(uploads, job_id),
        stored_path(uploads, job_id),
    ]


def last_touched(paths: list[Path]) -> float:
    """The newest mtime among the paths that exist (0 when none does)."""
    newest = 0.0
    for path in paths:
        try:
            newest = max(newest, path.stat().st_mtime)
        except FileNotFoundError:
            continue
    return newest
