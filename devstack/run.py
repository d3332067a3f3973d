"""``make run``: the whole stack on this machine, in the foreground, with combined logs.

Starts Redis (unless one already answers at REDIS_URL), the MongoDB-compatible dev server
(unless one answers at MONGO_URL), the Celery worker, Celery beat, Flower and the API.
Ctrl-C or SIGTERM stops everything in reverse order; if any process dies, the rest are
stopped too.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import sys
from urllib.parse import urlsplit

from devstack.services import (
    ROOT,
    Service,
    api_command,
    beat_command,
    flower_command,
    mongo_command,
    port_open,
    redis_command,
    worker_command,
)
from shared.settings import get_settings, redact_url

COLORS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m"]
RESET = "\033[0m"


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url.split(",")[0])
    return parts.hostname or "127.0.0.1", parts.port or default_port


def plan_services() -> list[Service]:
    settings = get_settings()
    data = ROOT / "data"
    services: list[Service] = []
    seen_redis: set[int] = set()
    for url in (settings.redis_url, settings.broker_url):
        host, port = _host_port(url.get_secret_value(), 6379)
        if host in ("127.0.0.1", "localhost") and port not in seen_redis:
            seen_redis.add(port)
            if not port_open(host, port):
                (data / "redis").mkdir(parents=True, exist_ok=True)
                services.append(
                    Service(f"redis:{port}", redis_command(port, str(data / "redis")), port=port)
                )
    host, port = _host_port(settings.mongo_url.get_secret_value(), 27017)
    if host in ("127.0.0.1", "localhost") and not port_open(host, port):
        (data / "mongo").mkdir(parents=True, exist_ok=True)
        services.append(Service("mongo", mongo_command(port, str(data / "mongo")), port=port))
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    flower_env = {}
    if settings.flower_basic_auth:
        flower_env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
    api_env = {}
    if settings.api_workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Several uvicorn processes: /metrics must merge their series (fresh files each run).
        prom = data / "prometheus"
        shutil.rmtree(prom, ignore_errors=True)
        prom.mkdir(parents=True)
        api_env["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
    services += [
        Service("worker", worker_command(settings.worker_concurrency, "worker")),
        Service("beat", beat_command(str(data / "celerybeat-schedule"))),
        Service("flower", flower_command(settings.flower_port), env=flower_env),
        Service(
            "api",
            api_command(settings.app_host, settings.app_port, settings.api_workers),
            env=api_env,
            port=settings.app_port,
        ),
    ]
    return services


def main() -> int:
    settings = get_settings()
    print(f"MongoDB: {redact_url(settings.mongo_url.get_secret_value())} db={settings.mongo_db}")
    services = plan_services()
    selector = selectors.DefaultSelector()
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    started: list[Service] = []
    exit_code = 0
    try:
        for i, service in enumerate(services):
            read_fd, write_fd = os.pipe()
            service.start(stdout=write_fd)
            os.close(write_fd)
            selector.register(
                os.fdopen(read_fd, "rb", buffering=0), selectors.EVENT_READ, (i, service)
            )
            started.append(service)
            if service.port is not None:
                service.wait_ready(90)
        url = f"http://{settings.app_host}:{settings.app_port}"
        print(
            f"\nStack is up: API {url} (docs {url}/docs), Flower http://127.0.0.1:{settings.flower_port}\n"
        )
        buffers: dict[int, bytes] = {}
        while not stopping:
            for key, _ in selector.select(timeout=0.5):
                i, service = key.data
                chunk = key.fileobj.read(65536)  # type: ignore[union-attr]
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                lines = (buffers.get(i, b"") + chunk).split(b"\n")
                buffers[i] = lines.pop()
                color = COLORS[i % len(COLORS)]
                for line in lines:
                    sys.stdout.write(
                        f"{color}{service.name:>11} |{RESET} {line.decode(errors='replace')}\n"
                    )
                sys.stdout.flush()
            dead = [s for s in started if not s.running]
            if dead:
                print(f"{dead[0].name} exited; stopping the stack", file=sys.stderr)
                exit_code = 1
                break
    except (RuntimeError, TimeoutError) as exc:
        print(f"could not start the stack: {exc}", file=sys.stderr)
        exit_code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for service in reversed(started):
            print(f"stopping {service.name}", file=sys.stderr)
            service.stop()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
