"""Split a file into byte ranges that start right after a newline, without copying it.

Workers on other hosts read their range from the shared volume, so a plan is just a list of
``(start, end)`` offsets. A line longer than the chunk size makes its chunk longer; no line is
ever cut.
"""

from __future__ import annotations

from typing import BinaryIO

_SCAN = 64 * 1024
# Longer than any valid row by far; a chunk may grow by this much past its nominal size.
# Without a bound, a file with no LF at all (old Mac CR-only line endings) would be one
# chunk, read whole into one worker's memory.
MAX_LINE_BYTES = 64 * 1024 * 1024


# Small files still spread over every worker process (at least this many chunks), large
# ones use the configured size; a chunk is never below 1 MiB (per-task overhead) unless
# configured so, and never so small that a job has more than MAX_CHUNKS of them (the job
# document lists the chunks counted, within MongoDB's 16 MB document limit).
TARGET_CHUNKS = 64
MIN_CHUNK_BYTES = 1024 * 1024
MAX_CHUNKS = 100_000


def chunk_size_for(file_size: int, configured: int) -> int:
    size = min(configured, max(MIN_CHUNK_BYTES, file_size // TARGET_CHUNKS))
    return max(size, -(-file_size // MAX_CHUNKS), 1)


class LineTooLong(ValueError):
    """No line break where one must be; the message is shown to the user."""


def _next_line_start(f: BinaryIO, pos: int, size: int) -> int:
    """The first offset >= pos that starts a line (or ``size``)."""
    if pos >= size:
        return size
    f.seek(pos - 1)
    base = pos - 1
    while True:
        block = f.read(_SCAN)
        if not block:
            return size
        nl = block.find(b"\n")
        if nl >= 0:
            return min(base + nl + 1, size)
        base += len(block)
        if base - pos > MAX_LINE_BYTES:
            raise LineTooLong(
                f"no line break (LF) in the {MAX_LINE_BYTES // (1024 * 1024)} MiB after byte "
                f"{pos}; lines must end with LF or CRLF (CR-only line endings are not supported)"
            )


def plan_chunks(f: BinaryIO, size: int, chunk_size: int) -> list[tuple[int, int]]:
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    chunks: list[tuple[int, int]] = []
    start = 0
    while start < size:
        end = _next_line_start(f, start + chunk_size, size)
        chunks.append((start, end))
        start = end
    return chunks


def read_range(f: BinaryIO, start: int, end: int) -> bytes:
    f.seek(start)
    return f.read(end - start)
