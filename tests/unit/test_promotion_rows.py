import math

import bson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.promotion_rows import (
    ChunkStats,
    RowError,
    encode_document,
    parse_chunk,
    parse_row,
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
        ("a,1,2018-08-04 05:32:31", "no time zone offset"),
        ("a,1,04/08/2018 05:32", "is not 'YYYY-MM-DD"),
        ("a,1,2018-08-04 05:32:31 +9900", "invalid offset"),
        ('"a",1,2018-08-04 05:32:31 +0200', "quoted fields"),
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
