"""Ceiling for any Python lookup service: a raw ASGI app that answers every request with a
constant body of a typical answer's size, no framework, no I/O. Served with the API's
uvicorn settings (uvloop, httptools, one worker)."""

from __future__ import annotations

from typing import Any

BODY = (
    b'{"id":"7204e52d-b222-4a58-808a-05a6c4647159","price":26.633056,'
    b'"expiration_date":"2018-12-22 08:52:25 +0200 CEST"}'
)
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-length", str(len(BODY)).encode()),
        (b"content-type", b"application/json"),
    ],
}
END = {"type": "http.response.body", "body": BODY}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(START)
    await send(END)
