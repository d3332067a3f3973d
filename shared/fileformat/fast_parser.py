"""Fast path of the chunk parser: runs of well-formed lines validated and encoded in bulk.

Almost every line of a partner file has the same shape (``id,price,YYYY-MM-DD HH:MM:SS
+HHMM ZONE``, or one of the other date forms). One possessive regex recognises a run of such
lines at C speed, and the run is then split and BSON-encoded with ``map``/``zip`` over C
functions, so no Python code runs per row. A second regex, tried only where the first finds
nothing, takes runs of the same lines with fields in RFC 4180 quotes (``csv.writer``'s
QUOTE_ALL or QUOTE_NONNUMERIC); none of their fields holds a quote, so dropping every ``"``
gives the values. The regexes only accept lines the strict per-field validator accepts
unchanged (property tests check it); anything else goes to that validator, which gives the
reason.
"""

from __future__ import annotations

import operator
import re
import struct
from itertools import accumulate, repeat
from typing import Any

from shared.fileformat.bucket_layout import ROW_PREFIX_BYTES

RUN_LINES = 2048  # lines per run: amortises the per-run calls, bounds the lists' memory

# Dates the strict validator accepts, calendar included: days 1-28 of any month, 29-30 of
# any month but February, 31 of long months, February 29 of leap years; no year 0000.
_YEAR_MONTH_DAY = (
    rb"(?!0000)(?:\d{4}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1\d|2[0-8])"
    rb"|(?:0[13-9]|1[0-2])-(?:29|30)"
    rb"|(?:0[13578]|1[02])-31)"
    rb"|(?:\d\d(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)"
)
_OFFSET = rb"[+-](?:0\d|1[0-4])(?:[0-5]\d|:[0-5]\d|)"
_NAME = rb"(?: [A-Za-z0-9+_/-]{1,32})?"
# The grammar of ``promotion_rows._DATE_RE`` with the calendar, the clock and offset ranges.
# Spelled out per zone form, common form first: nested optionals, as in the grammar's
# shorter ``' ?(?:Z|offset) name?'``, backtrack more (docs/decisions/date-regex.md).
_DATE = (
    _YEAR_MONTH_DAY
    + rb"[ T](?:[01]\d|2[0-3]|\d):[0-5]\d:[0-5]\d(?:\.\d{1,9})?"
    + rb"(?: "
    + _OFFSET
    + _NAME
    + rb"| (?:UTC|GMT|Z"
    + _NAME
    + rb")|(?:Z|"
    + _OFFSET
    + rb")"
    + _NAME
    + rb")?"
)
# No exponent and at most 20 integer digits: always finite, never out of range.
_PRICE = rb"(?:\d{1,20}(?:\.\d{0,100})?|\.\d{1,100})"
_ID = rb"[A-Za-z0-9_-]{1,64}"
FAST_LINE = _ID + rb"," + _PRICE + rb"," + _DATE
QUOTED_LINE = b",".join(rb'(?:"%s"|%s)' % (f, f) for f in (_ID, _PRICE, _DATE))
_RUN = re.compile(rb"(?:" + FAST_LINE + rb"\r?\n){0,%d}+" % RUN_LINES)
_QUOTED_RUN = re.compile(rb"(?:" + QUOTED_LINE + rb"\r?\n){0,%d}+" % RUN_LINES)
FAST_LINE_RE = re.compile(FAST_LINE)
QUOTED_LINE_RE = re.compile(QUOTED_LINE)


def fast_run_end(data: bytes, pos: int) -> int:
    """End of the run of well-formed, newline-terminated lines starting at ``pos``."""
    match = _RUN.match(data, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def quoted_run_end(data: bytes, pos: int) -> int:
    """Like ``fast_run_end``, for lines whose fields may be in quotes."""
    match = _QUOTED_RUN.match(data, pos)
    assert match is not None
    return match.end()


# Fixed bytes of a document {_id, [id], price, expiration_date, o}; lengths are added.
_FIXED = 4 + 5 + 4 + 1 + 7 + 8 + 17 + 4 + 1 + 3 + 8 + 1
_HEAD = struct.Struct("<i5si").pack  # size, "\x02_id\x00", len(_id) + 1
_PRICE_DATE = struct.Struct("<8sd17si").pack  # "\x00\x01price\x00", price, "\x02exp...", len
_ID_ONLY = struct.Struct("<5si").pack  # "\x00\x02id\x00", len(id) + 1
_ORDER = struct.Struct("<4sqx").pack  # "\x00\x12o\x00", o, end of document
_join = b"".join


def _split_run(
    run: bytes, run_offset: int | None, quoted: bool
) -> tuple[list[int], list[bytes], list[bytes], list[bytes]]:
    """Line offsets in the file (none without ``run_offset``), ids, prices and dates of a
    run of well-formed lines."""
    offsets: list[int] = []
    if run_offset is not None:
        line_lens = list(map(len, run.split(b"\n")))
        del line_lens[-2:]  # a line starts after each line but the last (and the b"" after it)
        offsets = list(accumulate(map(operator.add, line_lens, repeat(1)), initial=run_offset))
    if quoted:
        run = run.replace(b'"', b"")
    if b"\r" in run:  # only right before "\n" in a well-formed run
        run = run.replace(b"\r\n", b"\n")
    fields = run.replace(b"\n", b",").split(b",")
    del fields[-1]  # after the last newline
    return offsets, fields[0::3], fields[1::3], fields[2::3]


def encode_run(run: bytes, run_offset: int, quoted: bool = False) -> tuple[list[str], list[bytes]]:
    """Keys (ids lower-cased) and BSON documents of a run of well-formed lines.

    Produces exactly ``encode_document`` for every row, whose order is the byte offset of
    its line in the file (``run_offset`` is the run's): plan-independent, so any two chunk
    plans of one file agree on which duplicate row wins. ``quoted``: the run came from
    ``quoted_run_end``; its quotes go once the offsets are taken.
    """
    offsets_list, raw_ids, prices, dates = _split_run(run, run_offset, quoted)
    offsets = iter(offsets_list)
    keys = list(map(bytes.lower, raw_ids))
    key_lens = list(map(operator.add, map(len, keys), repeat(1)))
    date_lens = list(map(operator.add, map(len, dates), repeat(1)))
    sizes = list(map(operator.add, key_lens, map(operator.add, date_lens, repeat(_FIXED - 2))))
    price_date = map(
        _PRICE_DATE,
        repeat(b"\x00\x01price\x00"),
        map(float, prices),
        repeat(b"\x02expiration_date\x00"),
        date_lens,
    )
    orders = map(_ORDER, repeat(b"\x00\x12o\x00"), offsets)
    if keys == raw_ids:
        heads = map(_HEAD, sizes, repeat(b"\x02_id\x00"), key_lens)
        docs = list(map(_join, zip(heads, keys, price_date, dates, orders, strict=True)))
    else:
        # ``id`` as written, only where it differs from ``_id``: b"..." * False is b"".
        id_fields = list(
            map(
                operator.mul,
                map(
                    _join,
                    zip(map(_ID_ONLY, repeat(b"\x00\x02id\x00"), key_lens), raw_ids, strict=True),
                ),
                map(operator.ne, raw_ids, keys),
            )
        )
        sizes = list(map(operator.add, sizes, map(len, id_fields)))
        heads = map(_HEAD, sizes, repeat(b"\x02_id\x00"), key_lens)
        docs = list(map(_join, zip(heads, keys, id_fields, price_date, dates, orders, strict=True)))
    return list(map(bytes.decode, keys)), docs


# Element ``key: <binary row>`` of a bucket's ``r`` document
# (``shared.fileformat.bucket_layout.encode_element``): the bytes between key and id/date.
_ELEMENT_MID = struct.Struct("<1siBdB").pack  # "\x00", binary size, subtype 0, price, n


def encode_run_elements(run: bytes, quoted: bool) -> tuple[list[bytes], list[bytes]]:
    """Keys (ids lower-cased) and bucket row elements of a run of well-formed lines, in
    file order: exactly ``bucket_layout.encode_element`` for every row."""
    _, raw_ids, prices, dates = _split_run(run, None, quoted)  # file order is the order
    keys = list(map(bytes.lower, raw_ids))
    sizes: Any = map(operator.add, map(len, dates), repeat(ROW_PREFIX_BYTES))
    written: Any
    lengths: Any
    if keys == raw_ids:
        written, lengths = repeat(b""), repeat(0)
    else:
        # The id as written only where it differs from the key: bytes * False is b"".
        written = list(map(operator.mul, raw_ids, map(operator.ne, raw_ids, keys)))
        lengths = list(map(len, written))
        sizes = map(operator.add, sizes, lengths)
    mids = map(_ELEMENT_MID, repeat(b"\x00"), sizes, repeat(0), map(float, prices), lengths)
    elements = list(map(_join, zip(repeat(b"\x05"), keys, mids, written, dates)))
    return keys, elements
