"""Per-request and per-job context that every log line carries.

Context variables follow each asyncio task and each Celery task invocation, so concurrent
requests in one API process never see each other's ids.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("job_id", default=None)


class ContextFilter(logging.Filter):
    """Copies the current ids onto the record (as attributes formatters can use)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id, job_id = request_id_var.get(), job_id_var.get()
        parts = []
        if request_id:
            parts.append(f"request_id={request_id}")
        if job_id:
            parts.append(f"job_id={job_id}")
        record.request_id = request_id
        record.job_id = job_id
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return True
