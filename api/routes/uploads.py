"""Uploads: store the file on the shared volume, record a job, hand it to the worker."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pymongo
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from api.auth import require_writer
from api.responses import json_response
from api.schemas import JobAccepted, Problem
from api.services import Services, get_services
from api.store_gate import deadline_in
from api.upload_stream import RAW_CONTENT_TYPES, UploadError, receive_upload
from shared import datasets, job_records
from shared.errors import BrokerUnavailable, CircuitOpen, TransientError, store_errors
from shared.gunzip_file_writer import StoreLimits

log = logging.getLogger(__name__)
router = APIRouter(tags=["ingestion"])

# An empty file is refused (400): every body and the multipart field say minLength 1, so
# the document does not promise to accept what the endpoint cannot load.
# How long removing the record of an upload that was not kept may take (see accept_upload).
FORGET_JOB_S = 1.0

_FILE_BYTES = {"type": "string", "format": "binary", "minLength": 1}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            **_FILE_BYTES,
                            "description": "CSV rows id,price,expiration_date (optionally gzipped)",
                        }
                    },
                }
            },
            **{ctype: {"schema": _FILE_BYTES} for ctype in sorted(RAW_CONTENT_TYPES)},
        },
    }
}
UPLOAD_RESPONSES: dict[int | str, dict[str, object]] = {
    202: {"model": JobAccepted, "description": "Stored and queued; poll status_url"},
    400: {"model": Problem, "description": "Empty file, corrupt gzip or malformed body"},
    401: {"model": Problem},
    403: {"model": Problem},
    413: {
        "model": Problem,
        "description": "Larger than the configured limit (upload, decompressed size, parts)",
    },
    415: {"model": Problem, "description": "Not multipart/form-data nor a raw CSV body"},
    422: {"model": Problem, "description": "No multipart field named 'file'"},
    503: {"model": Problem, "description": "Queue or store unavailable; nothing was kept"},
    507: {
        "model": Problem,
        "description": "Not enough free space on the shared volume; nothing was kept",
    },
}


def _unavailable(what: str, job_id: str, exc: Exception) -> Response:
    log.warning("upload %s dropped: %s unavailable (%s)", job_id, what, exc)
    return json_response(
        {"detail": f"the {what} is unavailable; the upload was not kept, retry shortly"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def accept_upload(
    request: Request, services: Services, source: str, allow_shrink: bool = False
) -> Response:
    settings = services.settings
    record_s = settings.upload_record_timeout_ms / 1000  # each store step's budget
    job_id = uuid.uuid4().hex
    file_name = f"{job_id}.csv"
    final_path = settings.uploads_dir / file_name
    try:
        # Allocated as the upload starts: of two uploads, the one submitted later wins even
        # when an earlier, larger one finishes arriving after it. An unused number is harmless.
        with services.gate.call(deadline_in(record_s)):
            version = await datasets.allocate_version(services.db)
    except (TransientError, RuntimeError) as exc:  # RuntimeError: the counter kept racing
        return _unavailable("store", job_id, exc)
    try:
        stored = await receive_upload(
            request,
            settings.uploads_dir,
            final_path,
            settings.max_upload_bytes,
            StoreLimits.from_settings(settings),
            settings.max_multipart_parts,
        )
    except UploadError as exc:
        return json_response({"detail": exc.detail}, status_code=exc.status_code)
    try:
        doc = job_records.new_job(
            job_id, version, file_name, stored.bytes_stored, source, allow_shrink=allow_shrink
        )
        with services.gate.call(deadline_in(record_s)):
            await job_records.create_job(services.db, doc)
        await asyncio.to_thread(services.queue.enqueue_plan, job_id)
    except Exception as exc:  # the store, the broker (BrokerUnavailable), or a bug
        # The client hears "not kept": neither the file nor a job may stay. The record goes
        # even when its insert raised: an insert can reach the store and its answer be lost.
        final_path.unlink(missing_ok=True)
        try:  # briefly: with the store down, the 503 must not wait for a second timeout
            if not isinstance(exc, CircuitOpen):  # else the insert was never sent
                with store_errors(), pymongo.timeout(FORGET_JOB_S):
                    await job_records.delete_job(services.db, job_id)
        except TransientError:
            log.error("could not remove job record %s of an upload not kept", job_id)
        if isinstance(exc, TransientError):
            return _unavailable(
                "job queue" if isinstance(exc, BrokerUnavailable) else "store", job_id, exc
            )
        raise
    try:
        with services.gate.call(deadline_in(record_s)):
            await job_records.mark_enqueued(services.db, job_id)
    except TransientError as exc:  # queued all the same: at worst the watchdog sends it again
        log.warning("job %s queued but not marked so (%s)", job_id, exc)
    log.info(
        "job %s queued: %d bytes stored%s, version %d",
        job_id,
        stored.bytes_stored,
        " (gunzipped)" if stored.compressed else "",
        version,
    )
    status_url = f"/jobs/{job_id}"
    return json_response(
        {"job_id": job_id, "status": "queued", "status_url": status_url},
        status_code=202,
        headers={"Location": status_url},
    )


async def upload_promotions(
    request: Request,
    allow_shrink: bool = Query(
        default=False,
        description="Go live even if the file has fewer rows than MIN_ROWS_RATIO of the "
        "active dataset (the shrink guard, off unless MIN_ROWS_RATIO is set)",
    ),
    services: Services = Depends(get_services),
) -> Response:
    return await accept_upload(request, services, source="upload", allow_shrink=allow_shrink)


# One handler under the documented name and the older one the first partners used.
for _path, _operation, _summary in (
    (
        "/add-promotions/",
        "add_promotions",
        "Upload a promotions CSV that replaces the whole dataset once loaded",
    ),
    ("/uploadfile/", "upload_file", "Same as /add-promotions/ (older name)"),
):
    router.add_api_route(
        _path,
        upload_promotions,
        methods=["POST"],
        status_code=202,
        responses=UPLOAD_RESPONSES,
        openapi_extra=UPLOAD_BODY,
        dependencies=[Depends(require_writer)],
        summary=_summary,
        operation_id=_operation,
    )
