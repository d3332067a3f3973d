"""The row format's limits against references outside the code under test: the calendar of
the standard library for every day of every month, and the line length at its edge."""

from __future__ import annotations

import calendar

import pytest

from shared.fileformat.promotion_rows import (
    MAX_LINE_LENGTH,
    ChunkStats,
    RowError,
    check_expiration_date,
    parse_chunk,
    parse_row,
)

# Leap-year rules at their edges (divisible by 4, by 100, by 400), and ordinary years.
YEARS = [1, 4, 100, 400, 1900, 1999, 2000, 2023, 2024, 2100, 2400, 9999]
MONTHS = range(0, 14)
DAYS = range(0, 33)


def _is_date(year: int, month: int, day: int) -> bool:
    return 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]


def _date(year: int, month: int, day: int) -> str:
    return f"{year:04d}-{month:02d}-{day:02d} 05:32:31 +0200 CEST"


def test_the_strict_validator_accepts_exactly_the_days_of_the_calendar() -> None:
    """October has 31 days, February 29 only in leap years, and so on, for every month."""
    wrong = []
    for year in YEARS:
        for month in MONTHS:
            for day in DAYS:
                try:
                    check_expiration_date(_date(year, month, day))
                    accepted = True
                except RowError:
                    accepted = False
                if accepted != _is_date(year, month, day):
                    wrong.append((year, month, day, accepted))
    assert wrong == []


def test_the_chunk_parser_loads_exactly_the_days_of_the_calendar() -> None:
    """The same sweep through parse_chunk, whose fast path has a calendar of its own."""
    lines, want = [], set()
    for year in YEARS:
        for month in MONTHS:
            for day in DAYS:
                row_id = f"d{year}-{month}-{day}"
                lines.append(f"{row_id},1,{_date(year, month, day)}\n")
                if _is_date(year, month, day):
                    want.add(row_id)
    stats = ChunkStats()
    got = {key for batch in parse_chunk("".join(lines).encode(), 0, 500, stats) for key in batch}
    assert got == want
    assert stats.rows_valid == len(want)
    assert stats.rows_rejected == len(lines) - len(want)


@pytest.mark.parametrize(
    ("day", "accepted"),
    [("2018-10-31", True), ("2018-10-32", False), ("2018-11-30", True), ("2018-11-31", False)],
)
def test_october_has_31_days_and_november_30(day: str, accepted: bool) -> None:
    line = f"a,1,{day} 05:32:31 +0200 CEST"
    if accepted:
        assert parse_row(line)[2] == f"{day} 05:32:31 +0200 CEST"
    else:
        with pytest.raises(RowError, match="is not a calendar date"):
            parse_row(line)


def _line_of(length: int) -> str:
    """A valid row padded with blanks (fields are stripped) to ``length`` characters."""
    row = "a,1,2018-08-04 05:32:31 +0200 CEST"
    return row.replace(",1,", "," + " " * (length - len(row)) + "1,")


def test_a_line_of_exactly_1024_characters_is_accepted() -> None:
    assert MAX_LINE_LENGTH == 1024
    line = _line_of(1024)
    assert len(line) == 1024
    assert parse_row(line) == ("a", 1.0, "2018-08-04 05:32:31 +0200 CEST")
    stats = ChunkStats()
    assert [list(b) for b in parse_chunk(line.encode() + b"\n", 0, 10, stats)] == [["a"]]


def test_a_line_of_1025_characters_is_refused_with_its_length() -> None:
    line = _line_of(1025)
    with pytest.raises(RowError, match=r"^line is too long \(1025 characters, at most 1024\)$"):
        parse_row(line)
    stats = ChunkStats()
    assert list(parse_chunk(line.encode() + b"\r\n", 0, 10, stats)) == []
    assert stats.rejects == [(1, "line is too long (1025 characters, at most 1024)")]
