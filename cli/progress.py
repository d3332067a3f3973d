"""Progress on stderr: rich bars on a terminal, plain timestamped lines elsewhere (logs of
cron jobs and CI), like ``mongoimport``'s. stdout keeps only results, for scripts."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import Any, BinaryIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from shared.dataset.lifecycle import FINISHED, SUCCEEDED


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    if s < 60:
        return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s"
    minutes, seconds = divmod(round(s), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(width * min(max(fraction, 0.0), 1.0))
    return f"[{'#' * filled}{'.' * (width - filled)}]"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_summary(job: dict[str, Any]) -> str:
    """``4/10 chunks  40,000 rows  5,000 rows/s  ETA 12s  3 rejected``"""
    parts = []
    if job.get("chunks_total") and job.get("status") not in FINISHED:
        parts.append(f"{job.get('chunks_done', 0)}/{job['chunks_total']} chunks")
        if job.get("phase") == "writing":
            parts.append(f"{job.get('partitions_done', 0)}/{job['partitions_total']} partitions")
    parts.append(f"{job.get('rows_loaded') or 0:,} rows")
    if job.get("rows_per_s") is not None:
        parts.append(f"{job['rows_per_s']:,.0f} rows/s")
    if job.get("eta_s") is not None:
        parts.append(f"ETA {human_seconds(job['eta_s'])}")
    parts.append(f"{job.get('rows_rejected') or 0:,} rejected")
    return "  ".join(parts)


class CountingReader:
    """A file whose reads report progress (httpx reads multipart files in 64 KiB pieces and
    sizes them with ``fileno``)."""

    def __init__(self, file: BinaryIO, on_read: Any) -> None:
        self.file = file
        self.on_read = on_read
        self.done = 0

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.done += len(data)
        self.on_read(self.done)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self.file.seek(offset, whence)
        self.done = position
        return position

    def tell(self) -> int:
        return self.file.tell()

    def fileno(self) -> int:
        return self.file.fileno()


class Reporter:
    """One per command: chooses bars or lines once, from whether stderr is a terminal."""

    def __init__(self, interval_s: float = 1.0, terminal: bool | None = None) -> None:
        self.interval_s = interval_s
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.console = Console(stderr=True, force_terminal=self.terminal or None)
        self._last_line = 0.0
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def _line(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_line >= self.interval_s:
            self._last_line = now
            print(f"{_stamp()}  {text}", file=sys.stderr, flush=True)

    # -- upload -----------------------------------------------------------------------------
    def upload_started(self, name: str, total: int) -> None:
        self._upload = (name, total, time.monotonic())
        self._upload_last = -1
        if self.terminal:
            self._progress = Progress(
                TextColumn("uploading [bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(name, total=total)
        else:
            self._line(f"uploading {name}  {human_bytes(total)}", force=True)

    def upload_progress(self, done: int) -> None:
        name, total, started = self._upload
        if done == self._upload_last:
            return  # the read that finds the end of the file
        self._upload_last = done
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=done)
            return
        elapsed = time.monotonic() - started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else None
        pct = 100.0 * done / total if total else 100.0
        self._line(
            f"{_bar(done / total if total else 1)}  {name}  {human_bytes(done)}/"
            f"{human_bytes(total)} ({pct:.1f}%)  {human_bytes(rate)}/s  ETA {human_seconds(eta)}",
            force=done >= total,
        )

    def upload_done(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -- job --------------------------------------------------------------------------------
    def job_started(self, job_id: str) -> None:
        if self.terminal:
            self._progress = Progress(
                TextColumn("job {task.fields[job]} [bold]{task.description:<10}"),
                BarColumn(),
                TextColumn("{task.fields[summary]}"),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("queued", total=None, job=job_id[:8], summary="")

    def job_progress(self, job: dict[str, Any]) -> None:
        phase = str(job.get("phase"))
        # One step per chunk parsed and per partition written.
        total = (job.get("chunks_total") or 0) + (job.get("partitions_total") or 0)
        done = (job.get("chunks_done") or 0) + (job.get("partitions_done") or 0)
        if self._progress is not None and self._task is not None:
            finished = job.get("status") in FINISHED
            self._progress.update(
                self._task,
                description=str(job.get("status")) if finished else phase,
                total=total or (1 if finished else None),
                completed=done or (1 if finished else 0),
                summary=job_summary(job),
            )
            return
        fraction = done / total if total else 0.0
        if job.get("status") == SUCCEEDED:
            fraction = 1.0
        self._line(
            f"{_bar(fraction)}  job {job['job_id'][:8]}  {phase:<10}  {job_summary(job)}",
            force=job.get("status") in FINISHED,
        )

    def job_done(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
