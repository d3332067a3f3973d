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
