"""A local nginx edge that caches lookups with the deployment's own include files.

Used by the end-to-end test of the edge cache and by the benchmarks: a private prefix
(config, temp and cache directories, logs, pid) and a port of its own, so it never touches
the machine's nginx. The server block is minimal on purpose (plain HTTP, one upstream):
deploy/nginx/edge/lookup-cache*.conf are what is under test, included as they are; only the
zone file's cache path is replaced by the prefix's.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

from devstack.services import ROOT, Service

NGINX_DIR = ROOT / "deploy" / "nginx" / "edge"
PRODUCTION_CACHE_PATH = "/var/cache/nginx/promotions-lookups"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def edge_config(
    prefix: Path,
    port: int,
    api_ports: list[int],
    stale_on_503: bool,
    workers: int = 1,
    access_log: bool = False,
    cache_dir: Path | None = None,
) -> str:
    """The nginx.conf of a local edge in ``prefix`` (directories made here); the cache in
    ``cache_dir`` (default ``prefix/cache``)."""
    for sub in ("cache", "tmp", "logs"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    cache = cache_dir or prefix / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    zone = (NGINX_DIR / "lookup-cache-zone.conf").read_text()
    if zone.count(PRODUCTION_CACHE_PATH) != 1:
        raise RuntimeError(f"lookup-cache-zone.conf no longer names {PRODUCTION_CACHE_PATH}")
    (prefix / "lookup-cache-zone.conf").write_text(zone.replace(PRODUCTION_CACHE_PATH, str(cache)))
    stale = f"include {NGINX_DIR / 'lookup-cache-stale.conf'};" if stale_on_503 else ""
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in api_ports)
    log = f"access_log {prefix / 'logs' / 'access.log'};" if access_log else "access_log off;"
    # Workers run as the user starting the test (root would otherwise drop to "nobody",
    # which cannot write the prefix); nginx ignores the directive for other users.
    user = pwd.getpwuid(os.geteuid()).pw_name
    return f"""
daemon off;
worker_processes {workers};
user {user};
pid {prefix / "nginx.pid"};
error_log {prefix / "logs" / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    {log}
    client_body_temp_path {prefix / "tmp" / "body"};
    proxy_temp_path {prefix / "tmp" / "proxy"};
    fastcgi_temp_path {prefix / "tmp" / "fastcgi"};
    uwsgi_temp_path {prefix / "tmp" / "uwsgi"};
    scgi_temp_path {prefix / "tmp" / "scgi"};
    include {prefix / "lookup-cache-zone.conf"};
    upstream promotions_api {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location /promotions/ {{
            include {NGINX_DIR / "lookup-cache.conf"};
            {stale}
            proxy_pass http://promotions_api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location / {{
            proxy_pass http://promotions_api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def edge_service(
    prefix: Path,
    port: int,
    api_ports: list[int],
    stale_on_503: bool = False,
    workers: int = 1,
    access_log: bool = False,
    cache_dir: Path | None = None,
) -> Service:
    """Not started; ``.start().wait_ready()`` as any other service."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (make system-deps installs it)")
    conf = prefix / "nginx.conf"
    prefix.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        edge_config(prefix, port, api_ports, stale_on_503, workers, access_log, cache_dir)
    )
    argv = [binary, "-p", str(prefix), "-e", str(prefix / "logs" / "error.log"), "-c", str(conf)]
    return Service("edge", argv, port=port, log_path=prefix / "logs" / "stdout.log")
