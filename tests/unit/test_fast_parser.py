"""The fast path must never accept what the strict validator rejects, nor encode differently.

Lines are built from near-valid pieces (calendar edges, leap days, offsets, case, spacing,
CR, odd bytes) so that both sides of every rule in the fast regex get exercised.
"""

from __future__ import annotations

import random

import bson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shared.fileformat.bucket_layout import bucket_document, encode_element, row_of
from shared.fileformat.fast_parser import (
    FAST_LINE_RE,
    QUOTED_LINE_RE,
    encode_run,
    encode_run_elements,
)
from shared.fileformat.promotion_rows import (
    ChunkStats,
    RowError,
    encode_document,
    parse_chunk,
    parse_chunk_rows,
    parse_chunk_strict,
    parse_row,
)

two = st.integers(0, 99).map(lambda n: f"{n:02d}")
ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{1,66}", fullmatch=True),
    st.sampled_from(["", "a b", "é", "ID", "a.b", '"a"', " a", "a\t"]),
)
prices = st.one_of(
    st.from_regex(r"[0-9]{0,22}(\.[0-9]{0,3})?([eE][+-]?[0-9]{1,3})?", fullmatch=True),
    st.sampled_from(["-1", ".5", "5.", "1e400", "nan", "inf", "+1", " 1", "1 ", "٣", "0x1"]),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(repr),
)
years = st.one_of(
    st.integers(0, 9999).map(lambda n: f"{n:04d}"),
    st.sampled_from(["1900", "2000", "2100", "2400", "2020", "2019", "0000", "٢٠١٨"]),
)
months = st.one_of(st.integers(0, 13).map(lambda n: f"{n:02d}"), st.just("1"))
days = st.one_of(st.integers(0, 32).map(lambda n: f"{n:02d}"), st.sampled_from(["28", "29"]))
hours = st.one_of(st.integers(0, 25).map(lambda n: f"{n:02d}"), st.integers(0, 9).map(str))
sixty = st.integers(0, 61).map(lambda n: f"{n:02d}")
fraction = st.sampled_from(["", ".1", ".123456789", ".1234567890", "."])
offsets = st.tuples(st.sampled_from("+-"), st.integers(0, 16), sixty).map(
    lambda t: f"{t[0]}{t[1]:02d}{t[2]}"
)
zones = st.sampled_from(["", " CEST", " UTC", " +0530", " " + "Z" * 33, " Europe/Paris", " é"])


@st.composite
def dates(draw: st.DrawFn) -> str:
    stamp = f"{draw(years)}-{draw(months)}-{draw(days)}"
    clock = f"{draw(hours)}:{draw(sixty)}:{draw(sixty)}{draw(fraction)}"
    sep = draw(st.sampled_from(" T"))
    if draw(st.booleans()):
        return f"{stamp}{sep}{clock} {draw(offsets)}{draw(zones)}"
    iso = draw(
        st.sampled_from(
            [
                *("Z", "+02:00", "+0200", "", "-14:00", "+15:00", "+02:60", "z", "+00", "-03"),
                *(" UTC", " GMT", " Z", " CET", "+05:30 IST", " +02:00", "+00 UTC", "+0"),
            ]
        )
    )
    return f"{stamp}{sep}{clock}{iso}"


def _quote(field: str, how: int) -> str:
    if how == 1:
        return '"' + field.replace('"', '""') + '"'
    if how == 2:
        return f' "{field}" '
    if how == 3:
        return f'"{field}'
    if how == 4:
        return f'{field}"x'
    return field


@st.composite
def lines(draw: st.DrawFn) -> str:
    fields = [draw(ids), draw(prices), draw(dates())]
    if draw(st.integers(0, 9)) == 0:
        fields.append(draw(st.sampled_from(["", "x"])))
    if draw(st.integers(0, 3)) == 0:  # RFC 4180 quotes, well-formed or not
        fields = [_quote(f, draw(st.sampled_from([0, 1, 1, 1, 2, 3, 4]))) for f in fields]
    line = ",".join(fields)
    mutation = draw(st.integers(0, 12))
    if mutation == 0:
        line = f" {line}\t"
    elif mutation == 1:
        line += "\r"
    elif mutation == 2:
        line = draw(st.text(max_size=40))
    elif mutation == 3:
        line = ""
    elif mutation == 4:
        line = "id,price,expiration_date"
    return line


def _check_one(line: bytes) -> None:
    quoted = FAST_LINE_RE.fullmatch(line) is None
    if quoted and QUOTED_LINE_RE.fullmatch(line) is None:
        return
    row_id, price, date = parse_row(line.decode())  # never raises RowError
    keys, docs = encode_run(line + b"\n", 42, quoted)
    assert keys == [row_id.lower()]
    assert docs == [encode_document(row_id, price, date, 42)]


def _fast(line: bytes) -> bool:
    return FAST_LINE_RE.fullmatch(line) is not None or QUOTED_LINE_RE.fullmatch(line) is not None


@settings(max_examples=1000)
@given(lines())
@example("a,1,2020-02-29 00:00:00 +0000")
@example("a,1,2000-02-29 00:00:00 +0000")
@example("a,1,2100-02-29 00:00:00 +0000")
@example("a,1,0000-02-29 00:00:00 +0000")
@example("A,1,2018-04-31 00:00:00 +0000")
@example("A,99999999999999999999.5,2018-12-31 23:59:59.999999999 +1459 Z")
@example('"A","1","2018-12-31T23:59:59Z"')
@example('A,1,"2018-12-31 23:59:59 +0200 CEST"')
@example('"0000",1,"0000-02-29 00:00:00"')
def test_fast_line_is_accepted_by_the_strict_validator_and_encoded_the_same(line: str) -> None:
    raw = line.encode("utf-8", errors="surrogateescape")
    _check_one(raw)
    if not _fast(raw) and "\r" not in line:
        try:
            _, price, date = parse_row(line)
        except RowError:
            return
        # Valid lines the fast path leaves to the strict one: rare shapes only.
        assert (
            " " in line.replace(date, "")
            or "\t" in line
            or not line.isascii()
            or "e" in line.lower().replace(date.lower(), "")
            or len(f"{price:f}".split(".")[0]) > 20
            or len(line) > 200
        ), line


def _agrees(line: str) -> bool:
    """Fast and strict agree on ``line``; True when the fast path took it."""
    raw = line.encode()
    try:
        parse_row(line)
        strict_ok = True
    except RowError:
        strict_ok = False
    fast_ok = _fast(raw)
    assert strict_ok or not fast_ok, line
    _check_one(raw)
    return fast_ok


def test_every_date_and_time_field_value_exhaustively() -> None:
    """Each field of the common shape swept over and past its range, the rest valid."""
    taken = 0
    for year in ("0000", "1900", "2000", "2019", "2020", "2100", "2400", "9999"):
        for month in range(14):
            for day in range(33):
                taken += _agrees(f"a,1,{year}-{month:02d}-{day:02d} 05:32:31 +0200 CEST")
    for hour in range(26):
        for minute in range(62):
            taken += _agrees(f"a,1,2018-08-04 {hour:02d}:{minute:02d}:{minute:02d} +0200")
    for sign in "+-":
        for off_h in range(17):
            for off_m in range(62):
                offset = f"{sign}{off_h:02d}{off_m:02d}"
                taken += _agrees(f"a,1,2018-08-04 05:32:31 {offset} UTC")
                taken += _agrees(f"a,1,2018-08-04T05:32:31{offset[:3]}:{offset[3:]}")
                taken += _agrees(f'"a","1","2018-08-04T05:32:31{offset}"')
    for zone in ("", "Z", ".5", ".123456789Z", " UTC", "z", " Z", "+02", "+02:0"):
        for sep in " Tt":
            _agrees(f"a,1,2018-08-04{sep}05:32:31{zone}")
    assert taken > 8000  # the sweep exercised the fast path, not only the fallback


def test_id_and_price_edges() -> None:
    for row_id in ("a" * 64, "a" * 65, "A-b_C9", "", "a b", "a.b", "é"):
        _agrees(f"{row_id},1,2018-08-04 05:32:31 +0200")
    for price in ("0", "1" * 20, "1" * 21, "1" * 20 + "." + "1" * 100, "." + "1" * 100, "5.", "-0"):
        _agrees(f"a,{price},2018-08-04 05:32:31 +0200")
    for zone in ("", " Z", " " + "Z" * 32, " " + "Z" * 33, " A/B+C_D-E", " A.B"):
        _agrees(f"a,1,2018-08-04 05:32:31 +0200{zone}")
    for line in (
        '"a","1","2018-08-04 05:32:31"',
        '"a",1,2018-08-04 05:32:31',
        "a,1,2018-08-04T05:32:31",
    ):
        assert _agrees(line)
    for line in (
        '"a""",1,2018-08-04 05:32:31',
        '"a,1,2018-08-04 05:32:31',
        '"a"1,1,x',
        "a,1,2018-08-04",
    ):
        assert not _agrees(line)


def _run(parse: object, data: bytes, start: int, batch_rows: int) -> tuple[object, object]:
    stats = ChunkStats()
    batches = list(parse(data, start, batch_rows, stats))  # type: ignore[operator]
    return batches, stats


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            lines(),
            st.just("a,1,2018-08-04 05:32:31 +0200 CEST"),
            st.just('"b","2.5","2018-08-04T05:32:31Z"'),  # runs of quoted lines
        ),
        max_size=60,
    ),
    st.integers(1, 7),
    st.sampled_from([0, 1, 1000]),
    st.booleans(),
    st.booleans(),
    st.binary(max_size=4),
)
def test_parse_chunk_matches_the_strict_line_by_line_parser(
    rows: list[str], batch_rows: int, start: int, bom: bool, crlf: bool, tail: bytes
) -> None:
    eol = "\r\n" if crlf else "\n"
    data = (("\ufeff" if bom else "") + "".join(r + eol for r in rows)).encode(
        "utf-8", errors="surrogateescape"
    ) + tail
    assert _run(parse_chunk, data, start, batch_rows) == _run(
        parse_chunk_strict, data, start, batch_rows
    )


def test_long_runs_with_duplicates_batch_like_the_strict_parser() -> None:
    rng = random.Random(7)
    rows = [
        f"{rng.choice(['a', 'B', 'c', 'Dd', 'x' + str(i)])},{i}.5,2018-08-04 05:32:31 +0200 CEST"
        for i in range(10_000)
    ]
    rows[5000] = "bad line"
    data = "".join(f"{r}\n" for r in rows).encode()
    for batch_rows in (1, 3, 999, 5000, 20_000):
        fast, strict = (
            _run(parse_chunk, data, 10, batch_rows),
            _run(parse_chunk_strict, data, 10, batch_rows),
        )
        assert fast == strict
    doc = bson.decode(fast[0][0]["dd"])  # type: ignore[index]
    assert doc["id"] == "Dd"


def test_orders_of_quoted_lines_are_the_byte_offsets_of_the_lines_as_written() -> None:
    lines = [b'"a%d","1","2018-08-04 05:32:31 +0200 CEST"\n' % i for i in range(5)]
    batches, _ = _run(parse_chunk, b"".join(lines), 100, 10)
    (batch,) = batches  # type: ignore[misc]
    orders = [bson.decode(batch[f"a{i}"])["o"] for i in range(5)]
    assert orders == [100 + sum(map(len, lines[:i])) for i in range(5)]


def _rows_of_strict(data: bytes, start: int) -> tuple[list[tuple[str, float, str]], ChunkStats]:
    """Every row the strict parser accepts, in file order (batch_rows 1: no merging)."""
    stats = ChunkStats()
    rows = []
    for batch in parse_chunk_strict(data, start, 1, stats):
        for raw in batch.values():
            doc = bson.decode(raw)
            rows.append((doc.get("id", doc["_id"]), doc["price"], doc["expiration_date"]))
    return rows, stats


def _decoded_elements(keys: list[bytes], elements: list[bytes]) -> list[tuple[str, float, str]]:
    out = []
    for key, element in zip(keys, elements, strict=True):
        row = bson.decode(bucket_document(0, [element]))["r"]
        assert list(row) == [key.decode()] and isinstance(row[key.decode()], bytes)
        found = row_of(key.decode(), row[key.decode()])
        assert (found["id"] == key.decode()) == (element[len(key) + 15] == 0)  # n: 0 or len
        out.append((found["id"], found["price"], found["expiration_date"]))
    return out


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            lines(),
            st.just("a,1,2018-08-04 05:32:31 +0200 CEST"),
            st.just("A,2,2018-08-04 05:32:31"),  # the same key, written otherwise
            st.just('"b","2.5","2018-08-04T05:32:31Z"'),
        ),
        max_size=60,
    ),
    st.sampled_from([0, 1, 1000]),
    st.booleans(),
    st.booleans(),
)
def test_parse_chunk_rows_gives_the_strict_parsers_rows_in_file_order(
    rows: list[str], start: int, bom: bool, crlf: bool
) -> None:
    eol = "\r\n" if crlf else "\n"
    data = (("\ufeff" if bom else "") + "".join(r + eol for r in rows)).encode(
        "utf-8", errors="surrogateescape"
    )
    stats = ChunkStats()
    keys, elements = parse_chunk_rows(data, start, stats)
    want, want_stats = _rows_of_strict(data, start)
    assert _decoded_elements(keys, elements) == want
    assert keys == [row[0].lower().encode() for row in want]
    assert stats == want_stats


@given(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True), st.booleans())
def test_bulk_elements_are_exactly_encode_element(row_id: str, quoted: bool) -> None:
    date = "2018-08-04 05:32:31 +0200 CEST"
    line = f'"{row_id}","9.68","{date}"' if quoted else f"{row_id},9.68,{date}"
    keys, elements = encode_run_elements(line.encode() + b"\n", quoted)
    key = row_id.lower().encode()
    assert keys == [key]
    assert elements == [encode_element(key, row_id.encode(), 9.68, date.encode())]
