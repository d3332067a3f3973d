"""Uploads: store the file on the shared volume, record a job, hand it to the worker."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pymongo
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from api.auth import require_writer
from api.openapi_doc import UPLOAD_DESCRIPTION
from api.responses import json_response
from api.schemas import JobAccepted, Problem
from api.services import Services, get_services
from api.store_gate import deadline_in
from api.upload_names import clean_name
from api.upload_stream import RAW_CONTENT_TYPES, UploadError, UploadPace, receive_upload
from shared.dataset import datasets, job_records
from shared.errors import BrokerUnavailable, CircuitOpen, TransientError, store_errors
from shared.fileformat.gunzip_file_writer import StoreLimits

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


def _problem(description: str, detail: str) -> dict[str, object]:
    return {
        "model": Problem,
        "description": description,
        "content": {"application/json": {"example": {"detail": detail}}},
    }


UPLOAD_RESPONSES: dict[int | str, dict[str, object]] = {
    202: {"model": JobAccepted, "description": "Stored and queued; poll status_url"},
    400: _problem("Empty file, corrupt gzip or malformed body", "the file is empty"),
    401: _problem(
        "No bearer token (a write token is configured)",
        "this endpoint needs 'Authorization: Bearer <token>'",
    ),
    403: _problem("The bearer token is wrong", "the bearer token is not valid for writing"),
    408: _problem(
        "The upload paused or trickled too long (UPLOAD_IDLE_TIMEOUT_S, UPLOAD_MIN_BYTES_PER_S)",
        "the upload sent nothing for 60 s; nothing was kept",
    ),
    413: _problem(
        "Larger than the configured limit (upload, decompressed size, parts)",
        "the upload is larger than the limit of 214748364800 bytes",
    ),
    415: _problem(
        "Not multipart/form-data nor a raw CSV body",
        "send the CSV as multipart/form-data in a field named 'file' (curl -F "
        "file=@promotions.csv), or as a raw text/csv or application/gzip body",
    ),
    422: _problem(
        "No multipart field named 'file'",
        "multipart field 'file' is required; the request had ['upload']",
    ),
    503: _problem(
        "Queue or store unavailable; nothing was kept",
        "the store is unavailable; the upload was not kept, retry shortly",
    ),
    507: _problem(
        "Not enough free space on the shared volume; nothing was kept",
        "not enough free space on the shared volume (...); nothing was kept, retry later",
    ),
}


def _unavailable(what: str, job_id: str, exc: Exception) -> Response:
    log.warning("upload %s dropped: %s unavailable (%s)", job_id, what, exc)
    return json_response(
        {"detail": f"the {what} is unavailable; the upload was not kept, retry shortly"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def accept_upload(
    request: Request,
    services: Services,
    source: str,
    allow_shrink: bool = False,
    name: str | None = None,
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
            UploadPace.from_settings(settings),
        )
    except UploadError as exc:
        return json_response({"detail": exc.detail}, status_code=exc.status_code)
    try:
        doc = job_records.new_job(
            job_id,
            version,
            file_name,
            stored.bytes_stored,
            source,
            original_name=clean_name(name) or stored.name,
            allow_shrink=allow_shrink,
        )
        await services.gate.call_waiting(
            deadline_in(record_s), lambda: job_records.create_job(services.db, doc)
        )
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
    name: str | None = Query(
        default=None,
        max_length=1024,
        description="The file's name, shown on the job (GET /jobs/{id}, the operator page, "
        "the CLI); else the multipart file name or a raw body's Content-Disposition file "
        "name. Only its last path component is kept: never used as a path",
        examples=["promotions-2026-12-06.csv"],
    ),
    services: Services = Depends(get_services),
) -> Response:
    return await accept_upload(
        request, services, source="upload", allow_shrink=allow_shrink, name=name
    )


# One handler under the documented name and the older one the first partners used, each
# with and without the trailing slash: a redirect (307) would be an empty answer to clients
# that do not follow it (curl without -L exits 0, nothing uploaded). The slashless paths
# are left out of the document, which says they exist.
for _path, _operation, _summary in (
    (
        "/add-promotions/",
        "add_promotions",
        "Upload a promotions CSV that replaces the whole dataset once loaded",
    ),
    ("/uploadfile/", "upload_file", "Same as /add-promotions/ (older name)"),
):
    for _documented in (True, False):
        router.add_api_route(
            _path if _documented else _path.rstrip("/"),
            upload_promotions,
            methods=["POST"],
            status_code=202,
            responses=UPLOAD_RESPONSES,
            openapi_extra=UPLOAD_BODY,
            dependencies=[Depends(require_writer)],
            summary=_summary,
            description=UPLOAD_DESCRIPTION.replace(
                "Also answers at the same path without the trailing slash",
                f"Also answers at `{_path.rstrip('/')}` (no trailing slash)",
            ),
            operation_id=_operation if _documented else f"{_operation}_no_slash",
            include_in_schema=_documented,
        )
