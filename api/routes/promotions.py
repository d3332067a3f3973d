"""GET /promotions/{id}: two cache levels (process memory, Redis) in front of the active
dataset (``api.lookup_service``).

Declared here with FastAPI (validation, OpenAPI docs); requests with a valid id are served
by ``api.fast_lookup`` with the same ``lookup`` and without FastAPI's per-request machinery.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response

from api.http_caching import LookupCachePolicy, as_str, etag, if_none_match_of, none_match
from api.responses import json_response
from api.schemas import Problem, Promotion
from api.services import Services, get_services
from shared.errors import StoreUnavailable
from shared.fileformat.promotion_rows import ID_PATTERN, MAX_ID_LENGTH
from shared.readpath.cache import NEGATIVE

router = APIRouter(tags=["promotions"])

NO_DATASET = "no promotions dataset has been loaded yet"


@router.get(
    "/promotions/{promotion_id}",
    response_model=Promotion,
    responses={
        304: {"description": "Not modified: `If-None-Match` names the current `ETag`"},
        404: {"model": Problem, "description": "No promotion with this id (or no dataset yet)"},
        422: {"model": Problem, "description": "The id cannot be a promotion id"},
        503: {"model": Problem, "description": "The store is unreachable"},
    },
    summary="Look a promotion up by id (case-insensitive)",
)
async def get_promotion(
    request: Request,
    promotion_id: str = Path(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        pattern=f"^{ID_PATTERN}$",
        examples=["d018ef0b-dbd9-48f1-ac1a-eb4d90e57118"],
    ),
    services: Services = Depends(get_services),
) -> Response:
    return await lookup(services, promotion_id, if_none_match_of(request.scope["headers"]))


def active_version(services: Services) -> int | None:
    """The version to answer from; None: no dataset yet. Raises (503) when unknown."""
    active = services.watcher.current
    if active is None:
        if not services.watcher.known:  # never read: "no dataset" would be a guess
            raise StoreUnavailable("the active dataset pointer has not been read yet")
        return None
    return active.version


async def lookup(services: Services, promotion_id: str, if_none_match: bytes | None) -> Response:
    """The answer for a syntactically valid id."""
    version = active_version(services)
    if version is None:
        return no_dataset_response(services.http_cache)
    key = promotion_id.lower()
    lookups = services.lookups
    body = lookups.local_body(version, key)
    if body is None:
        body = await lookups.body(version, key)
    return answer_response(services.http_cache, version, promotion_id, body, if_none_match)


def no_dataset_response(policy: LookupCachePolicy) -> Response:
    # Cached like any 404: the first load's switch must reach clients as soon as an absent id's.
    return json_response({"detail": NO_DATASET}, status_code=404, headers=as_str([policy.missing]))


def answer_response(
    policy: LookupCachePolicy,
    version: int,
    promotion_id: str,
    body: bytes,
    if_none_match: bytes | None,
) -> Response:
    """200, 304 or 404, with the caching headers of ``api.http_caching``. A 404 has no ETag:
    preconditions apply to 2xx answers only (RFC 9110 13.2.1)."""
    if body == NEGATIVE:
        return json_response(
            {"detail": f"promotion {promotion_id} not found"},
            status_code=404,
            headers=as_str([policy.missing]),
        )
    tag = etag(version, promotion_id.lower())
    headers = as_str(policy.found_headers(tag))
    if if_none_match is not None and not none_match(if_none_match, tag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
