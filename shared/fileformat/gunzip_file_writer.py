"""Write a byte stream to a file on the shared volume, inflating it on the fly when it starts
with the gzip magic, so workers always split plain text.

Used by the API for uploads and by the worker for gzip files dropped in the inbox. The file
is written under a temporary dot-name, fsynced and renamed into place. What it may take is
bounded by ``StoreLimits``: the decompressed size follows the compressed size (a gzip bomb
stops early), and the shared volume keeps a margin of free space (the upload stops, and its
partial file goes, as soon as writing would eat into it).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from shared.fileformat.file_checks import GZIP_MAGIC
from shared.settings import Settings

FLUSH_BYTES = 1024 * 1024
PART_SUFFIX = ".part"
FREE_SPACE_CHECK_BYTES = 4 * FLUSH_BYTES  # statvfs costs microseconds; a few per 4 MiB


class StoredFileError(ValueError):
    """The stream cannot become a stored file (empty, corrupt or truncated gzip, too large,
    no room on the volume)."""

    def __init__(self, detail: str, too_large: bool = False, no_space: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.too_large = too_large
        self.no_space = no_space


@dataclass(frozen=True)
class StoreLimits:
    """``max_bytes``: stored (decompressed) size, absolute; a gzip stream may inflate to
    ``ratio`` times its compressed size, or ``floor`` bytes if that is more; writing stops
    when the volume's free space would fall below ``min_free_bytes``."""

    max_bytes: int
    ratio: float
    floor: int
    min_free_bytes: int
    sync_bytes: int = 0  # flush to disk every this many bytes written (0: at the end only)

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreLimits:
        return cls(
            max_bytes=settings.max_decompressed_bytes,
            ratio=settings.max_decompression_ratio,
            floor=settings.decompressed_floor_bytes,
            min_free_bytes=settings.min_free_bytes,
            sync_bytes=settings.upload_sync_bytes,
        )

    def decompressed_limit(self, compressed: int) -> int:
        return min(self.max_bytes, max(self.floor, int(self.ratio * compressed)))


def free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def no_space_error(directory: Path, needed: int, limits: StoreLimits) -> StoredFileError:
    return StoredFileError(
        f"not enough free space on the shared volume ({free_bytes(directory)} bytes free, "
        f"{needed} more needed, {limits.min_free_bytes} kept free); nothing was kept, retry "
        "later",
        no_space=True,
    )


def check_room(directory: Path, needed: int, limits: StoreLimits) -> None:
    """Refuse up front what cannot fit (``needed``: the size known before writing)."""
    directory.mkdir(parents=True, exist_ok=True)
    if free_bytes(directory) - needed < limits.min_free_bytes:
        raise no_space_error(directory, needed, limits)


def _host_prefix(role: str) -> str:
    return f".{role}-{socket.gethostname()}-"


def part_file_prefix(role: str) -> str:
    """Temporary names carry host and pid, so a restarted process can tell its own leftovers."""
    return f"{_host_prefix(role)}{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


STORE_FILE_ROLE = "inbox"  # the partial files of store_file (the drop folder's inflating)


def part_files(directory: Path, role: str) -> list[Path]:
    """Partial files of ``role`` on the volume, whichever host or process writes them."""
    if not directory.is_dir():
        return []
    return list(directory.glob(f".{role}-*{PART_SUFFIX}"))


def sweep_orphan_parts(directory: Path, role: str) -> list[Path]:
    """Remove partial files that processes of this host left when they died mid-write
    (killed, restarted); a live process's own partial files are left alone."""
    prefix = _host_prefix(role)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for path in directory.glob(f"{prefix}*{PART_SUFFIX}"):
        pid_text = path.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class GunzipFileWriter:
    """Blocking file writer; async callers run it in a thread. ``compressed_size``: the
    size of the whole stream when known in advance (Content-Length, a file's size); the
    decompressed limit follows it, or the bytes received so far when it is not known."""

    def __init__(
        self,
        directory: Path,
        limits: StoreLimits,
        role: str = "upload",
        compressed_size: int | None = None,
    ) -> None:
        check_room(directory, compressed_size or 0, limits)
        self.tmp_path = directory / f"{part_file_prefix(role)}{uuid.uuid4().hex}{PART_SUFFIX}"
        self._file = self.tmp_path.open("wb")
        self.limits = limits
        self.compressed_size = compressed_size or 0
        self.bytes_in = 0
        self.bytes_written = 0
        self._checked_at = 0
        self._synced_at = 0
        self.compressed: bool | None = None  # decided by the first two bytes
        self._head = b""
        self._gunzip: zlib._Decompress | None = None

    def write_many(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.bytes_in += len(piece)
            self._write(piece)

    def _write(self, data: bytes) -> None:
        if self.compressed is None:
            self._head += data
            if len(self._head) < len(GZIP_MAGIC):
                return
            data, self._head = self._head, b""
            self.compressed = data.startswith(GZIP_MAGIC)
            if self.compressed:
                self._gunzip = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        if self._gunzip is None:
            self._store(data)
        else:
            self._inflate(data)

    def _inflate(self, data: bytes) -> None:
        while data:
            assert self._gunzip is not None
            if self._gunzip.eof:  # another gzip member follows (concatenated .gz files)
                data = self._gunzip.unused_data + data
                self._gunzip = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            try:
                out = self._gunzip.decompress(data, FLUSH_BYTES)
            except zlib.error as exc:
                raise StoredFileError(f"the gzip data is corrupt ({exc})") from exc
            self._store(out)
            data = self._gunzip.unconsumed_tail
            if self._gunzip.eof and self._gunzip.unused_data:
                data = self._gunzip.unused_data + data
                self._gunzip = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)

    def _limit(self) -> tuple[int, str]:
        limits = self.limits
        if not self.compressed:
            return limits.max_bytes, ""
        compressed = max(self.compressed_size, self.bytes_in)
        limit = limits.decompressed_limit(compressed)
        if limit == limits.max_bytes:
            return limit, ""
        return limit, (
            f" ({limits.ratio:g} times the {compressed} compressed bytes, at least "
            f"{limits.floor}: MAX_DECOMPRESSION_RATIO, DECOMPRESSED_FLOOR_BYTES)"
        )

    def _store(self, data: bytes) -> None:
        self.bytes_written += len(data)
        limit, why = self._limit()
        if self.bytes_written > limit:
            kind = "decompressed " if self.compressed else ""
            raise StoredFileError(
                f"the {kind}file is larger than the limit of {limit} bytes{why}",
                too_large=True,
            )
        if self.bytes_written - self._checked_at >= FREE_SPACE_CHECK_BYTES:
            self._checked_at = self.bytes_written
            check_room(self.tmp_path.parent, 0, self.limits)
        try:
            self._file.write(data)
            if (
                self.limits.sync_bytes
                and self.bytes_written - self._synced_at >= self.limits.sync_bytes
            ):
                # Written back as it comes, not all at the end: behind a 4 GiB file's final
                # fsync the store's journaled writes waited up to ~0.7 s (bench.upload_sync).
                self._synced_at = self.bytes_written
                self._file.flush()
                os.fdatasync(self._file.fileno())
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise no_space_error(self.tmp_path.parent, len(data), self.limits) from exc
            raise

    def finish(self, final_path: Path) -> int:
        if self.compressed is None and self._head:  # a one-byte file
            self.compressed = False
            self._store(self._head)
        if self._gunzip is not None and not self._gunzip.eof:
            raise StoredFileError("the gzip data is truncated (the stream ends early)")
        if self.bytes_written == 0:
            raise StoredFileError("the uploaded file is empty")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise no_space_error(self.tmp_path.parent, 0, self.limits) from exc
            raise
        self._file.close()
        os.replace(self.tmp_path, final_path)
        return self.bytes_written

    def abort(self) -> None:
        try:
            self._file.close()  # flushes what is buffered: may fail again on a full volume
        except OSError:
            pass
        finally:
            self.tmp_path.unlink(missing_ok=True)


TOUCH_EVERY_PIECES = 64


def store_file(
    source: BinaryIO, final_path: Path, limits: StoreLimits, touch: Path | None = None
) -> tuple[int, bool]:
    """Copy the open ``source`` to ``final_path`` through the writer; (bytes stored, was
    gzip). Read through the handle, never a name that could be swapped meanwhile; ``touch``
    is the name whose mtime says the copy is still in use."""
    writer = GunzipFileWriter(
        final_path.parent,
        limits,
        role=STORE_FILE_ROLE,
        compressed_size=os.fstat(source.fileno()).st_size,
    )
    try:
        for count, piece in enumerate(iter(lambda: source.read(FLUSH_BYTES), b"")):
            writer.write_many([piece])
            if touch is not None and count % TOUCH_EVERY_PIECES == 0:
                # Still in use: sweeps of stale files in uploads/ go by mtime.
                os.utime(touch)
        return writer.finish(final_path), bool(writer.compressed)
    except BaseException:
        writer.abort()
        raise
