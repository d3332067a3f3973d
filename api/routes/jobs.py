"""Job status, polled by uploaders until the job ends, and its full reject report."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response, StreamingResponse

from api.responses import json_response
from api.schemas import JobStatus, Problem
from api.services import Services, get_services
from api.store_gate import deadline_in
from shared.dataset import job_records, lifecycle, reject_report

router = APIRouter(tags=["ingestion"])


def _deadline(services: Services) -> float:
    return deadline_in(services.settings.job_status_timeout_ms / 1000)


@router.get(
    "/jobs/{job_id}",
    response_model=JobStatus,
    responses={404: {"model": Problem}, 503: {"model": Problem}},
    summary="Progress and outcome of an ingestion job",
)
async def get_job(
    job_id: str = Path(max_length=64), services: Services = Depends(get_services)
) -> Response:
    with services.gate.call(_deadline(services)):
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
    with services.gate.call(_deadline(services)):
        docs = await job_records.list_jobs(services.db, limit)
    return json_response([job_records.public_job(doc) for doc in docs])


# The file lines the report covers (1 to N): every line, or for a job stopped early
# (REJECT_RATIO proven before the end) those up to the first chunk it never read.
LINES_COVERED = "Lines-Covered"
REJECTS_CSV_EXAMPLE = (
    "line,reason,raw\r\n"
    "7,price '-1' is negative,\"d018ef0b-dbd9-48f1-ac1a-eb4d90e57118,-1,2018-08-04 05:32:31\"\r\n"
)


@router.get(
    "/jobs/{job_id}/rejects",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Every rejected line: line number in the file, reason, the line "
            f"as read (first {reject_report.RAW_CHARS} characters)",
            "content": {"text/csv": {"schema": {"type": "string"}, "example": REJECTS_CSV_EXAMPLE}},
            "headers": {
                LINES_COVERED: {
                    "description": "The report covers the file's lines 1 to this number: all "
                    "of them, or for a job stopped early those it read in order",
                    "schema": {"type": "integer"},
                }
            },
        },
        404: {"model": Problem, "description": "Unknown job"},
        409: {"model": Problem, "description": "The job is still running"},
        410: {"model": Problem, "description": "The report was removed (retention period over)"},
        503: {"model": Problem},
    },
    summary="Full reject report of a finished job, as CSV",
)
async def get_rejects(
    job_id: str = Path(max_length=64), services: Services = Depends(get_services)
) -> Response:
    with services.gate.call(_deadline(services)):
        doc = await job_records.get_job(services.db, job_id)
    if doc is None:
        return json_response({"detail": f"job {job_id} not found"}, status_code=404)
    if doc["status"] not in lifecycle.FINISHED:
        return json_response(
            {
                "detail": f"job {job_id} is still {doc['status']}; its reject report is "
                "complete once the job has succeeded or failed"
            },
            status_code=409,
            headers={"Retry-After": "5"},
        )
    directory = services.settings.rejects_dir
    index = None
    if doc.get("rows_rejected"):
        index = await reject_report.chunk_offsets(services.db, directory, job_id)
        if index is None or await asyncio.to_thread(
            reject_report.missing_files, directory, job_id, index.offsets
        ):
            return json_response(
                {
                    "detail": f"the reject report of job {job_id} was removed (reports are "
                    f"kept {services.settings.rejects_retention_s:g} s after the job ends)"
                },
                status_code=410,
            )
    headers = {"Content-Disposition": f'attachment; filename="rejects-{job_id}.csv"'}
    if index is not None:
        # A job stopped early read the file only so far: say how far the report goes.
        headers[LINES_COVERED] = str(index.lines)
    return StreamingResponse(
        reject_report.stream(directory, job_id, index.offsets if index else []),
        media_type="text/csv; charset=utf-8",
        headers=headers,
    )
