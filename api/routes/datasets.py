"""Which dataset is serving."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from api.responses import json_response
from api.schemas import ActiveDatasetOut, Problem
from api.services import Services, get_services
from shared.datasets import read_active
from shared.timeutil import iso

router = APIRouter(tags=["datasets"])


@router.get(
    "/datasets/active",
    response_model=ActiveDatasetOut,
    responses={404: {"model": Problem}, 503: {"model": Problem}},
    summary="The dataset version lookups are served from",
)
async def active_dataset(services: Services = Depends(get_services)) -> Response:
    active = await read_active(services.db)
    if active is None:
        return json_response({"detail": "no dataset has been loaded yet"}, status_code=404)
    return json_response(
        {
            "version": active.version,
            "rows": active.rows,
            "job_id": active.job_id,
            "activated_at": iso(active.activated_at),
        }
    )
