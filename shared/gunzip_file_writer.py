"""Write a byte stream to a file on the shared volume, inflating it on the fly when it starts
with the gzip magic, so workers always split plain text.

Used by the API for uploads and by the worker for gzip files dropped in the inbox. The file
is written under a temporary dot-name, fsynced and renamed into place; the decompressed size
is bounded (a gzip bomb stops at the limit).
"""

from __future__ import annotations

import os
import socket
import uuid
import zlib
from pathlib import Path

from shared.file_checks import GZIP_MAGIC

FLUSH_BYTES = 1024 * 1024
PART_SUFFIX = ".part"


class StoredFileError(ValueError):
    """The stream cannot become a stored file (empty, corrupt or truncated gzip, too large)."""

    def __init__(self, detail: str, too_large: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.too_large = too_large


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
    """Blocking file writer; async callers run it in a thread."""

    def __init__(self, directory: Path, max_bytes: int, role: str = "upload") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.tmp_path = directory / f"{part_file_prefix(role)}{uuid.uuid4().hex}{PART_SUFFIX}"
        self._file = self.tmp_path.open("wb")
        self.max_bytes = max_bytes
        self.bytes_written = 0
        self.compressed: bool | None = None  # decided by the first two bytes
        self._head = b""
        self._gunzip: zlib._Decompress | None = None

    def write_many(self, pieces: list[bytes]) -> None:
        for piece in pieces:
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

    def _store(self, data: bytes) -> None:
        self.bytes_written += len(data)
        if self.bytes_written > self.max_bytes:
            kind = "decompressed " if self.compressed else ""
            raise StoredFileError(
                f"the {kind}file is larger than the limit of {self.max_bytes} bytes",
                too_large=True,
            )
        self._file.write(data)

    def finish(self, final_path: Path) -> int:
        if self.compressed is None and self._head:  # a one-byte file
            self.compressed = False
            self._store(self._head)
        if self._gunzip is not None and not self._gunzip.eof:
            raise StoredFileError("the gzip data is truncated (the stream ends early)")
        if self.bytes_written == 0:
            raise StoredFileError("the uploaded file is empty")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp_path, final_path)
        return self.bytes_written

    def abort(self) -> None:
        self._file.close()
        self.tmp_path.unlink(missing_ok=True)


TOUCH_EVERY_PIECES = 64


def store_file(source: Path, final_path: Path, max_bytes: int) -> tuple[int, bool]:
    """Copy ``source`` to ``final_path`` through the writer; (bytes stored, was gzip)."""
    writer = GunzipFileWriter(final_path.parent, max_bytes, role="inbox")
    try:
        with source.open("rb") as f:
            for count, piece in enumerate(iter(lambda: f.read(FLUSH_BYTES), b"")):
                writer.write_many([piece])
                if count % TOUCH_EVERY_PIECES == 0:
                    # Still in use: sweeps of stale files in uploads/ go by mtime.
                    os.utime(source)
        return writer.finish(final_path), bool(writer.compressed)
    except BaseException:
        writer.abort()
        raise
