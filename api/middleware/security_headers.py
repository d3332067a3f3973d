"""Browser protections for the pages the API serves (the operator page, the API docs):
a content security policy, no framing (clickjacking), no MIME sniffing. JSON answers need
none of them and the lookup path stays untouched."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The operator page loads only its own files and talks only to this API.
UI_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
# Swagger UI and ReDoc pages (fastapi-offline) start with an inline script and style.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_COMMON = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
_POLICIES = (
    ("/ui", UI_POLICY),
    ("/docs", DOCS_POLICY),
    ("/redoc", DOCS_POLICY),
    ("/static-offline-docs", DOCS_POLICY),
)


def _policy(path: str) -> str | None:
    for prefix, policy in _POLICIES:
        if path == prefix or path.startswith(prefix + "/"):
            return policy
    return None


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        policy = _policy(scope["path"]) if scope["type"] == "http" else None
        if policy is None:
            await self.app(scope, receive, send)
            return
        extra = [*_COMMON, (b"content-security-policy", policy.encode())]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
