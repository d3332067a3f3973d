"""Job status, polled by uploaders until the job ends."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from api.responses import json_response
from api.schemas import JobStatus, Problem
from api.services import Services, get_services
from shared import job_records

router = APIRouter(tags=["ingestion"])


@router.get(
    "/jobs/{job_id}",
    response_model=JobStatus,
    responses={404: {"model": Problem}, 503: {"model": Problem}},
    summary="Progress and outcome of an ingestion job",
)
async def get_job(
    job_id: str = Path(max_length=64), services: Services = Depends(get_services)
) -> Response:
    doc = await job_records.get_job(services.db, job_id)
    if doc is None:
        return json_response({"detail": f"job {job_id} not found"}, status_code=404)
    return json_response(job_records.public_job(doc))


@router.get(
    "/jobs",
    response_model=list[JobStatus],
    summary="Recent jobs, newest first (without the rejects list)",
)
async def list_jobs(
    limit: int = Query(default=20, ge=1, le=200), services: Services = Depends(get_services)
) -> Response:
    docs = await job_records.list_jobs(services.db, limit)
    return json_response([job_records.public_job(doc) for doc in docs])
