"""The open-loop benchmark client counts what a server answered, not its own handling of
keep-alive: a server that ends a connection after an answer (``Connection: close``, as
nginx does after ``keepalive_requests``) costs a reconnect, never an error."""

from __future__ import annotations

import asyncio
import time

from bench.open_loop import _run

ANSWERS_PER_CONNECTION = 3


async def _serve_and_run(keys: list[str]) -> dict[str, object]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for n in range(1, ANSWERS_PER_CONNECTION + 1):
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            last = n == ANSWERS_PER_CONNECTION
            writer.write(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n"
                + (b"Connection: close\r\n" if last else b"")
                + b"\r\n{}"
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        return await _run("127.0.0.1", port, keys, 2000.0, 2, time.time())


def test_a_server_closing_keep_alive_after_an_answer_costs_no_error() -> None:
    keys = [f"id-{i}" for i in range(40)]
    result = asyncio.run(_serve_and_run(keys))
    assert result["status"] == [404] * len(keys)
