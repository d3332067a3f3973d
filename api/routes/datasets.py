"""Which dataset is serving, which versions are kept, and rollback to one of them."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from api.auth import require_writer
from api.responses import json_response
from api.schemas import ActiveDatasetOut, DatasetVersionOut, Problem
from api.services import Services, get_services
from api.store_gate import deadline_in
from shared.dataset.datasets import ActiveDataset, list_versions_async, read_active
from shared.dataset.lifecycle import ActivationRefused, VersionRecord, activate_by_hand
from shared.infra.timeutil import iso
from shared.readpath.pointer_channel import announce_active_async
from shared.readpath.warmup import warm_version_async

log = logging.getLogger(__name__)
router = APIRouter(tags=["datasets"])


def _deadline(services: Services) -> float:
    return deadline_in(services.settings.datasets_timeout_ms / 1000)


def _active_out(active: ActiveDataset) -> dict[str, Any]:
    return {
        "version": active.version,
        "rows": active.rows,
        "job_id": active.job_id,
        "activated_at": iso(active.activated_at),
        "buckets": active.buckets,
    }


@router.get(
    "/datasets/active",
    response_model=ActiveDatasetOut,
    responses={404: {"model": Problem}, 503: {"model": Problem}},
    summary="The dataset version lookups are served from",
)
async def active_dataset(services: Services = Depends(get_services)) -> Response:
    with services.gate.call(_deadline(services)):
        active = await read_active(services.db)
    if active is None:
        return json_response({"detail": "no dataset has been loaded yet"}, status_code=404)
    return json_response(_active_out(active))


@router.get(
    "/datasets",
    response_model=list[DatasetVersionOut],
    responses={503: {"model": Problem}},
    summary="Dataset versions, newest first, with their state and which one is active",
)
async def list_datasets(
    limit: int = Query(default=20, ge=1, le=200), services: Services = Depends(get_services)
) -> Response:
    with services.gate.call(_deadline(services)):
        active = await read_active(services.db)
        docs = await list_versions_async(services.db, limit)
    return json_response(
        [
            {
                "version": doc["version"],
                "state": VersionRecord.from_doc(doc).state,
                "rows": doc.get("rows"),
                "job_id": doc.get("job_id"),
                "created_at": iso(doc.get("created_at")),
                "activated_at": iso(doc.get("activated_at")),
                "buckets": doc.get("buckets"),
                "active": active is not None and doc["version"] == active.version,
            }
            for doc in docs
        ]
    )


@router.post(
    "/datasets/{version}/activate",
    response_model=ActiveDatasetOut,
    responses={
        401: {"model": Problem},
        403: {"model": Problem},
        409: {"model": Problem, "description": "Unknown, failed, removed or still loading"},
        503: {"model": Problem},
    },
    dependencies=[Depends(require_writer)],
    summary="Serve a kept, complete version again (instant rollback)",
)
async def activate_dataset(
    version: int = Path(ge=1), services: Services = Depends(get_services)
) -> Response:
    await warm_version_async(services.db, services.redis, version, services.settings)
    try:
        active = await asyncio.to_thread(activate_by_hand, services.lifecycle_db, version)
    except ActivationRefused as exc:
        return json_response({"detail": str(exc)}, status_code=409)
    log.info("dataset version %d activated by hand (%d rows)", version, active.rows)
    # Other processes learn it from the channel (or their poll); this one at once.
    await announce_active_async(services.redis, version)
    await services.watcher.refresh()
    return json_response(_active_out(active))
