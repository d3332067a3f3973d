"""A TCP proxy that delays every answer of the server it fronts: a slow store, on demand.

It runs its own event loop in a thread; ``delay_s`` may be changed at any time and applies
to data the server sends from then on (order is kept). ``hold_requests`` delays, instead,
only what a client sends that contains a given byte string (one command, say), by its
value in seconds: the server gets that request late, every other one at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

from devstack.services import free_port


class DelayProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.port = free_port()
        self.delay_s = 0.0
        self.hold_requests: dict[bytes, float] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, self.host, self.port)
        )
        self._ready.set()
        self._loop.run_forever()

    async def _connection(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            self._pipe(client_r, server_w, delayed=False),
            self._pipe(server_r, client_w, delayed=True),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delayed: bool
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def read() -> None:
            try:
                while data := await reader.read(65536):
                    queue.put_nowait((time.monotonic() + self._delay(data, delayed), data))
            finally:
                queue.put_nowait(None)

        async def write() -> None:
            try:
                while (item := await queue.get()) is not None:
                    due, data = item
                    if due > time.monotonic():
                        await asyncio.sleep(due - time.monotonic())
                    writer.write(data)
                    await writer.drain()
            finally:
                writer.close()

        await asyncio.gather(read(), write(), return_exceptions=True)

    def _delay(self, data: bytes, answer: bool) -> float:
        if answer:
            return self.delay_s
        return max((s for part, s in self.hold_requests.items() if part in data), default=0.0)

    def start(self) -> DelayProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextlib.contextmanager
def delay_proxy(upstream_port: int) -> Iterator[DelayProxy]:
    proxy = DelayProxy(upstream_port).start()
    try:
        yield proxy
    finally:
        proxy.stop()
