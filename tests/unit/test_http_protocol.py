"""One socket write per small response: the header block waits for the body."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httpx
import pytest

from api.http_protocol import _HeadJoiningTransport
from devstack.services import Service, free_port

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return name


async def _joined() -> tuple[list[bytes], list[bytes], list[bytes]]:
    loop = asyncio.get_running_loop()
    raw = _Transport()
    t = _HeadJoiningTransport(raw, loop)  # type: ignore[arg-type]
    t.write(HEAD)
    assert raw.writes == []
    t.write(b"{}")
    together = list(raw.writes)
    t.write(HEAD)  # a head no body follows (HEAD request): out on the next loop turn
    await asyncio.sleep(0)
    alone = raw.writes[1:]
    t.write(HEAD)
    t.close()  # or at close
    assert t.get_extra_info("peername") == "peername"  # everything else is the transport's
    return together, alone, raw.writes[2:]


def test_head_and_body_leave_in_one_write_and_a_lone_head_is_never_kept() -> None:
    together, alone, at_close = asyncio.run(_joined())
    assert together == [HEAD + b"{}"]
    assert alone == [HEAD]
    assert at_close == [HEAD]


APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b"x" * int(scope["path"].strip("/") or 0)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.fixture
def server(tmp_path: Any) -> Any:
    (tmp_path / "tiny_app.py").write_text(APP)
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "tiny_app:app", "--port", str(port)]
    argv += ["--http", "api.http_protocol:ServiceHttpToolsProtocol", "--app-dir", str(tmp_path)]
    svc = Service("tiny", argv, port=port, log_path=tmp_path / "log").start().wait_ready(30)
    yield f"http://127.0.0.1:{port}"
    svc.stop()


def test_uvicorn_answers_through_it(server: str) -> None:
    with httpx.Client(base_url=server) as http:  # one keep-alive connection
        for size in (0, 2, 100_000, 2):
            r = http.get(f"/{size}")
            assert r.status_code == 200 and r.content == b"x" * size
        r = http.head("/5")
        assert r.status_code == 200 and r.headers["content-length"] == "5"
        assert http.get("/3").content == b"xxx"  # the connection still works after a HEAD
