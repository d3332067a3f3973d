"""Celery application of the ingestion worker (Redis broker).

Tasks are acknowledged late and the broker redelivers a task whose worker died, so every
task is written to be idempotent. Prefetch is one task, so a long chunk never holds others
hostage on a busy process. Celery beat, run as its own process, schedules the drop-folder
scan and the stalled-job watchdog.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_init

from shared.infra.logging_setup import configure_logging
from shared.infra.task_names import CLEANUP_DATASETS, FAIL_STALLED_JOBS, SCAN_INBOX
from shared.settings import get_settings
from worker import (
    cpu_priority,
    heartbeat,  # noqa: F401  (the node's presence: started with the worker)
)

log = logging.getLogger(__name__)


def redelivery_options(visibility_timeout_s: int) -> dict[str, int]:
    """Broker options that bound redelivery of a lost worker's tasks by the visibility
    timeout plus at most 10 % of it (at most 10 s).

    Every worker sweeps the broker for unacknowledged tasks older than the visibility
    timeout; kombu's defaults sweep only every 10th tick of 10 s, adding up to 100 s (seen
    in the cluster test: 83 s after a 15 s timeout, so the watchdog failed the job). One
    sweep per tick is one small ZRANGE per worker. The sweep's lock is held for
    milliseconds; a host lost while holding it blocks every sweep until it expires, so it
    expires after the visibility timeout (kombu: 300 s) at most.
    """
    return {
        "visibility_timeout": visibility_timeout_s,
        "unacked_restore_interval": max(1, min(10, visibility_timeout_s // 10)),
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": min(300, visibility_timeout_s),
    }


settings = get_settings()
configure_logging(settings.log_level, settings.log_format)

app = Celery(
    "promotions",
    broker=settings.broker_url.get_secret_value(),
    include=["worker.tasks", "worker.inbox"],
)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    broker_transport_options=redelivery_options(settings.broker_visibility_timeout_s),
    broker_connection_retry_on_startup=True,
    worker_concurrency=settings.worker_concurrency,
    worker_send_task_events=True,
    task_send_sent_event=True,
    worker_hijack_root_logger=False,
    # Run `celery beat` once (one replica): it only enqueues these. A second beat is harmless
    # (inbox files are claimed once, the watchdog is idempotent), just wasteful. A run not
    # started within its period is dropped.
    beat_schedule={
        "fail-stalled-jobs": {
            "task": FAIL_STALLED_JOBS,
            "schedule": settings.watchdog_period_s,
            "options": {"expires": settings.watchdog_period_s},
        },
        # Collections of retired or failed versions, once their grace period has passed
        # (also catches a delayed cleanup that was lost and late inserts of failed jobs).
        "cleanup-datasets": {
            "task": CLEANUP_DATASETS,
            "schedule": settings.watchdog_period_s,
            "options": {"expires": settings.watchdog_period_s},
        },
        "scan-inbox": {
            "task": SCAN_INBOX,
            "schedule": settings.inbox_poll_seconds,
            "options": {"expires": settings.inbox_poll_seconds},
        },
    },
)


def _yield_cpu(**_: Any) -> None:
    """In the worker's main process, before the pool is forked (its processes inherit it)."""
    applied = cpu_priority.lower_priority(settings.worker_nice)
    log.info(
        "worker niceness %d%s",
        applied.niceness,
        ", its session's scheduling group lowered too" if applied.autogroup else "",
    )


worker_init.connect(_yield_cpu, weak=False)
