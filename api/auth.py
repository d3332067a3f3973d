"""Who may do what (docs/security.md).

Lookups, /healthz and /readyz are open. Writes need the write token when one is set. Every
other read (jobs, reject reports, datasets, metrics, the API docs) needs the read token or
the write token when either is set: reject reports hold partners' lines, job records name
files and hosts' failures.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from api.responses import json_response
from api.schemas import Problem
from api.services import Services, get_services
from shared.settings import Settings

NEEDS_BEARER = "this endpoint needs 'Authorization: Bearer <token>'"
NOT_FOR_READING = "the bearer token is not valid for reading"
# Served by FastAPI itself, outside the routers: guarded by ``ReadGuard``.
DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")


def _bearer(authorization: str) -> str | None:
    scheme, _, given = authorization.partition(" ")
    given = given.strip()
    return given if scheme.lower() == "bearer" and given else None


def _matches(given: str, token: SecretStr | None) -> bool:
    return token is not None and hmac.compare_digest(
        given.encode(), token.get_secret_value().encode()
    )


def read_problem(settings: Settings, authorization: str) -> tuple[int, str] | None:
    """Why a read is refused (status, sentence), or None when it may go on."""
    if settings.read_token is None and settings.write_token is None:
        return None
    given = _bearer(authorization)
    if given is None:
        return 401, NEEDS_BEARER
    if _matches(given, settings.read_token) or _matches(given, settings.write_token):
        return None
    return 403, NOT_FOR_READING


def _cross_site(request: Request) -> bool:
    """A browser's request from another site's page (a plain HTML form posts multipart
    without a preflight). Browsers name the site (Sec-Fetch-Site) or at least the origin."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is not None and origin.split("://", 1)[-1] != request.headers.get("host")


# Declares the scheme in the OpenAPI document (the Authorize button of /docs sends the
# header); the check below stays ours, for its messages and the open mode without a token.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="The write token (the API's WRITE_TOKEN setting) or, for reads, the read "
    "token (READ_TOKEN), sent as 'Authorization: Bearer <token>'. Uploads and activation need "
    "the write token when one is set; jobs, reject reports, datasets and metrics need either "
    "when either is set.",
)


def require_writer(
    request: Request,
    services: Services = Depends(get_services),
    _declared: HTTPAuthorizationCredentials | None = Security(BEARER),
) -> None:
    token = services.settings.write_token
    if token is None:
        # Development without a token: still no writes from other sites' pages. (With a
        # token, a cross-site page cannot send the Authorization header without a preflight.)
        if _cross_site(request):
            raise HTTPException(403, "writes from another site's page are refused")
        return
    given = _bearer(request.headers.get("authorization", ""))
    if given is None:
        raise HTTPException(401, NEEDS_BEARER, {"WWW-Authenticate": "Bearer"})
    if not _matches(given, token):
        raise HTTPException(403, "the bearer token is not valid for writing")


def _refusal(description: str, detail: str) -> dict[str, Any]:
    example = {"application/json": {"example": {"detail": detail}}}
    return {"model": Problem, "description": description, "content": example}


# What the guarded reads may answer, for their OpenAPI entries.
READ_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: _refusal("No bearer token (a read or write token is configured)", NEEDS_BEARER),
    403: _refusal("The bearer token is neither the read nor the write token", NOT_FOR_READING),
}


def require_reader(
    request: Request,
    services: Services = Depends(get_services),
    _declared: HTTPAuthorizationCredentials | None = Security(BEARER),
) -> None:
    problem = read_problem(services.settings, request.headers.get("authorization", ""))
    if problem is not None:
        raise HTTPException(problem[0], problem[1], {"WWW-Authenticate": "Bearer"})


class ReadGuard:
    """The API docs (/docs, /redoc, /openapi.json) are routes FastAPI adds itself, outside
    any router's dependencies: this layer asks them for the read token. Only once READ_TOKEN
    is set: a browser cannot send a header when it opens /docs, and with the write token
    alone (development) the docs' Authorize and "Try it out" must keep working; they hold
    the API's shape, no partner data."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self.settings.read_token is not None
            and scope["path"].startswith(DOCS_PATHS)
        ):
            authorization = ""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
            problem = read_problem(self.settings, authorization)
            if problem is not None:
                response = json_response(
                    {"detail": problem[1]},
                    status_code=problem[0],
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
