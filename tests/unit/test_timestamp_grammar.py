"""The expiration_date grammar (docs/file-format.md) against a reference parser written
without regular expressions: the strict validator accepts exactly what the reference
accepts, and the bulk fast path takes exactly the same dates, quoted or not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import example, given, settings
from hypothesis import strategies as st

from shared.fileformat.fast_parser import FAST_LINE_RE, QUOTED_LINE_RE
from shared.fileformat.promotion_rows import RowError, check_expiration_date

DIGITS = "0123456789"
NAME_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+_/-")


def _number(text: str, lengths: tuple[int, ...]) -> int | None:
    if len(text) not in lengths or any(c not in DIGITS for c in text):
        return None
    return int(text)


def _zone(text: str) -> timedelta | None:
    """The offset a zone means, None if it is not one of the grammar's forms."""
    if text in ("", " UTC", " GMT"):
        return timedelta(0)
    if text.startswith(" "):
        text = text[1:]
    if text.startswith("Z"):
        offset, tail = timedelta(0), text[1:]
    elif text[:1] in ("+", "-"):
        hours = _number(text[1:3], (2,))
        rest = text[3:]
        if rest.startswith(":"):
            minutes, tail = _number(rest[1:3], (2,)), rest[3:]
        elif rest[:2] and all(c in DIGITS for c in rest[:2]):
            minutes, tail = _number(rest[:2], (2,)), rest[2:]
        else:
            minutes, tail = 0, rest
        if hours is None or minutes is None or hours > 14 or minutes > 59:
            return None
        sign = -1 if text[0] == "-" else 1
        offset = sign * timedelta(hours=hours, minutes=minutes)
    else:
        return None
    if tail and not (tail[0] == " " and 1 <= len(tail) - 1 <= 32 and set(tail[1:]) <= NAME_CHARS):
        return None
    return offset


def reference(text: str) -> datetime | None:
    """The instant ``text`` denotes (naive times as UTC; the fraction to the microsecond),
    None if it is not valid."""
    if len(text) < 16 or text[4] != "-" or text[7] != "-" or text[10] not in " T":
        return None
    year = _number(text[:4], (4,))
    month, day = _number(text[5:7], (2,)), _number(text[8:10], (2,))
    clock = text[11:]
    first = clock.find(":")
    hour = _number(clock[:first], (1, 2)) if first > 0 else None
    minute = _number(clock[first + 1 : first + 3], (2,))
    if clock[first + 3 : first + 4] != ":":
        return None
    second = _number(clock[first + 4 : first + 6], (2,))
    rest = clock[first + 6 :]
    micro = 0
    if rest.startswith("."):
        digits = len(rest) - len(rest[1:].lstrip(DIGITS)) - 1
        if not 1 <= digits <= 9:
            return None
        micro = int(rest[1 : 1 + digits].ljust(6, "0")[:6])  # datetime keeps microseconds
        rest = rest[1 + digits :]
    offset = _zone(rest)
    parts = (year, month, day, hour, minute, second)
    if offset is None or any(p is None for p in parts) or year == 0:
        return None
    try:
        return datetime(*parts, micro, tzinfo=timezone(offset))  # type: ignore[misc]
    except ValueError:
        return None


def _two(n: int) -> str:
    return f"{n:02d}"


stamps = st.tuples(
    st.sampled_from(["2027", "0000", "2000", "2100", "2020", "2019", "0001", "27", "٢٠٢٧"]),
    st.one_of(st.integers(0, 13).map(_two), st.just("1")),
    st.one_of(st.integers(0, 32).map(_two), st.sampled_from(["1", "29"])),
    st.sampled_from([" ", "T", " ", "t", "  "]),
    st.one_of(st.integers(0, 25).map(str), st.integers(0, 25).map(_two), st.just("005")),
    st.one_of(st.integers(0, 61).map(_two), st.just("5")),
    st.one_of(st.integers(0, 61).map(_two), st.just("5")),
    st.sampled_from(["", ".5", ".532085", ".123456789", ".1234567890", "."]),
).map(lambda t: f"{t[0]}-{t[1]}-{t[2]}{t[3]}{t[4]}:{t[5]}:{t[6]}{t[7]}")
offsets = st.one_of(
    st.sampled_from(["", "Z", "z", "UTC", "GMT", "CET", "utc", "EST5EDT", "+", "+5", "+053"]),
    st.tuples(
        st.sampled_from("+-"),
        st.integers(0, 16).map(_two),
        st.sampled_from(["", ":"]),
        st.one_of(st.just(""), st.integers(0, 61).map(_two), st.just("3")),
    ).map("".join),
)
zones = st.tuples(
    st.sampled_from(["", " ", " ", "  "]),
    offsets,
    st.sampled_from(["", "", " UTC", " CEST", " Europe/Paris", " " + "A" * 33, " é", " +0530"]),
).map("".join)


def _accepted(text: str) -> bool:
    try:
        check_expiration_date(text)
    except RowError:
        return False
    return True


@settings(max_examples=800)
@given(stamps, zones)
@example("2027-12-01 07:38:51.532085+00", "")  # PostgreSQL, DuckDB
@example("2027-12-01 07:38:51", " UTC")  # Ruby
@example("2027-12-01 7:38:51", "")  # LibreOffice
@example("2027-12-01T07:38:51.532085", "+0000")  # polars
@example("2027-12-01 07:38:51.532085", " +0000 UTC")  # Go
@example("2027-12-01 07:38:51", " CET")
@example("2027-12-01 07:38:51", "+14:59")
@example("2027-12-01 07:38:51", "-15")
def test_strict_and_fast_accept_exactly_what_the_reference_accepts(stamp: str, zone: str) -> None:
    text = stamp + zone
    valid = reference(text) is not None
    assert _accepted(text) == valid, text
    raw = text.encode()
    assert (FAST_LINE_RE.fullmatch(b"a,1," + raw) is not None) == valid, text
    assert (QUOTED_LINE_RE.fullmatch(b'"a","1","' + raw + b'"') is not None) == valid, text


def test_the_reference_reads_the_instants_real_tools_mean() -> None:
    utc = UTC
    assert reference("2027-12-01 07:38:51.532085+00") == datetime(
        2027, 12, 1, 7, 38, 51, 532085, tzinfo=utc
    )
    assert reference("2027-12-01 7:38:51 -03") == datetime(2027, 12, 1, 10, 38, 51, tzinfo=utc)
    assert reference("2027-12-01 07:38:51+05:30 IST") == datetime(2027, 12, 1, 2, 8, 51, tzinfo=utc)
    assert reference("2027-12-01 07:38:51 GMT") == datetime(2027, 12, 1, 7, 38, 51, tzinfo=utc)
    for bad in ("2027-12-01 07:38:51 CET", "2027-12-01 07:38:51+15", "2027-12-01 07:38:51+0"):
        assert reference(bad) is None, bad
