"""Jobs, one job and datasets as tables on stdout (``--json`` prints the API's JSON instead)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.progress import human_bytes, human_seconds
from shared.infra.safe_text import escape_controls

STATUS_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "held": "magenta",
    "running": "cyan",
    "finalizing": "cyan",
    "queued": "yellow",
}


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def _time(iso: str | None) -> str:
    return "-" if not iso else iso.replace("T", " ").split(".")[0].rstrip("Z")


def _status(job: dict[str, Any]) -> str:
    status = str(job["status"])
    style = STATUS_STYLE.get(status, "")
    return f"[{style}]{status}[/]" if style else status


def _as_sent(text: str) -> Text:
    """Partner text as sent, but inert: brackets are not read as rich markup
    (``promos[/b].csv`` raised a MarkupError) and control characters (a terminal escape
    sequence in a file name or a rejected line) are shown as escapes, never sent to the
    terminal (rich passes ESC through)."""
    return Text(escape_controls(text))


def _file(job: dict[str, Any]) -> Text:
    name = job.get("original_name")
    return _as_sent(name or f"{job.get('source')} {human_bytes(job['bytes_total'] or 0)}")


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(title="Recent jobs (newest first)", title_justify="left")
    for column in ("job", "status", "phase", "file", "submitted (UTC)", "rows", "rejected"):
        table.add_column(column, justify="right" if column in ("rows", "rejected") else "left")
    table.add_column("version", justify="right")
    table.add_column("took / ETA", justify="right")
    for job in jobs:
        durations = job.get("phase_durations_s") or {}
        took = (
            human_seconds(durations["total"])
            if "total" in durations
            else (f"ETA {human_seconds(job['eta_s'])}" if job.get("eta_s") is not None else "-")
        )
        table.add_row(
            job["job_id"],
            _status(job),
            _as_sent(str(job.get("phase"))),
            _file(job),
            _time(job.get("created_at")),
            _num(job.get("rows_loaded")),
            _num(job.get("rows_rejected")),
            _num(job.get("dataset_version")),
            took,
        )
    return table


def job_table(job: dict[str, Any]) -> Table:
    table = Table(title=f"Job {job['job_id']}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in job.items():
        if key in ("job_id", "rejects"):
            continue
        shown: str | Text
        if key == "status":
            shown = _status(job)
        elif key == "phase_durations_s" and value:
            shown = ", ".join(f"{k} {human_seconds(v)}" for k, v in value.items())
        elif isinstance(value, int) and not isinstance(value, bool):
            shown = _num(value)
        else:  # as sent (an error quotes the partner's values): never read as markup
            shown = _as_sent("-" if value is None else str(value))
        table.add_row(key, shown)
    rejects = job.get("rejects") or []
    if rejects:
        listed = Text("\n").join(_as_sent(f"line {r['line']}: {r['reason']}") for r in rejects[:10])
        more = len(rejects) - 10
        if more > 0 or (job.get("rows_rejected") or 0) > len(rejects):
            listed.append(f"\n… all of them: promotions rejects {job['job_id']}")
        table.add_row("rejects", listed)
    return table


def datasets_table(datasets: list[dict[str, Any]]) -> Table:
    table = Table(title="Datasets (newest first; * = serving)", title_justify="left")
    for column in ("", "version", "state", "rows", "job", "created (UTC)", "last activated"):
        table.add_column(column, justify="right" if column in ("version", "rows") else "left")
    for ds in datasets:
        table.add_row(
            "[bold magenta]*[/]" if ds.get("active") else "",
            str(ds["version"]),
            str(ds.get("state")),
            _num(ds.get("rows")),
            ds.get("job_id") or "-",
            _time(ds.get("created_at")),
            _time(ds.get("activated_at")),
        )
    return table


def show(table: Table) -> None:
    # Wide enough for full job ids when piped (no terminal to measure).
    Console(width=None if Console().is_terminal else 200).print(table)
