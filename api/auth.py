"""Write endpoints need the bearer token when one is configured; lookups stay open."""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request

from api.services import Services, get_services


def require_writer(request: Request, services: Services = Depends(get_services)) -> None:
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
