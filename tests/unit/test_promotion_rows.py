import csv
import io
import math
import re
from datetime import datetime

import bson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shared.fileformat.fast_parser import FAST_LINE_RE
from shared.fileformat.promotion_rows import (
    ChunkStats,
    RowError,
    check_expiration_date,
    encode_document,
    parse_chunk,
    parse_chunk_strict,
    parse_row,
    split_fields,
)

GOOD = "d018ef0b-dbd9-48f1-ac1a-eb4d90e57118,60.683466,2018-08-04 05:32:31 +0200 CEST"


@pytest.mark.parametrize(
    "line",
    [
        GOOD,
        " d018ef0b , 60.683466 , 2018-08-04 05:32:31 +0200 CEST ",
        "abc,0,2018-08-04 05:32:31 +0200",
        "ABC_def-1,1e3,2018-08-04T05:32:31Z",
        "x,.5,2018-08-04T05:32:31.123+02:00",
        "x,5.,2020-02-29 00:00:00 -0500 EST",
        "x,5,2018-08-04 05:32:31 +0530 +0530",
        # The case study's own example: no zone at all.
        "172FFC14-D229-4C93-B06B-F48B8C095512,9.68,2022-06-04 06:01:20",
        "x,9.68,2022-06-04 06:01:20.250",
        "x,9.68,2022-06-04T06:01:20",
        "x,9.68,2022-06-04T06:01:20.5-03:30",
        "x,9.68,2022-06-04 06:01:20Z",
        "x,12,2022-06-04T06:01:20+0200",
        "x,1.5E-3,2022-06-04T06:01:20Z",
        "x,0.0,2022-06-04T06:01:20Z",
        # As real tools write them: PostgreSQL / DuckDB, Ruby, LibreOffice, pandas, polars, Go.
        "x,1,2027-12-01 07:38:51.532085+00",
        "x,1,2027-12-01 07:38:51-03",
        "x,1,2027-12-01 07:38:51+05:30",
        "x,1,2027-12-01 07:38:51 UTC",
        "x,1,2027-12-01 07:38:51 GMT",
        "x,1,2027-12-01 07:38:51 Z",
        "x,1,2027-12-01 7:38:51",
        "x,1,2027-12-01 07:38:51.532085+00:00",
        "x,1,2027-12-01T07:38:51.532085+0000",
        "x,1,2027-12-01 07:38:51.532085 +0000 UTC",
        "x,1,2027-12-01 07:38:51 +02:00",
    ],
)
def test_valid_rows(line: str) -> None:
    row_id, price, date = parse_row(line)
    assert row_id == line.split(",")[0].strip()
    assert math.isfinite(price) and price >= 0
    assert date == line.split(",")[2].strip()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("a,1", "expected 3 fields"),
        ("a,1,2018-08-04 05:32:31 +0200,x", "expected 3 fields"),
        (",1,2018-08-04 05:32:31 +0200", "id is empty"),
        ("a" * 65 + ",1,2018-08-04 05:32:31 +0200", "longer than 64"),
        ("a b,1,2018-08-04 05:32:31 +0200", "characters other than"),
        ("a/..,1,2018-08-04 05:32:31 +0200", "characters other than"),
        ("a,,2018-08-04 05:32:31 +0200", "price is empty"),
        ("a,-1,2018-08-04 05:32:31 +0200", "negative"),
        ("a,NaN,2018-08-04 05:32:31 +0200", "not a finite number"),
        ("a,inf,2018-08-04 05:32:31 +0200", "not a finite number"),
        ("a,1e400,2018-08-04 05:32:31 +0200", "out of range"),
        ("a,abc,2018-08-04 05:32:31 +0200", "not a decimal number"),
        ("a,1,2018-02-30 05:32:31 +0200 CEST", "not a calendar date"),
        ("a,1,2019-02-29 05:32:31 +0200 CEST", "not a calendar date"),
        ("a,1,2018-13-01 05:32:31 +0200 CEST", "month 13"),
        ("a,1,2018-08-04 25:32:31 +0200 CEST", "time of day"),
        ("a,1,0000-01-01 05:32:31", "not a calendar date"),
        ("a,1,2018-08-04 05:32:60", "time of day"),
        ("a,1,04/08/2018 05:32", "is not 'YYYY-MM-DD"),
        ("a,1,2018-08-04", "is not 'YYYY-MM-DD"),
        ("a,1,2018-08-04 05:32", "is not 'YYYY-MM-DD"),
        ("a,1,2018-08-04 05:32:31 +2", "is not 'YYYY-MM-DD"),
        ("a,1,2018-08-04 05:32:31 +020", "is not 'YYYY-MM-DD"),
        ("a,1,2018-08-04 005:32:31", "is not 'YYYY-MM-DD"),
        ("a,1,2018-08-04 05:32:31  UTC", "is not 'YYYY-MM-DD"),
        ("a,1,2018-08-04 05:32:31UTC", "is not 'YYYY-MM-DD"),
        ("a,1,2018-08-04 05:32:31 CET", "zone name 'CET' without an offset"),
        ("a,1,2018-08-04 05:32:31 utc", "only UTC, GMT and Z are accepted alone"),
        ("a,1,2018-08-04 05:32:31 Europe/Paris", "zone name 'Europe/Paris' without an offset"),
        ("a,1,2018-08-04 24:32:31+00", "time of day"),
        ("a,1,2018-08-04 05:32:31+15", "invalid offset"),
        ("a,1,2018-08-04T05:32:31.1234567890Z", "is not 'YYYY-MM-DD"),
        ("a,1,2018-08-04 05:32:31 +9900", "invalid offset"),
        ("a,1,2018-08-04T05:32:31+15:00", "invalid offset"),
        ("a,٣,2018-08-04 05:32:31", "not a decimal number"),
        ("a,1,٢٠١٨-08-04 05:32:31", "is not 'YYYY-MM-DD"),
        ('"a"x,1,2018-08-04 05:32:31', "malformed quoting in field 1: text after the closing"),
        ('a,"1,2018-08-04 05:32:31', "malformed quoting in field 2: the quote is not closed"),
        ('a,1,"2018-08-04 05:32:31', "malformed quoting in field 3: the quote is not closed"),
        ('a,1,2018-08-04 05:32:31"', "malformed quoting in field 3: a '\"' inside"),
        ('a,1 "x",2018-08-04 05:32:31', "malformed quoting in field 2: a '\"' inside"),
        ('"a,b",1,2018-08-04 05:32:31', "id 'a,b' has characters other than"),
        ('"a""b",1,2018-08-04 05:32:31', "id 'a\"b' has characters other than"),
        ('"a","1","2018-08-04 05:32:31",""', "expected 3 fields"),
        ("a,1,2018-08-04 05:32:31 +0200 \udcff", "not valid UTF-8"),
        ("a," + "1" * 2000 + ",2018-08-04 05:32:31 +0200", "line is too long"),
    ],
)
def test_invalid_rows_say_why(line: str, reason: str) -> None:
    with pytest.raises(RowError, match=reason):
        parse_row(line)


ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
prices = st.floats(min_value=0, max_value=1e300, allow_nan=False, allow_infinity=False)
dates = st.from_regex(
    r"20[0-9]{2}-0[1-9]-1[0-9] [01][0-9]:[0-5][0-9]:[0-5][0-9] \+0[0-9]00 [A-Z]{3,4}",
    fullmatch=True,
)


@given(row_id=ids, price=prices, date=dates, order=st.integers(0, 2**62))
def test_encoded_document_is_the_bson_of_the_document(
    row_id: str, price: float, date: str, order: int
) -> None:
    expected = {"_id": row_id.lower()}
    if row_id != row_id.lower():
        expected["id"] = row_id
    expected.update({"price": price, "expiration_date": date, "o": bson.Int64(order)})
    raw = encode_document(row_id, price, date, order)
    assert raw == bson.encode(expected)
    assert bson.decode(raw) == expected


@given(row_id=ids, price=prices, date=dates)
def test_price_round_trips_through_text(row_id: str, price: float, date: str) -> None:
    assert parse_row(f"{row_id},{price!r},{date}")[1] == price


def _chunk(data: bytes, start: int = 0) -> tuple[list[dict[str, bytes]], ChunkStats]:
    stats = ChunkStats()
    return list(parse_chunk(data, start, 10, stats)), stats


def test_chunk_skips_header_bom_and_blank_lines_and_accepts_crlf() -> None:
    data = (
        "\ufeffID,Price,Expiration_Date\r\n"
        + GOOD
        + "\r\n\r\n  \n"
        + GOOD.replace("d0", "e0")
        + "\n"
    ).encode()
    batches, stats = _chunk(data)
    assert stats.lines == 5 and stats.rows_read == 2 and stats.rows_valid == 2
    assert sum(len(b) for b in batches) == 2


@pytest.mark.parametrize(
    "header",
    [
        '"id","price","expiration_date"',  # R write.csv, QUOTE_ALL, QUOTE_NONNUMERIC
        '"ID", "Price" ,\t"EXPIRATION_DATE"',
        'id,"price",expiration_date',
        '\ufeff"id","price","expiration_date"\r',  # a spreadsheet: BOM and CRLF
    ],
)
@pytest.mark.parametrize("parse", [parse_chunk, parse_chunk_strict])
def test_a_header_in_any_quoting_and_case_is_skipped_never_rejected(
    header: str, parse: object
) -> None:
    stats = ChunkStats()
    data = f"{header}\n{GOOD}\n".encode()
    batches = list(parse(data, 0, 10, stats))  # type: ignore[operator]
    assert stats.rows_rejected == 0 and stats.rows_read == 1 and stats.rows_valid == 1
    assert sum(len(b) for b in batches) == 1


def test_a_header_in_another_column_order_is_refused_with_a_reason() -> None:
    _, stats = _chunk(f'"price","id","expiration_date"\n{GOOD}\n'.encode())
    assert stats.rows_rejected == 1
    assert "they must come in the order id,price,expiration_date" in stats.rejects[0][1]


def test_header_is_only_skipped_on_the_first_line_of_the_file() -> None:
    _, stats = _chunk(b"id,price,expiration_date\n", start=100)
    assert stats.rows_rejected == 1


def test_rejects_carry_line_numbers_within_the_chunk() -> None:
    _, stats = _chunk(f"{GOOD}\nbad\n{GOOD}\nx,-1,2018-08-04 05:32:31 +0200\n".encode())
    assert [line for line, _ in stats.rejects] == [2, 4]
    assert stats.rows_read == 4 and stats.rows_valid == 2 and stats.rows_rejected == 2


def test_last_row_of_a_batch_wins_and_its_order_is_the_byte_offset_of_its_line() -> None:
    first = b"A,1,2018-08-04 05:32:31 +0200\n"
    data = first + b"a,2,2018-08-04 05:32:31 +0200\n"
    batches, _ = _chunk(data, start=1000)
    (batch,) = batches
    doc = bson.decode(batch["a"])
    assert doc["price"] == 2 and doc["o"] == 1000 + len(first) and "id" not in doc


# --- what real CSV writers produce: every accepted form, round trip through csv.writer ----

valid_prices = st.one_of(
    st.integers(0, 10**30).map(str),
    prices.map(repr),  # shortest round-trip text: '60.683466', '1e+300', '5e-324'
    st.from_regex(
        r"(?:[0-9]{1,6}\.[0-9]{0,6}|\.[0-9]{1,6}|[0-9]{1,3}[eE][+-]?[0-9]{1,2})", fullmatch=True
    ),
)
moments = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59))
fractions = st.one_of(st.just(""), st.from_regex(r"\.[0-9]{1,9}", fullmatch=True))
zones = st.one_of(
    st.sampled_from(["", "Z", "+02:00", "-03:30", "+0200", " +0200 CEST", " -0500", " +0000 UTC"]),
    st.from_regex(r" [+-](0[0-9]|1[0-4])[0-5][0-9]( [A-Za-z0-9+_/-]{1,32})?", fullmatch=True),
    st.from_regex(r"[+-](0[0-9]|1[0-4]):?[0-5][0-9]", fullmatch=True),
)


@st.composite
def valid_dates(draw: st.DrawFn) -> str:
    d = draw(moments)
    sep = draw(st.sampled_from(" T"))
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}{sep}{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
        f"{draw(fractions)}{draw(zones)}"
    )


valid_rows = st.tuples(ids, valid_prices, valid_dates())


@settings(max_examples=300)
@given(
    rows=st.lists(valid_rows, min_size=1, max_size=30),
    quoting=st.sampled_from([csv.QUOTE_ALL, csv.QUOTE_MINIMAL, csv.QUOTE_NONNUMERIC]),
    eol=st.sampled_from(["\r\n", "\n"]),
)
def test_rows_written_by_csv_writer_read_back_exactly(
    rows: list[tuple[str, str, str]], quoting: int, eol: str
) -> None:
    buf = io.StringIO()
    csv.writer(buf, quoting=quoting, lineterminator=eol).writerows(rows)
    data = buf.getvalue()
    for line, (row_id, price, date) in zip(data.splitlines(), rows, strict=True):
        assert parse_row(line) == (row_id, float(price), date)
    stats = ChunkStats()
    docs = [bson.decode(d) for b in parse_chunk(data.encode(), 0, 10**6, stats) for d in b.values()]
    assert stats.rows_valid == len(rows) and stats.rows_rejected == 0
    last = {row_id.lower(): (row_id, float(price), date) for row_id, price, date in rows}
    assert {d["_id"]: (d.get("id", d["_id"]), d["price"], d["expiration_date"]) for d in docs} == (
        last
    )


@settings(max_examples=200)
@given(rows=st.lists(valid_rows, min_size=1, max_size=10))
def test_numbers_left_unquoted_by_quote_nonnumeric_read_back(
    rows: list[tuple[str, str, str]],
) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC)
    writer.writerows((row_id, float(price), date) for row_id, price, date in rows)
    for line, (row_id, price, date) in zip(buf.getvalue().splitlines(), rows, strict=True):
        assert parse_row(line) == (row_id, float(price), date)


@settings(max_examples=200)
@given(
    row_id=st.text(st.sampled_from('ab,"\t '), min_size=1, max_size=8),
    date=valid_dates(),
    quoting=st.sampled_from([csv.QUOTE_ALL, csv.QUOTE_MINIMAL]),
)
def test_quoted_commas_and_quotes_are_unquoted_before_validation(
    row_id: str, date: str, quoting: int
) -> None:
    buf = io.StringIO()
    csv.writer(buf, quoting=quoting, lineterminator="").writerow([row_id, "1", date])
    value = row_id.strip(" \t")
    if value and set(value) <= {"a", "b"}:
        assert parse_row(buf.getvalue()) == (value, 1.0, date)
    else:
        with pytest.raises(RowError, match=r"id is empty|characters other than") as exc:
            parse_row(buf.getvalue())
        if value:
            assert repr(value) in str(exc.value)  # the field as the writer meant it, unquoted


@settings(max_examples=500)
@given(line=st.text(st.sampled_from("a1,\"'.-:T"), min_size=1, max_size=40))
@example(line="," * 9 + 'a"')  # field 10: the reason's field number has two digits
def test_quoting_agrees_with_csv_reader_or_is_refused_with_a_reason(line: str) -> None:
    """RFC 4180 semantics, as ``csv.reader(strict=True)`` reads them; stricter where it is
    lenient (a quote inside an unquoted field), and always a reason naming the field."""
    try:
        (expected,) = csv.reader([line], strict=True)
    except csv.Error:
        expected = None
    try:
        fields = split_fields(line)
    except RowError as exc:
        assert re.fullmatch(r"malformed quoting in field \d+: .+", str(exc))
        assert expected is None or any('"' in f for f in expected), line
        return
    assert fields == expected, line


def test_spaces_around_quoted_fields_are_trimmed() -> None:
    assert parse_row(' "a" ,\t"1.5"\t, "2018-08-04 05:32:31" ') == (
        "a",
        1.5,
        "2018-08-04 05:32:31",
    )


EDGE_YEARS = st.sampled_from([0, 1, 1900, 2000, 2019, 2020, 2100, 2400, 9999])


@settings(max_examples=1000)
@given(
    year=st.one_of(EDGE_YEARS, st.integers(0, 9999)),
    month=st.integers(0, 13),
    day=st.one_of(st.sampled_from([28, 29, 30, 31]), st.integers(0, 32)),
    hour=st.integers(0, 25),
    minute=st.integers(0, 61),
    second=st.integers(0, 61),
    sep=st.sampled_from(" T"),
    zone=st.sampled_from(["", "Z", "+02:00", " +0200 CEST", ".5"]),
)
@example(2020, 2, 29, 0, 0, 0, " ", "")
@example(2100, 2, 29, 0, 0, 0, "T", "Z")
@example(2000, 2, 29, 23, 59, 59, " ", "")
@example(0, 1, 1, 0, 0, 0, " ", "")
@example(2018, 4, 31, 0, 0, 0, " ", "")
@example(2018, 12, 31, 23, 59, 60, " ", "")
def test_calendar_validity_agrees_with_the_standard_library(
    year: int, month: int, day: int, hour: int, minute: int, second: int, sep: str, zone: str
) -> None:
    text = f"{year:04d}-{month:02d}-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}{zone}"
    try:
        datetime(year, month, day, hour, minute, second)
        real = True
    except ValueError:
        real = False
    try:
        check_expiration_date(text)
        accepted = True
    except RowError:
        accepted = False
    assert accepted == real, text
    # The bulk fast path takes exactly the same dates.
    assert (FAST_LINE_RE.fullmatch(f"a,1,{text}".encode()) is not None) == real, text
