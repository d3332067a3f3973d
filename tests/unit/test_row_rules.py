"""Row rules at their edges, reasons word for word: what a partner reads in the reject list
must not change by accident, and each boundary (23:59:59, +14:00, 100 rejects kept, a blank
first line, the header only at the file start, batch sizes) is pinned by an example."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import bson
import pytest

from shared.fileformat.promotion_rows import (
    MAX_REJECTS_KEPT,
    ChunkStats,
    RowError,
    is_valid_id,
    parse_chunk,
    parse_chunk_rows,
    parse_chunk_strict,
    parse_price,
    parse_row,
)

DATE = "2018-08-04 05:32:31 +0200 CEST"
Parser = Callable[[bytes, int, int, ChunkStats], Iterator[dict[str, bytes]]]
PARSERS = [parse_chunk, parse_chunk_strict]


def reason(line: str) -> str:
    with pytest.raises(RowError) as err:
        parse_row(line)
    return str(err.value)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (f",1,{DATE}", "id is empty"),
        (f"a,,{DATE}", "price is empty"),
        (f"a,1,{DATE}\udc80", "line is not valid UTF-8"),
        (f"a,1,{DATE}\udcff", "line is not valid UTF-8"),
    ],
)
def test_reasons_word_for_word(line: str, why: str) -> None:
    assert reason(line) == why


def test_a_byte_that_is_not_utf8_is_refused_through_the_chunk_parser() -> None:
    stats = ChunkStats()
    assert list(parse_chunk(f"a,1,{DATE}".encode() + b"\x80\n", 0, 10, stats)) == []
    assert stats.rejects == [(1, "line is not valid UTF-8")]


@pytest.mark.parametrize(
    ("price", "why"),
    [
        ("+5", "is not a decimal number"),  # no sign, not even '+'
        ("x5", "is not a decimal number"),
        ("-5", "is negative"),
        ("-.5e3", "is negative"),
        ("nan", "is not a finite number"),
        ("-nan", "is not a finite number"),
        ("+inf", "is not a finite number"),
        ("Infinity", "is not a finite number"),
        ("-INFINITY", "is not a finite number"),
        ("infinit", "is not a decimal number"),
    ],
)
def test_price_reasons(price: str, why: str) -> None:
    with pytest.raises(RowError) as err:
        parse_price(price)
    assert str(err.value) == f"price {price!r} {why}"


@pytest.mark.parametrize("form", ["{d} {t} +0200 CEST", "{d}T{t}Z", "{d}T{t}+02:00"])
@pytest.mark.parametrize(
    ("time", "valid"),
    [
        ("23:59:59", True),
        ("00:00:00", True),
        ("24:00:00", False),
        ("23:60:00", False),
        ("23:59:60", False),  # no leap seconds
        ("05:60:31", False),
        ("05:31:60", False),
    ],
)
def test_a_time_of_day_is_00_00_00_to_23_59_59(form: str, time: str, valid: bool) -> None:
    date = form.format(d="2018-08-04", t=time)
    if valid:
        assert parse_row(f"a,1,{date}")[2] == date
    else:
        assert reason(f"a,1,{date}") == f"expiration_date {date!r} is not a valid time of day"


@pytest.mark.parametrize(
    ("offset", "valid"),
    [
        ("+1400", True),
        ("-1400", True),
        ("+1500", False),
        ("+0059", True),
        ("+0060", False),
        ("+14:00", True),
        ("+15:00", False),
        ("-00:59", True),
        ("+00:60", False),
    ],
)
def test_a_zone_offset_is_at_most_14_hours_and_59_minutes(offset: str, valid: bool) -> None:
    date = f"2018-08-04T05:32:31{offset}" if ":" in offset else f"2018-08-04 05:32:31 {offset}"
    if valid:
        assert parse_row(f"a,1,{date}")[2] == date
    else:
        assert reason(f"a,1,{date}") == f"expiration_date {date!r} has an invalid offset"


def test_only_spaces_and_tabs_around_a_field_are_ignored() -> None:
    """A no-break space (spreadsheets) or a vertical tab is not a blank: the field is wrong."""
    assert parse_row(f" \ta\t , 1 ,\t{DATE} ") == ("a", 1.0, DATE)
    assert reason(f"a\xa0,1,{DATE}").startswith("id 'a\\xa0' has characters other than")
    assert reason(f"a,1,{DATE}\x0b").startswith("expiration_date")


def test_the_expiration_date_is_stored_as_written_whatever_its_zone_name() -> None:
    """Through the per-line validator (blanks around fields), zone names ending in X or
    blanks stay as they are; only the line's CR is dropped."""
    stats = ChunkStats()
    data = f"a, 1,2018-08-04 05:32:31 +0200 WAX\r\nb, 2,{DATE}\xa0\r\n".encode()
    (batch,) = list(parse_chunk(data, 0, 10, stats))
    assert bson.decode(batch["a"])["expiration_date"] == "2018-08-04 05:32:31 +0200 WAX"
    assert stats.rows_rejected == 1  # the no-break space is part of b's date


def test_ids_are_letters_digits_underscore_and_hyphen_up_to_64() -> None:
    assert is_valid_id("aZ09_-") and is_valid_id("a" * 64)
    assert not is_valid_id("a" * 65)
    assert not is_valid_id("a b") and not is_valid_id("") and not is_valid_id("é")


def test_the_first_100_rejects_of_a_chunk_are_kept_with_their_lines_and_all_are_counted() -> None:
    assert MAX_REJECTS_KEPT == 100
    stats = ChunkStats()
    list(parse_chunk(b"bad\n" * 150, 0, 10, stats))
    assert stats.rows_rejected == 150
    assert [line for line, _ in stats.rejects] == list(range(1, 101))


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize("start", [0, 100])
def test_a_blank_first_line_is_skipped_and_the_next_row_loads(parse: Parser, start: int) -> None:
    stats = ChunkStats()
    batches = list(parse(f"\na,1,{DATE}\n".encode(), start, 10, stats))
    assert [list(b) for b in batches] == [["a"]]
    assert (stats.lines, stats.rows_read, stats.rows_rejected) == (2, 1, 0)
    assert bson.decode(batches[0]["a"])["o"] == start + 1


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize(("start", "skipped"), [(0, True), (1, False), (100, False)])
def test_a_header_is_skipped_only_at_the_start_of_the_file(
    parse: Parser, start: int, skipped: bool
) -> None:
    stats = ChunkStats()
    list(parse(b"id,price,expiration_date\n", start, 10, stats))
    assert stats.rows_rejected == (0 if skipped else 1)


@pytest.mark.parametrize("parse", PARSERS)
def test_batches_hold_exactly_batch_rows_distinct_ids(parse: Parser) -> None:
    """Rows with blanks around fields take the per-line path: batches fill the same way."""
    rows = "".join(f"r{i}, {i} ,{DATE}\n" for i in range(5))
    sizes = [len(b) for b in parse(rows.encode(), 0, 2, ChunkStats())]
    assert sizes == [2, 2, 1]


# parse_chunk_rows (the map step's parser) at the same edges.


def test_parse_chunk_rows_refuses_a_byte_that_is_not_utf8_and_reports_the_line() -> None:
    seen: list[tuple[int, str, str]] = []
    stats = ChunkStats(on_reject=lambda *r: seen.append(r))
    keys, _ = parse_chunk_rows(f"b,1,{DATE}\na,1,{DATE}".encode() + b"\x80\n", 0, stats)
    assert keys == [b"b"]
    assert stats.rejects == [(2, "line is not valid UTF-8")]
    assert seen == [(2, "line is not valid UTF-8", f"a,1,{DATE}\udc80")]  # the line as read


@pytest.mark.parametrize("start", [0, 100])
def test_parse_chunk_rows_skips_a_blank_first_line(start: int) -> None:
    stats = ChunkStats()
    keys, elements = parse_chunk_rows(f"\na,1,{DATE}\n".encode(), start, stats)
    assert keys == [b"a"] and len(elements) == 1
    assert (stats.lines, stats.rows_read, stats.rows_rejected) == (2, 1, 0)


@pytest.mark.parametrize(("start", "skipped"), [(0, True), (1, False), (100, False)])
def test_parse_chunk_rows_skips_a_header_only_at_the_start_of_the_file(
    start: int, skipped: bool
) -> None:
    stats = ChunkStats()
    parse_chunk_rows(b"id,price,expiration_date\n", start, stats)
    assert stats.rows_rejected == (0 if skipped else 1)
