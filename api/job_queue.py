"""Hands jobs to the worker over the Celery broker, by task name only."""

from __future__ import annotations

from celery import Celery
from kombu.exceptions import OperationalError

from shared.errors import BrokerUnavailable
from shared.infra.task_names import PLAN_JOB
from shared.settings import Settings


class JobQueue:
    def __init__(self, settings: Settings) -> None:
        self._celery = Celery("promotions-api", broker=settings.broker_url.get_secret_value())
        self._celery.conf.update(
            broker_connection_timeout=2,
            broker_connection_retry=False,
            broker_transport_options={
                "visibility_timeout": settings.broker_visibility_timeout_s,
                "socket_connect_timeout": 2,
                "socket_timeout": 5,
                "max_retries": 1,
            },
            task_serializer="json",
        )

    def enqueue_plan(self, job_id: str) -> None:
        """Blocking; call from a thread. Raises BrokerUnavailable if the broker is down."""
        try:
            self._celery.send_task(
                PLAN_JOB,
                args=[job_id],
                task_id=f"plan-{job_id}",
                retry=True,
                retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.5},
            )
        except (OperationalError, OSError) as exc:
            raise BrokerUnavailable(str(exc)) from exc

    def close(self) -> None:
        self._celery.close()
