"""Cheap look at the start of a file so that a file which is plainly not a promotions CSV
fails in a second with a clear reason, instead of after loading every chunk."""

from __future__ import annotations

from shared.fileformat.promotion_rows import ChunkStats, parse_chunk

SNIFF_BYTES = 64 * 1024
GZIP_MAGIC = b"\x1f\x8b"


def sniff_problem(
    sample: bytes, is_whole_file: bool, stats: ChunkStats | None = None
) -> str | None:
    """The reason the file is plainly not a promotions CSV, or None. ``stats`` (the rows of
    the sample as judged, their rejects included) lets a refused file's report list them."""
    if not sample:
        return "the file is empty"
    if sample.startswith(GZIP_MAGIC):
        return "the file is gzip-compressed inside; upload a CSV file or one gzip layer"
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "the file is UTF-16 encoded; promotions files must be UTF-8"
    if b"\x00" in sample:
        return "the file is binary (it contains NUL bytes), not a CSV text file"
    if b"\n" not in sample and b"\r" in sample:
        return "the file has CR-only line endings (old Mac format); use LF or CRLF"
    if not is_whole_file:
        cut = sample.rfind(b"\n")
        if cut < 0:
            return None  # one very long first line: the loader reports it with its line number
        sample = sample[: cut + 1]
    stats = stats if stats is not None else ChunkStats()
    for _ in parse_chunk(sample, 0, 1 << 30, stats):
        pass
    if stats.rows_read == 0 and is_whole_file:
        return "the file has no data rows"
    if stats.rows_read and stats.rows_valid == 0:
        line, reason = stats.rejects[0]
        return (
            f"none of the first {stats.rows_read} rows is valid "
            f"(line {line}: {reason}); expected rows like "
            "'d018ef0b-dbd9-48f1-ac1a-eb4d90e57118,60.683466,2018-08-04 05:32:31 +0200 CEST'"
        )
    return None
