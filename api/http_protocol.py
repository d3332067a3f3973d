"""uvicorn's httptools protocol with one socket write per small response instead of two.

uvicorn writes a response's status line and headers as soon as the app sends
``http.response.start`` and the body at ``http.response.body``: two ``send`` system calls
per lookup. In a py-spy profile of cache hits (bench/zipf.py --profile, two API processes)
the header write alone was ~30 % of the processes' samples, the body write ~6 %. Here the
header block waits for the next write on the same connection (the body, sent by the same
task without yielding on the hot path) and both leave in one call. A header block that no
write follows in the same loop turn (a HEAD answer, a streamed body that is slow to start)
is flushed on the next turn of the event loop: it is delayed by one turn, never lost.

Used by ``devstack.services.api_command`` and the images (``--http
api.http_protocol:CoalescingHttpToolsProtocol``); everything else is uvicorn's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # The cycle of each request writes through self.transport; flow control and the
        # addresses were already taken from the real one.
        self.transport = _HeadJoiningTransport(transport, self.loop)  # type: ignore[assignment]
