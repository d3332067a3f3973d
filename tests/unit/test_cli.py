"""The CLI's command line, progress lines and exit codes (the API itself: tests/e2e)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.client import EXIT_REFUSED, EXIT_UNAVAILABLE
from cli.ingest import report
from cli.main import cli, main, rejects_path
from cli.progress import CountingReader, Reporter, human_seconds, job_summary
from devstack.services import free_port

API_COMMANDS = ("ingest", "jobs", "job", "rejects", "datasets", "activate")


def test_every_api_command_takes_url_and_token_from_options_or_the_environment() -> None:
    runner = CliRunner()
    listing = runner.invoke(cli, ["--help"]).output
    for command in (*API_COMMANDS, "generate"):
        assert command in listing
    for command in API_COMMANDS:
        text = runner.invoke(cli, [command, "--help"], terminal_width=200).output
        assert "--url" in text and "PROMOTIONS_URL" in text, command
        assert "--token" in text and "WRITE_TOKEN" in text and "READ_TOKEN" in text, command


def test_usage_errors_exit_2_with_a_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["activate", "zero"]) == 2
    assert "'zero' is not a valid integer" in capsys.readouterr().err
    assert main(["ingest", "/no/such/file.csv"]) == 2
    assert main(["frobnicate"]) == 2


def test_rejects_path_quotes_the_id() -> None:
    assert rejects_path("5f0c2a3e") == "/jobs/5f0c2a3e/rejects"
    assert rejects_path("a/../b") == "/jobs/a%2F..%2Fb/rejects"


class _Stub(BaseHTTPRequestHandler):
    """A stand-in for GET /jobs/{id}/rejects (built on another branch): records the request."""

    seen: list[dict[str, Any]] = []  # noqa: RUF012

    def do_GET(self) -> None:
        self.seen.append({"path": self.path, "auth": self.headers.get("Authorization")})
        if self.path == "/jobs/j1/rejects":
            body = b"line,reason\n7,price '-1' is negative\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
        elif self.path.startswith("/jobs/guarded"):
            body = b'{"detail": "this endpoint needs \'Authorization: Bearer <token>\'"}'
            self.send_response(401 if self.headers.get("Authorization") is None else 403)
            self.send_header("Content-Type", "application/json")
        else:
            body = b'{"detail": "job nope not found"}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Stub.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_rejects_streams_the_csv_to_a_file_or_stdout(
    stub_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rejects.csv"
    assert main(["rejects", "j1", "--url", stub_url, "--token", "t", "-o", str(out)]) == 0
    assert out.read_text() == "line,reason\n7,price '-1' is negative\n"
    assert _Stub.seen == [{"path": "/jobs/j1/rejects", "auth": "Bearer t"}]
    assert main(["rejects", "nope", "--url", stub_url]) == EXIT_REFUSED
    assert "rejects of job nope: 404 job nope not found" in capsys.readouterr().err


def test_an_unreachable_api_exits_4_and_names_the_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("PROMOTIONS_URL", url)
    assert main(["datasets"]) == EXIT_UNAVAILABLE
    assert f"cannot reach {url}" in capsys.readouterr().err


def test_progress_lines_off_a_terminal_show_bytes_rate_and_eta(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reporter = Reporter(interval_s=0, terminal=False)
    data = tmp_path / "f.csv"
    data.write_bytes(b"x" * 300_000)
    reporter.upload_started("f.csv", 300_000)
    with data.open("rb") as f:
        reader = CountingReader(f, reporter.upload_progress)
        while reader.read(100_000):
            pass
    reporter.upload_done()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("uploading f.csv  300.0 KB")
    assert "100.0 KB/300.0 KB (33.3%)" in lines[1] and "/s  ETA " in lines[1]
    assert "[####################]" in lines[-1] and "(100.0%)" in lines[-1]
    assert len(lines) == 4  # start + one per read; the read at the end adds nothing

    reporter.job_progress(
        {
            "job_id": "5f0c2a3e9b8d",
            "status": "running",
            "phase": "loading",
            "chunks_total": 10,
            "chunks_done": 4,
            "rows_loaded": 40_000,
            "rows_per_s": 5000.0,
            "eta_s": 12.0,
            "rows_rejected": 3,
        }
    )
    line = capsys.readouterr().err
    assert "[########............]  job 5f0c2a3e  loading" in line
    assert "4/10 chunks  40,000 rows  5,000 rows/s  ETA 12s  3 rejected" in line


def test_job_summary_and_durations_read_like_a_person_would_say_them() -> None:
    assert job_summary({"status": "queued", "rows_loaded": 0}) == "0 rows  0 rejected"
    assert [human_seconds(s) for s in (None, 2.25, 42, 61, 3725)] == [
        "?",
        "2.2s",
        "42s",
        "1m01s",
        "1h02m",
    ]


def test_partner_text_in_tables_is_shown_as_sent_never_as_markup() -> None:
    """File names and rejected values come from partners: ``[/b]`` crashed rich's markup
    parser (exit 1, which means "job failed") and ``[final]`` vanished."""
    from rich.console import Console

    from cli.tables import job_table, jobs_table

    job = {
        "job_id": "j1",
        "status": "failed",
        "phase": "loading",
        "original_name": "promos[/b] [final].csv",
        "source": "inbox",
        "bytes_total": 10,
        "created_at": "2026-11-30T10:00:00Z",
        "error": "too many bad rows: 'price [/] not a number'",
        "rows_rejected": 1,
        "rejects": [{"line": 3, "reason": "bad price '[red]x'"}],
    }
    console = Console(width=400, record=True)
    console.print(jobs_table([job]))
    console.print(job_table(job))
    text = console.export_text()
    assert "promos[/b] [final].csv" in text
    assert "'price [/] not a number'" in text and "bad price '[red]x'" in text


def test_control_characters_in_partner_text_never_reach_the_terminal() -> None:
    """A file name or rejected line holding a terminal escape sequence (clear the screen,
    set the window title) is shown escaped; the table's own newlines stay."""
    import io

    from rich.console import Console

    from cli.tables import job_table, jobs_table

    job = {
        "job_id": "j1",
        "status": "failed",
        "phase": "loading",
        "original_name": "a\x1b[2J\x1b]0;pwned\x07.csv",
        "source": "inbox",
        "bytes_total": 10,
        "error": "line 2: bad price '\x1b[31mx'",
        "rows_rejected": 2,
        "rejects": [{"line": 2, "reason": "bad\rprice"}, {"line": 3, "reason": "x\x9bq"}],
    }
    out = io.StringIO()
    console = Console(file=out, width=400, force_terminal=True, color_system=None)
    console.print(jobs_table([job]))
    console.print(job_table(job))
    text = out.getvalue()
    for control in ("\x1b[2J", "\x1b]0", "\x07", "\x1b[31m", "\r", "\x9b"):
        assert control not in text
    assert "a\\x1b[2J\\x1b]0;pwned\\x07.csv" in text
    assert "line 2: bad\\x0dprice" in text and "line 3: x\\x9bq" in text


def test_a_job_id_as_typed_stays_one_path_segment() -> None:
    from cli.client import job_path

    assert job_path("5f0c2a3e") == "/jobs/5f0c2a3e"
    assert job_path("../datasets") == "/jobs/..%2Fdatasets"


def test_a_refused_token_says_how_to_give_one(
    stub_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMOTIONS_TOKEN", raising=False)
    monkeypatch.delenv("WRITE_TOKEN", raising=False)
    assert main(["rejects", "guarded", "--url", stub_url]) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert "401" in err and "pass the write token with --token or set PROMOTIONS_TOKEN" in err
    assert main(["rejects", "guarded", "--url", stub_url, "--token", "bad"]) == EXIT_REFUSED
    refused = capsys.readouterr().err
    assert "403" in refused and "check the token given with --token or PROMOTIONS_TOKEN" in refused


def test_a_failed_job_line_says_after_how_long_once(capsys: pytest.CaptureFixture[str]) -> None:
    job = {
        "job_id": "j1",
        "status": "failed",
        "error": "none of the first 50 rows is valid",
        "phase_durations_s": {"queued": 0.02, "splitting": 0.01, "total": 0.03},
    }
    assert report(job) == 1
    line = capsys.readouterr().err.strip()
    assert line == (
        "job j1 failed: none of the first 50 rows is valid (after 0.0s: queued 0.0s, "
        "splitting 0.0s)"
    )


def test_generate_says_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.csv"
    assert main(["generate", "100", str(path), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote 100 rows to {path} (") and "KB" in out
