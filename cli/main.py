"""``promotions``: the HTTP API from a terminal or a cron job, plus a test-file generator.

Results go to stdout (tables, or the API's JSON with ``--json``), progress and errors to
stderr; exit codes are in ``cli.client``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx

from cli.client import EXIT_OK, CliError, api, check, job_path
from cli.generate import generate
from cli.ingest import follow, ingest, report
from cli.progress import Reporter, human_bytes
from cli.tables import datasets_table, job_table, jobs_table, show

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_URL = "http://127.0.0.1:1321"


def api_options(command: F) -> F:
    """``--url`` and ``--token`` on every command that talks to the API."""
    command = click.option(
        "--url",
        envvar="PROMOTIONS_URL",
        default=DEFAULT_URL,
        show_default=True,
        help="API base URL [env PROMOTIONS_URL]",
    )(command)
    return click.option(
        "--token",
        envvar=["PROMOTIONS_TOKEN", "WRITE_TOKEN", "READ_TOKEN"],
        default=None,
        help="token: the write token for uploads and activation, the read token (or the "
        "write token) for jobs, rejects and datasets when the API asks for one "
        "[env PROMOTIONS_TOKEN, WRITE_TOKEN or READ_TOKEN]",
    )(command)


json_option = click.option("--json", "as_json", is_flag=True, help="print the API's JSON")


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Promotions service: upload files, follow jobs, inspect and roll back datasets.

    Exit codes: 0 done, 1 the job failed, 2 bad command line, 3 the API refused the
    request, 4 the API is unreachable or failing (retry later).
    """


@cli.command("generate")
@click.argument("rows", type=click.IntRange(min=0))
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--bad-ratio", type=click.FloatRange(0, 1), default=0.0, help="share of bad rows")
@click.option("--duplicate-ratio", type=click.FloatRange(0, 1), default=0.0, help="repeated ids")
@click.option("--gzip", "compress", is_flag=True, help="write gzip-compressed")
@click.option("--seed", type=int, default=None)
def generate_command(
    rows: int,
    file: Path,
    bad_ratio: float,
    duplicate_ratio: float,
    compress: bool,
    seed: int | None,
) -> int:
    """Write ROWS rows in the partner CSV format to FILE."""
    generate(
        rows,
        file,
        bad_ratio=bad_ratio,
        duplicate_ratio=duplicate_ratio,
        compress=compress,
        seed=seed,
    )
    click.echo(
        f"wrote {rows:,} rows to {file} ({human_bytes(file.stat().st_size)}"
        f"{', gzip' if compress else ''})"
    )
    return EXIT_OK


@cli.command("ingest")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="seconds between job polls (and between progress lines when not on a terminal)",
)
@api_options
def ingest_command(file: Path, interval: float, url: str, token: str | None) -> int:
    """Upload FILE, then follow its job until it ends (exit 1 if it fails)."""
    with api(url, token) as client:
        return ingest(client, file, Reporter(interval), interval)


@cli.command("jobs")
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
@json_option
@api_options
def jobs_command(limit: int, as_json: bool, url: str, token: str | None) -> int:
    """Recent jobs, newest first."""
    with api(url, token) as client:
        jobs = client.get_json("/jobs", "jobs", limit=limit)
    if as_json:
        _print_json(jobs)
    else:
        show(jobs_table(jobs))
    return EXIT_OK


@cli.command("job")
@click.argument("job_id")
@click.option("--follow", "follow_", is_flag=True, help="follow it to the end (exit 1 if it fails)")
@json_option
@api_options
def job_command(job_id: str, follow_: bool, as_json: bool, url: str, token: str | None) -> int:
    """One job: progress, outcome, phase durations and its first rejected lines."""
    with api(url, token) as client:
        if follow_:
            return report(follow(client, job_id, Reporter()))
        job = client.get_json(job_path(job_id), f"job {job_id}")
    if as_json:
        _print_json(job)
    else:
        show(job_table(job))
    return EXIT_OK


@cli.command("rejects")
@click.argument("job_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write to this file instead of stdout",
)
@api_options
def rejects_command(job_id: str, output: Path | None, url: str, token: str | None) -> int:
    """Every rejected line of a job, as CSV (line,reason,...), streamed."""
    what = f"rejects of job {job_id}"
    with api(url, token) as client, client.errors(what):
        timeout = httpx.Timeout(30.0, read=300.0)
        with client.http.stream("GET", rejects_path(job_id), timeout=timeout) as response:
            if not response.is_success:
                response.read()
                check(response, what)
            out = output.open("wb") if output else sys.stdout.buffer
            try:
                for chunk in response.iter_bytes():
                    out.write(chunk)
            finally:
                if output:
                    out.close()
                else:
                    out.flush()
    return EXIT_OK


def rejects_path(job_id: str) -> str:
    return f"{job_path(job_id)}/rejects"


@cli.command("datasets")
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
@json_option
@api_options
def datasets_command(limit: int, as_json: bool, url: str, token: str | None) -> int:
    """Dataset versions, newest first; * marks the one being served."""
    with api(url, token) as client:
        datasets = client.get_json("/datasets", "datasets", limit=limit)
    if as_json:
        _print_json(datasets)
    else:
        show(datasets_table(datasets))
    return EXIT_OK


@cli.command("activate")
@click.argument("version", type=click.IntRange(min=1))
@api_options
def activate_command(version: int, url: str, token: str | None) -> int:
    """Serve a kept, complete VERSION again (rollback); needs the write token."""
    with api(url, token) as client:
        active = client.post_json(f"/datasets/{version}/activate", f"activate version {version}")
    click.echo(f"version {active['version']} is active: {active['rows']:,} rows")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    try:
        code = cli.main(args=argv, prog_name="promotions", standalone_mode=False)
    except CliError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted (a job goes on on the server)", err=True)
        return 130
    return code if isinstance(code, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
