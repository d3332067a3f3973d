"""The edge (Debian's nginx with deploy/nginx/) in front of the real API and a real Flower, and
the API's own bounds behind it (api/http_protocol.py). The committed configuration runs as it
is, with only its ports, upstream addresses, two timeouts and the cache directory changed
(``_edit`` fails loudly when the configuration no longer has what it replaces); Flower's login
file is made by the documented ``make flower-htpasswd``."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from api.upload_stream import UPLOAD_ROLE
from devstack.services import Service, flower_command, free_port
from shared.fileformat.gunzip_file_writer import part_files
from shared.settings import Settings
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HEADER_S = 2  # the edge's client_header_timeout / client_body_timeout in this test
BODY_S = 2
API_HEADER_S = 3  # HTTP_HEADER_TIMEOUT_S of the tests' API (tests/conftest.py)
MARGIN_S = 3.0  # a loaded 2-core machine: how late a timeout may fire and still count
# The Flower login of this test: FLOWER_BASIC_AUTH for Flower, the edge's htpasswd from it.
FLOWER_LOGIN = ("flower-ops", "a-long-flower-test-password")


@dataclass
class Edge:
    port: int
    ca: Path
    flower_port: int  # where the edge looks for Flower (started by the ``flower`` fixture)
    logs: Path

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return self.context().wrap_socket(raw, server_hostname="localhost")


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name} no longer has {old!r}"
    path.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def edge(api_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    if not Path(NGINX).exists():
        pytest.fail("nginx is missing: run `make system-deps` (installs Debian's nginx)")
    root = tmp_path_factory.mktemp("edge")
    conf = root / "conf"
    shutil.copytree(ROOT / "deploy" / "nginx", conf)
    (conf / "tls").mkdir()
    # The documented `make edge-cert`, with a name this test's client can check.
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            "-keyout", str(conf / "tls" / "tls.key"), "-out", str(conf / "tls" / "tls.crt"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = free_port()
    _edit(conf / "edge" / "server.conf", "listen 8443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    api_port = urlsplit(api_url).port
    _edit(conf / "edge" / "upstream.conf", "server api:1321", f"server 127.0.0.1:{api_port}")
    flower_port = free_port()
    _edit(
        conf / "edge" / "flower.conf",
        "set $flower_upstream flower:5555;",
        f"set $flower_upstream 127.0.0.1:{flower_port};",
    )
    # The documented command, writing where compose mounts deploy/edge-auth (auth/).
    subprocess.run(
        ["make", "-s", "-C", str(ROOT), "flower-htpasswd", f"EDGE_AUTH_DIR={conf / 'auth'}"],
        env={**os.environ, "FLOWER_BASIC_AUTH": ":".join(FLOWER_LOGIN)},
        check=True,
        capture_output=True,
    )
    limits = conf / "edge" / "limits.conf"
    _edit(limits, "client_header_timeout 10s;", f"client_header_timeout {HEADER_S}s;")
    _edit(limits, "client_body_timeout 30s;", f"client_body_timeout {BODY_S}s;")
    _edit(
        conf / "edge" / "lookup-cache-zone.conf",
        "/var/cache/nginx/promotions-lookups",
        str(root / "lookup-cache"),
    )
    main = conf / "nginx.conf"
    # Workers as the user running the test: root would drop them to "nobody", which cannot
    # write the lookup cache's directory here (compose gives it a tmpfs open to them).
    user = pwd.getpwuid(os.geteuid()).pw_name
    _edit(main, "worker_processes auto;", f"worker_processes 1;\nuser {user};")
    temp = "".join(
        f"    {kind}_temp_path {root}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    _edit(main, "http {\n", "http {\n" + temp)
    log = root / "error.log"
    command = [NGINX, "-p", str(root), "-c", str(main), "-e", str(log)]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(
        [*command, "-g", f"daemon off; pid {root}/nginx.pid;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _accepts(port), 20)
        yield Edge(port, conf / "tls" / "tls.crt", flower_port, root)
    finally:
        proc.terminate()
        proc.wait(10)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _seconds_until_closed(sock: socket.socket, limit_s: float) -> float:
    """How long the server took to end the connection (whatever it answered first)."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    except TimeoutError:
        pytest.fail(f"the connection was still open after {limit_s} s")
    return time.monotonic() - started


def test_lookups_and_health_pass_through_tls(edge: Edge) -> None:
    with httpx.Client(base_url=edge.url, verify=edge.context()) as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/promotions/d018ef0b-dbd9-48f1-ac1a-eb4d90e57118")
        assert r.status_code in (200, 404) and r.headers["content-type"] == "application/json"
        assert r.headers["strict-transport-security"].startswith("max-age=")


def test_the_edge_caches_lookups_as_the_api_says(edge: Edge) -> None:
    """The committed edge includes the lookup cache (edge/lookup-cache*.conf): the second
    lookup of an id within its max-age is the edge's, and still carries HSTS."""
    with httpx.Client(base_url=edge.url, verify=edge.context()) as client:
        path = f"/promotions/edge-cache-{time.monotonic_ns()}"
        first, second = client.get(path), client.get(path)
        assert first.status_code == second.status_code == 404
        assert first.headers["x-cache-status"] == "MISS"
        assert second.headers["x-cache-status"] == "HIT", second.headers
        assert second.headers["strict-transport-security"].startswith("max-age=")
        # Only lookups are cached.
        assert "x-cache-status" not in client.get("/healthz").headers


def test_a_slow_header_client_is_cut_off(edge: Edge, api_url: str) -> None:
    with edge.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        assert _seconds_until_closed(sock, HEADER_S + MARGIN_S + 5) < HEADER_S + MARGIN_S
    # Behind the edge, the API bounds it too (an idle connection the same way).
    port = urlsplit(api_url).port
    for start in (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", b""):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(start)
            closed = _seconds_until_closed(sock, API_HEADER_S + MARGIN_S + 5)
            assert closed < API_HEADER_S + MARGIN_S


def test_a_stalled_upload_is_cut_off_and_leaves_no_partial_file(
    edge: Edge, settings: Settings
) -> None:
    with edge.connect() as sock:
        sock.sendall(
            b"POST /add-promotions/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/csv\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b"x,1,2018-08-04 05:32:31\n" * 100
        )
        assert _seconds_until_closed(sock, BODY_S + MARGIN_S + 5) < BODY_S + MARGIN_S
    wait_for(lambda: not part_files(settings.uploads_dir, UPLOAD_ROLE), 10)


def test_a_trickling_upload_is_cut_by_the_api_behind_the_edge(
    edge: Edge, settings: Settings
) -> None:
    """A byte every half second never pauses long enough for the edge's body timeout; the API
    cuts it once a rate window (UPLOAD_RATE_WINDOW_S, 2 s here) falls short of
    UPLOAD_MIN_BYTES_PER_S, and the edge passes its 408 on."""
    window_s = settings.upload_rate_window_s
    answer = b""
    with edge.connect() as sock:
        sock.sendall(
            b"POST /add-promotions/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/csv\r\n"
            b"Content-Length: 1000000\r\n\r\nx"
        )
        started = time.monotonic()
        sock.settimeout(0.5)
        while time.monotonic() - started < window_s + MARGIN_S + 5:
            try:
                answer = sock.recv(65536)
                break
            except TimeoutError:
                sock.sendall(b"x")
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"slower than" in answer and took < window_s + MARGIN_S
    wait_for(lambda: not part_files(settings.uploads_dir, UPLOAD_ROLE), 10)


def _send_oversized_header(sock: socket.socket, total: int) -> int:
    """Headers that never end: how many bytes went out before the server hung up."""
    sent = 0
    piece = b"X-Big: " + b"a" * 65_000 + b"\r\n"
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        while sent < total:
            sock.sendall(piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass
    return sent


def _answer(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    try:
        return sock.recv(65536)
    except (ConnectionResetError, ssl.SSLError):
        return b""


def test_an_oversized_header_is_refused_by_the_edge_not_buffered_by_the_api(
    edge: Edge, api_url: str
) -> None:
    with edge.connect() as sock:
        _send_oversized_header(sock, 8 << 20)
        answer = _answer(sock)
    # The edge's own answer after at most 4 x 8 KiB: the API never saw the request.
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"Request Header Or Cookie Too Large" in answer
    # Straight to the API (defence in depth): refused while the headers arrive, so most of
    # 64 MiB is never read (before, all of it was read into memory, then a 431).
    with socket.create_connection(("127.0.0.1", urlsplit(api_url).port)) as sock:
        sent = _send_oversized_header(sock, 64 << 20)
        answer = _answer(sock)
    assert sent < 32 << 20, f"the API read {sent} bytes of headers"
    assert not answer or answer.startswith(b"HTTP/1.1 431"), answer[:200]


def test_a_large_upload_streams_through_at_full_speed(
    edge: Edge, api_url: str, settings: Settings, clean_state: None, tmp_path: Path
) -> None:
    """A few hundred MB through the edge take about as long as straight to the API (the
    edge streams, proxy_request_buffering off). Ratio only, loose: the machine is shared."""
    path = tmp_path / "big.csv"
    block = b"d018ef0b-dbd9-48f1-ac1a-eb4d90e57118,60.683466,2018-08-04 05:32:31 +0200 CEST\n"
    block *= (1 << 20) // len(block)
    with path.open("wb") as f:
        for _ in range(256):
            f.write(block)
    size = path.stat().st_size

    def upload(base_url: str, verify: ssl.SSLContext | bool) -> float:
        with httpx.Client(base_url=base_url, verify=verify, timeout=120) as client:
            started = time.monotonic()
            with path.open("rb") as body:
                r = client.post(
                    "/add-promotions/", content=body, headers={"Content-Type": "text/csv"}
                )
            took = time.monotonic() - started
        assert r.status_code == 202, r.text
        return took

    try:
        direct = upload(api_url, True)
        through = upload(edge.url, edge.context())
    finally:
        for stored in settings.uploads_dir.glob("*.csv"):
            stored.unlink()
    mib_s = size / (1 << 20)
    print(f"\n{mib_s:.0f} MiB: direct {mib_s / direct:.0f} MiB/s, edge {mib_s / through:.0f} MiB/s")
    assert through < 3 * direct + 2, (direct, through)


def test_lookups_keep_answering_while_500_idle_connections_are_open(edge: Edge) -> None:
    idle = [socket.create_connection(("127.0.0.1", edge.port)) for _ in range(500)]
    try:
        with httpx.Client(base_url=edge.url, verify=edge.context(), timeout=5) as client:
            for _ in range(20):
                r = client.get("/promotions/d018ef0b-dbd9-48f1-ac1a-eb4d90e57118")
                assert r.status_code in (200, 404)
            assert client.get("/healthz").status_code == 200
    finally:
        for sock in idle:
            sock.close()


@pytest.fixture(scope="module")
def flower(edge: Edge) -> Iterator[str]:
    """A real Flower on the test broker, as compose runs it: under /flower/, with its own
    login. Its direct address (the compose network's view) is returned."""
    svc = Service(
        "flower",
        [*flower_command(edge.flower_port), "--url_prefix=flower"],
        env={"FLOWER_BASIC_AUTH": ":".join(FLOWER_LOGIN)},
        port=edge.flower_port,
        log_path=edge.logs / "flower.log",
    )
    svc.start().wait_ready(60)
    try:
        yield f"http://127.0.0.1:{edge.flower_port}"
    finally:
        svc.stop()


def test_flower_answers_through_the_edge_only_with_the_login_on_every_path(
    edge: Edge, flower: str
) -> None:
    paths = ("/flower/", "/flower/metrics", "/flower/healthcheck", "/flower/api/workers")
    user, password = FLOWER_LOGIN
    with httpx.Client(base_url=edge.url, verify=edge.context(), timeout=15) as client:
        for path in paths:
            for auth in (None, (user, "wrong-password"), ("someone", password)):
                r = client.get(path, auth=auth)
                # The edge's refusal (Flower's realm is "flower"; it would serve two of these).
                assert r.status_code == 401, (path, auth, r.status_code)
                assert r.headers["www-authenticate"] == 'Basic realm="Flower"', (path, auth)
        # Without the slash: nginx's redirect to /flower/, nothing of Flower's.
        bare = client.get("/flower")
        assert bare.status_code == 301 and bare.headers["location"].endswith("/flower/")
        # With the login: Flower's answers, over the edge's TLS (HSTS).
        health = client.get("/flower/healthcheck", auth=FLOWER_LOGIN)
        assert health.status_code == 200 and health.text == "OK", health.text
        assert health.headers["strict-transport-security"].startswith("max-age=")
        metrics = client.get("/flower/metrics", auth=FLOWER_LOGIN)
        assert metrics.status_code == 200 and "flower_events_total" in metrics.text
        page = client.get("/flower/", auth=FLOWER_LOGIN)
        assert page.status_code == 200 and "/flower/static/" in page.text, page.text[:300]
    # Why the edge must ask on every path: Flower's own login leaves these two open.
    assert httpx.get(f"{flower}/flower/metrics").status_code == 200
    assert httpx.get(f"{flower}/flower/healthcheck").status_code == 200
    assert httpx.get(f"{flower}/flower/").status_code == 401
