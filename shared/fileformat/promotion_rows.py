"""The partner CSV format: one row is ``id,price,expiration_date``, no header, fields
optionally quoted as in RFC 4180 (what ``csv.writer`` and spreadsheet exports write).

Rows are validated with specific reasons (shown to users with their line numbers) and
encoded straight to BSON bytes: the chunk loader is the hot path of ingestion, and building
BSON by hand skips a per-row dict and a generic encoder.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from shared.fileformat.bucket_layout import encode_element
from shared.fileformat.fast_parser import (
    encode_run,
    encode_run_elements,
    fast_run_end,
    quoted_run_end,
)

MAX_ID_LENGTH = 64
MAX_LINE_LENGTH = 1024
MAX_REJECTS_KEPT = 100
HEADER = "id,price,expiration_date"
_HEADER_NAMES = HEADER.split(",")
_BOM = b"\xef\xbb\xbf"

ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
_ID_RE = re.compile(ID_PATTERN)
# ASCII only: ``\d`` would also take Arabic-Indic digits, which ``int``/``float`` accept.
_PRICE_RE = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
# The grammar of docs/file-format.md: date, ' ' or 'T', a time with a one- or two-digit hour
# (LibreOffice writes '7:38:51'), up to 9 fraction digits, then an optional zone: an offset
# ('Z', '+HH', '+HHMM', '+HH:MM'), attached or after a space, optionally followed by ' NAME'
# (Go's '+0000 UTC'); or a name alone where it is unambiguous (' UTC', ' GMT': Ruby). Without
# a zone the time is as written.
_DATE_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[ T](\d{1,2}):(\d{2}):(\d{2})(?:\.\d{1,9})?"
    r"(?: ?(?:Z|[+-](\d{2})(?::?(\d{2}))?)(?: [A-Za-z0-9+_/-]{1,32})?| (?:UTC|GMT))?",
    re.ASCII,
)
# The grammar as users read it (ABNF), written once: docs/file-format.md shows this block (a
# test checks it) and the OpenAPI description of the upload includes it.
DATE_GRAMMAR = """\
expiration_date = date ("T" / " ") time [fraction] [zone]
date            = 4DIGIT "-" 2DIGIT "-" 2DIGIT          ; YYYY-MM-DD
time            = 1*2DIGIT ":" 2DIGIT ":" 2DIGIT        ; H:MM:SS or HH:MM:SS
fraction        = "." 1*9DIGIT                          ; up to nanoseconds
zone            = [" "] offset [" " zone-name]          ; 'Z', '+00', ' +0200 CEST', ...
                / " UTC" / " GMT"                       ; a name alone: only these two
offset          = "Z" / ("+" / "-") 2DIGIT [[":"] 2DIGIT] ; Z, ±HH, ±HHMM, ±HH:MM
zone-name       = 1*32(ALPHA / DIGIT / "+" / "_" / "/" / "-")
"""
# A date that would be valid but for a zone name with no offset before it ('... 07:38:51 CET').
_BARE_NAME_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[ T]\d{1,2}:\d{2}:\d{2}(?:\.\d{1,9})? ([A-Za-z][A-Za-z0-9+_/-]{0,31})",
    re.ASCII,
)
DATE_FORMS = (
    "'YYYY-MM-DD[ T]H:MM:SS[.fraction][zone]', zone being Z, +HH, +HHMM or +HH:MM "
    "(attached or after a space, optionally followed by a zone name) or UTC/GMT alone"
)
# RFC 4180 quoted field: "..." with "" for a quote inside (unrolled: no nested quantifier).
_QUOTED_FIELD_RE = re.compile(r'[ \t]*"([^"]*(?:""[^"]*)*)"[ \t]*')
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

_i32 = struct.Struct("<i").pack
_f64 = struct.Struct("<d").pack
_i64 = struct.Struct("<q").pack


class RowError(ValueError):
    """A row that cannot be loaded; the message is shown to the user as the reason."""


def _show(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")


def is_valid_id(value: str) -> bool:
    return _ID_RE.fullmatch(value) is not None


def check_id(value: str) -> None:
    if not value:
        raise RowError("id is empty")
    if len(value) > MAX_ID_LENGTH:
        raise RowError(f"id is longer than {MAX_ID_LENGTH} characters ({len(value)})")
    if _ID_RE.fullmatch(value) is None:
        raise RowError(f"id {_show(value)} has characters other than A-Z, a-z, 0-9, '_' and '-'")


def parse_price(value: str) -> float:
    if not value:
        raise RowError("price is empty")
    if _PRICE_RE.fullmatch(value) is None:
        if value.startswith("-") and _PRICE_RE.fullmatch(value[1:]):
            raise RowError(f"price {_show(value)} is negative")
        if value.lstrip("+-").lower() in ("nan", "inf", "infinity"):
            raise RowError(f"price {_show(value)} is not a finite number")
        raise RowError(f"price {_show(value)} is not a decimal number")
    price = float(value)
    if math.isinf(price):
        raise RowError(f"price {_show(value)} is out of range")
    return price


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def check_expiration_date(value: str) -> None:
    m = _DATE_RE.fullmatch(value)
    if m is None:
        bare = _BARE_NAME_RE.fullmatch(value)
        if bare is not None:
            raise RowError(
                f"expiration_date {_show(value)} has the zone name {_show(bare.group(1))} "
                "without an offset: a name alone is ambiguous (CST is UTC-6 in America and "
                "UTC+8 in China) and only UTC, GMT and Z are accepted alone; write the offset "
                "before the name, e.g. '2027-12-01 07:38:51 +0100 CET'"
            )
        raise RowError(f"expiration_date {_show(value)} is not {DATE_FORMS}")
    g = m.groups()
    year, month, day = int(g[0]), int(g[1]), int(g[2])
    hh, mi, ss = int(g[3]), int(g[4]), int(g[5])
    off_h, off_m = g[6], g[7]
    if not 1 <= month <= 12:
        raise RowError(f"expiration_date {_show(value)} has month {month}")
    days = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month - 1]
    if year == 0 or not 1 <= day <= days:  # year 0000 does not exist (1 BC precedes 1 AD)
        raise RowError(f"expiration_date {_show(value)} is not a calendar date")
    if hh > 23 or mi > 59 or ss > 59:
        raise RowError(f"expiration_date {_show(value)} is not a valid time of day")
    if off_h is not None and (int(off_h) > 14 or int(off_m or 0) > 59):
        raise RowError(f"expiration_date {_show(value)} has an invalid offset")


def _malformed(number: int, what: str) -> RowError:
    return RowError(f"malformed quoting in field {number}: {what}")


def split_fields(line: str) -> list[str]:
    """Fields of one line, RFC 4180 quotes removed (``""`` inside a quoted field is ``"``).

    Hand-written rather than ``csv.reader``: that one accepts a stray quote inside an
    unquoted field and text after a closing quote silently, and its errors do not say which
    field; a partner needs both said. A quoted field cannot hold a line break here: every
    line is parsed on its own (chunks split at newlines), and no valid field contains one.
    """
    if '"' not in line:
        return line.split(",")
    fields: list[str] = []
    pos, size = 0, len(line)
    while True:
        number = len(fields) + 1
        quoted = _QUOTED_FIELD_RE.match(line, pos)
        if quoted is not None:
            value = quoted.group(1).replace('""', '"')
            pos = quoted.end()
            if pos < size and line[pos] != ",":
                raise _malformed(number, "text after the closing quote")
        else:
            end = line.find(",", pos)
            end = size if end < 0 else end
            value = line[pos:end]
            if value.lstrip(" \t").startswith('"'):
                raise _malformed(
                    number, "the quote is not closed on this line (fields cannot span lines)"
                )
            if '"' in value:
                raise _malformed(number, "a '\"' inside an unquoted field")
            pos = end
        fields.append(value)
        if pos >= size:
            return fields
        pos += 1  # the comma


def parse_row(line: str) -> tuple[str, float, str]:
    """Validate one line (without its line ending); return (id, price, expiration_date)."""
    if len(line) > MAX_LINE_LENGTH:
        raise RowError(f"line is too long ({len(line)} characters, at most {MAX_LINE_LENGTH})")
    if any("\udc80" <= ch <= "\udcff" for ch in line):
        raise RowError("line is not valid UTF-8")
    fields = split_fields(line)
    if len(fields) != 3:
        raise RowError(f"expected 3 fields (id,price,expiration_date), found {len(fields)}")
    raw_id, raw_price, raw_date = (f.strip(" \t") for f in fields)
    check_id(raw_id)
    price = parse_price(raw_price)
    check_expiration_date(raw_date)
    return raw_id, price, raw_date


def encode_document(row_id: str, price: float, expiration_date: str, order: int) -> bytes:
    """BSON of ``{_id: id lower-cased, [id], price, expiration_date, o}``.

    ``id`` is stored only when it differs from ``_id`` (lookups are case-insensitive but
    answer with the id as written). ``o`` orders rows by position in the file so that the
    row nearest the end wins whatever order chunks load in.
    """
    key = row_id.lower().encode()
    exp = expiration_date.encode()
    parts = [b"\x02_id\x00", _i32(len(key) + 1), key, b"\x00"]
    if row_id != key.decode():
        raw = row_id.encode()
        parts += [b"\x02id\x00", _i32(len(raw) + 1), raw, b"\x00"]
    parts += [
        b"\x01price\x00",
        _f64(price),
        b"\x02expiration_date\x00",
        _i32(len(exp) + 1),
        exp,
        b"\x00\x12o\x00",
        _i64(order),
    ]
    body = b"".join(parts)
    return _i32(len(body) + 5) + body + b"\x00"


@dataclass
class ChunkStats:
    """What one chunk saw; summed over chunks it must account for every line of the file."""

    lines: int = 0
    rows_read: int = 0
    rows_valid: int = 0
    rows_rejected: int = 0
    rejects: list[tuple[int, str]] = field(default_factory=list)  # (line in chunk, reason)
    # Sees every reject, with the line as read (the full reject report); ``rejects`` keeps
    # only the first ``MAX_REJECTS_KEPT`` for the job's preview.
    on_reject: Callable[[int, str, str], None] | None = field(
        default=None, compare=False, repr=False
    )

    def reject(self, line_no: int, reason: str, line: str = "") -> None:
        self.rows_rejected += 1
        if len(self.rejects) < MAX_REJECTS_KEPT:
            self.rejects.append((line_no, reason))
        if self.on_reject is not None:
            self.on_reject(line_no, reason, line)


def _lines(data: bytes, chunk_start: int) -> Iterator[tuple[int, str]]:
    """(byte offset in the file, decoded line) of each line of a line-aligned chunk;
    undecodable bytes become surrogates, a BOM at the file start is skipped."""
    pos = len(_BOM) if chunk_start == 0 and data.startswith(_BOM) else 0
    size = len(data)
    while pos < size:
        newline = data.find(b"\n", pos)
        stop = size if newline < 0 else newline
        yield chunk_start + pos, data[pos:stop].decode("utf-8", errors="surrogateescape")
        pos = stop + 1


def header_names(line: str) -> list[str] | None:
    """The column names of a line that names exactly the three columns, in any case and
    any quoting (R's ``write.csv``, ``QUOTE_ALL`` and LibreOffice quote them), in any order;
    None for any other line."""
    try:
        fields = split_fields(line)
    except RowError:
        return None
    names = [f.strip(" \t") for f in fields]
    return names if sorted(n.lower() for n in names) == sorted(_HEADER_NAMES) else None


def _header_problem(line: str) -> bool | str:
    """True for the header (skipped), a reason for a header in another column order (its
    rows would load with fields swapped), False for any other line."""
    names = header_names(line)
    if names is None:
        return False
    if [n.lower() for n in names] == _HEADER_NAMES:
        return True
    return (
        f"the header names the columns {','.join(names)}; they must come in the order "
        f"{HEADER} (a header is optional)"
    )


def _check_line(
    line: str, index: int, is_file_start: bool, stats: ChunkStats
) -> tuple[str, float, str] | None:
    """One line through the strict validator: the row, or None (skipped, rejected).
    ``index`` is the line's position in its chunk."""
    stats.lines += 1
    line = line.rstrip("\r")
    if not line.strip():
        return None
    header = is_file_start and index == 0 and _header_problem(line)
    if header is True:
        return None
    stats.rows_read += 1
    try:
        if header:
            raise RowError(header)
        row = parse_row(line)
    except RowError as exc:
        stats.reject(index + 1, str(exc), line)
        return None
    stats.rows_valid += 1
    return row


def _parse_line(
    line: str, index: int, offset: int, is_file_start: bool, stats: ChunkStats
) -> tuple[str, bytes] | None:
    """(key, document) of a line, ``offset`` its byte offset in the file."""
    row = _check_line(line, index, is_file_start, stats)
    if row is None:
        return None
    row_id, price, expiration = row
    return row_id.lower(), encode_document(row_id, price, expiration, offset)


def parse_chunk_strict(
    data: bytes, chunk_start: int, batch_rows: int, stats: ChunkStats
) -> Iterator[dict[str, bytes]]:
    """``parse_chunk`` line by line through the strict validator: the reference semantics."""
    batch: dict[str, bytes] = {}
    for index, (offset, line) in enumerate(_lines(data, chunk_start)):
        row = _parse_line(line, index, offset, chunk_start == 0, stats)
        if row is None:
            continue
        batch[row[0]] = row[1]
        if len(batch) >= batch_rows:
            yield batch
            batch = {}
    if batch:
        yield batch


def _pieces(data: bytes, chunk_start: int) -> Iterator[tuple[int, int, bool | None]]:
    """A line-aligned chunk as pieces, in order: ``(start, end, quoted)`` for a run of
    well-formed lines (the bulk path; ``quoted``: fields in RFC 4180 quotes), ``(start,
    stop, None)`` for one other line (the strict path; ``stop`` is its LF or the chunk's
    end). A BOM at the file start is skipped. Both chunk parsers walk the same pieces."""
    pos = len(_BOM) if chunk_start == 0 and data.startswith(_BOM) else 0
    size = len(data)
    while pos < size:
        end = fast_run_end(data, pos)
        quoted = end == pos  # then perhaps a run of lines with quoted fields
        if quoted:
            end = quoted_run_end(data, pos)
        if end > pos:
            yield pos, end, quoted
            pos = end
            continue
        newline = data.find(b"\n", pos)
        stop = size if newline < 0 else newline
        yield pos, stop, None
        pos = stop + 1


def _count_run(stats: ChunkStats, count: int) -> int:
    """A run's lines are all valid rows."""
    stats.lines += count
    stats.rows_read += count
    stats.rows_valid += count
    return count


def parse_chunk(
    data: bytes, chunk_start: int, batch_rows: int, stats: ChunkStats
) -> Iterator[dict[str, bytes]]:
    """Yield batches of encoded documents keyed by ``_id`` (last row in a batch wins).

    The ordering key of a row is the byte offset of its line in the file: it grows with
    file position, never collides between chunks and does not depend on the chunk plan.

    Same results as ``parse_chunk_strict``, batch for batch: runs of well-formed lines are
    validated and encoded in bulk (``shared.fileformat.fast_parser``); any other line, such as a
    header, a blank line or an invalid row, goes through the strict validator for its reason.
    """
    index = 0
    batch: dict[str, bytes] = {}
    for pos, end, quoted in _pieces(data, chunk_start):
        if quoted is not None:
            keys, docs = encode_run(data[pos:end], chunk_start + pos, quoted)
            count = _count_run(stats, len(keys))
            index += count
            # Fill the batch exactly as row-by-row insertion would: a batch is yielded when
            # it holds ``batch_rows`` distinct keys, which can only happen on the last row of
            # a slice no longer than the room left.
            done = 0
            while done < count:
                take = batch_rows - len(batch)
                batch.update(zip(keys[done : done + take], docs[done : done + take], strict=True))
                done += take
                if len(batch) >= batch_rows:
                    yield batch
                    batch = {}
            continue
        line = data[pos:end].decode("utf-8", errors="surrogateescape")
        row = _parse_line(line, index, chunk_start + pos, chunk_start == 0, stats)
        if row is not None:
            batch[row[0]] = row[1]
            if len(batch) >= batch_rows:
                yield batch
                batch = {}
        index += 1
    if batch:
        yield batch


def parse_chunk_rows(
    data: bytes, chunk_start: int, stats: ChunkStats
) -> tuple[list[bytes], list[bytes]]:
    """Every valid row of a line-aligned chunk, in file order: keys (ids lower-cased) and
    bucket row elements (``shared.fileformat.bucket_layout``). The order is what decides duplicates
    (the row nearest the end of the file wins), so nothing is merged here.

    Same validation as ``parse_chunk``: runs of well-formed lines in bulk, any other line
    through the strict validator.
    """
    index = 0
    keys: list[bytes] = []
    elements: list[bytes] = []
    for pos, end, quoted in _pieces(data, chunk_start):
        if quoted is not None:
            run_keys, run_elements = encode_run_elements(data[pos:end], quoted)
            index += _count_run(stats, len(run_keys))
            keys += run_keys
            elements += run_elements
            continue
        line = data[pos:end].decode("utf-8", errors="surrogateescape")
        row = _check_line(line, index, chunk_start == 0, stats)
        if row is not None:
            raw = row[0].encode()
            key = raw.lower()
            keys.append(key)
            elements.append(encode_element(key, raw, row[1], row[2].encode()))
        index += 1
    return keys, elements
