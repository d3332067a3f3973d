"""Write endpoints need the bearer token when one is configured; lookups stay open."""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.services import Services, get_services

# Declares the scheme in the OpenAPI document (the Authorize button of /docs sends the
# header); the check below stays ours, for its messages and the open mode without a token.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="The write token (the API's WRITE_TOKEN setting), sent as "
    "'Authorization: Bearer <token>'. Needed by uploads and activation when a token is set.",
)


def require_writer(
    request: Request,
    services: Services = Depends(get_services),
    _declared: HTTPAuthorizationCredentials | None = Security(BEARER),
) -> None:
    token = services.settings.write_token
    if token is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(
            401,
            "this endpoint needs 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise HTTPException(403, "the bearer token is not valid for writing")
