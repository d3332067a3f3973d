"""The benchmark scripts stay runnable: parse at a tiny size, the others' command lines."""

from __future__ import annotations

import importlib

import pytest

from bench import parse


def test_parse_bench_runs_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    parse.main(["--rows", "500", "--runs", "1", "--no-strict"])
    assert "rows/s per core" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name",
    [
        "bench.ingest",
        "bench.lookups",
        "bench.latency",
        "bench.api_scaling",
        "bench.switch",
        "bench.load",
        "bench.batch_reads",
        "bench.run_files",
        "bench.scale",
        "bench.insert_order",
        "bench.zipf",
        "bench.http_protocol",
        "bench.stall",
        "bench.api_memory",
        "bench.row_format",
        "bench.upload_sync",
    ],
)
def test_bench_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(name)
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0 and "--runs" in capsys.readouterr().out


def test_scale_windows_say_when_their_errors_came() -> None:
    from bench.scale import _window

    t0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
    due = [t0 + 0.1 * i for i in range(100)]  # 10 s at 10/s
    status = [503 if 40 <= i < 45 or i == 80 else 200 for i in range(100)]
    status[1] = 0  # unanswered: not in the window
    w = _window({"due": due, "latency": [0.001] * 100, "status": status}, t0, t0 + 10)
    assert (w["n"], w["errors"]) == (99, 6)
    assert w["errors_at"] == "08:00:04 (5), 08:00:08 (1)"


def test_scale_splits_a_loads_lookups_by_phase() -> None:
    from bench.scale import _phase_windows

    load = {"began": 100.0, "ended": 190.0}
    ph = {"at queued": 101.0, "at loading": 110.0, "at writing": 150.0, "loading": 40.0}
    assert _phase_windows("load 2", load, ph) == [
        ("load 2: upload and plan", 100.0, 110.0),
        ("load 2: map", 110.0, 150.0),
        ("load 2: reduce and switch", 150.0, 190.0),
    ]
    assert _phase_windows("load 1", load, {"at queued": 101.0}) == []  # failed before the map


def test_lookup_minutes_splits_by_window_and_status() -> None:
    from bench.lookup_minutes import by_window

    t0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
    due = [t0 + i for i in range(120)]
    status = [200 if i % 2 else 404 for i in range(120)]
    status[3] = 0  # unanswered: left out
    latency = [0.001 * (1 + i % 2) for i in range(120)]
    rows = by_window({"due": due, "latency": latency, "status": status}, 60)
    assert rows == [
        ["08:00:00", "200", "29", "2.0", "2.0"],
        ["08:00:00", "404", "30", "1.0", "1.0"],
        ["08:01:00", "200", "30", "2.0", "2.0"],
        ["08:01:00", "404", "30", "1.0", "1.0"],
    ]
