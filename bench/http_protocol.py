"""The bounded HTTP protocol (api/http_protocol.py: header timeout and size cap) against
uvicorn's plain httptools protocol, on an app that does nothing (a 23-byte JSON answer), so
that only the protocol's own cost shows. wrk, keep-alive, one uvicorn worker each, A/B
interleaved. Target: ≥ 0.95x (the lookup path must not pay for the bounds)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

from starlette.types import Receive, Scope, Send

from bench.common import add_common_args, interleave, medians, paired_ratio, report, table
from devstack.services import Service, free_port

BODY = b'{"id":"x","price":1.0}'
PROTOCOLS = {
    "httptools": "httptools",
    "bounded": "api.http_protocol:BoundedHttpToolsProtocol",
}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def _wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert found, out
    return {"rps": float(found.group(1))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_common_args(parser, runs=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args(argv)
    servers: dict[str, tuple[Service, str]] = {}
    try:
        for name, http in PROTOCOLS.items():
            port = free_port()
            command = [sys.executable, "-m", "uvicorn", "bench.http_protocol:app"]
            command += ["--port", str(port), "--loop", "uvloop", "--http", http]
            command += ["--no-access-log", "--log-level", "warning"]
            svc = Service(name, command, port=port).start().wait_ready(30)
            servers[name] = (svc, f"http://127.0.0.1:{port}/promotions/x")
        results = interleave(
            args.runs,
            [
                (name, lambda url=url: _wrk(url, args.seconds, args.connections))
                for name, (_, url) in servers.items()
            ],
        )
    finally:
        for svc, _ in servers.values():
            svc.stop()
    ratio = paired_ratio(results["bounded"], results["httptools"], "rps")
    rows = [(name, medians(runs)["rps"]) for name, runs in results.items()]
    body = table(["protocol", "requests/s (median)"], rows)
    body += (
        f"\n\nbounded ÷ httptools, median of run-by-run ratios: **{ratio:.2f}x** (target ≥ 0.95x)"
    )
    report("HTTP protocol bounds (header timeout and cap)", body, args.runs, args.append_results)


if __name__ == "__main__":
    main()
