"""uvicorn's httptools protocol as the API runs it (``uvicorn --http
api.http_protocol:ServiceHttpToolsProtocol``: devstack.services.api_command and the images).

Two bounds it lacks (defence in depth behind the edge, deploy/nginx/): a request's headers
must arrive within ``HTTP_HEADER_TIMEOUT_S`` (a connection that sends nothing, or stops
mid-header, is closed), and they may not grow past ``MAX_RAW_HEADER_BYTES`` while they
arrive. httptools keeps an unfinished header in memory until its end: without this, a 64 MiB
header was read whole before the 431 of ``api.middleware.request_limits`` could answer. The usual
request (headers in one read) costs two attribute checks: the timer is set only for a
connection's first request and for headers that span reads.

One socket write per small response instead of two: uvicorn writes a response's status line
and headers as soon as the app sends ``http.response.start`` and the body at
``http.response.body``: two system calls where one does, and the header write alone was a
large share of a cache hit's CPU (docs/decisions/one-socket-write.md). Here the header block
waits for the next write on the same connection (the body, sent by the same task without
yielding on the hot path) and both leave in one call. A header block that no write follows
in the same loop turn (a HEAD answer, a streamed body that is slow to start) is flushed on
the next turn of the event loop: it is delayed by one turn, never lost.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.middleware.request_limits import MAX_HEADER_BYTES, MAX_URL_BYTES
from shared.settings import get_settings

# The request line and every header line with its ": " and CRLF: room above the limits
# that api.middleware.request_limits applies to the parsed URL and headers, so those keep answering
# with their own sentences.
MAX_RAW_HEADER_BYTES = MAX_URL_BYTES + MAX_HEADER_BYTES + 8 * 1024


def _response(status: bytes, detail: str) -> bytes:
    body = orjson.dumps({"detail": detail})
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_headers = True
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_timeout_s = get_settings().http_header_timeout_s

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._reading_headers or self.transport.is_closing():
            return
        self._header_bytes += len(data)
        if self._header_bytes > MAX_RAW_HEADER_BYTES:
            self._refuse(
                b"431 Request Header Fields Too Large",
                f"the request headers are larger than {MAX_RAW_HEADER_BYTES} bytes",
            )
        elif self._header_timer is None:
            self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._header_bytes = 0

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self._header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._reading_headers and not self.transport.is_closing():
            detail = f"the request headers did not arrive within {self._header_timeout_s:g} s"
            self._refuse(b"408 Request Timeout", detail)

    def _refuse(self, status: bytes, detail: str) -> None:
        self._disarm()
        self.transport.write(_response(status, detail))
        self.transport.close()


class _HeadJoiningTransport:
    """Forwards everything to the real transport; holds a lone header block back."""

    __slots__ = ("_head", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif data.startswith(b"HTTP/1.") and data.endswith(b"\r\n\r\n"):
            self._head = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ServiceHttpToolsProtocol(BoundedHttpToolsProtocol):
    """Both: the bounds above, and headers and body in one write."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # The cycle of each request writes through self.transport; flow control and the
        # addresses were already taken from the real one. The bounds' refusals write a whole
        # answer (not a lone header block): they go straight through.
        self.transport = _HeadJoiningTransport(transport, self.loop)  # type: ignore[assignment]
