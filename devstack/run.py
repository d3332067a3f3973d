"""``make run``: the whole stack on this machine, in the foreground, with combined logs.

Starts Redis (unless one already answers at REDIS_URL), the MongoDB-compatible dev server
(unless one answers at MONGO_URL), the Celery worker, Celery beat, Flower and the API.
Ctrl-C, SIGTERM or SIGHUP stops everything in reverse order; if any process dies, the rest are
stopped too. Nothing outlives the supervisor: its children get SIGTERM from the kernel when
it dies, even by SIGKILL, and the next run first ends whatever a dead run left behind
(``run_state``). Only one run at a time per ``DEVSTACK_DIR``.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

from devstack.prometheus import prometheus_binary, prometheus_command, write_config
from devstack.run_state import AnotherRunActive, RunState
from devstack.services import (
    ROOT,
    Service,
    api_command,
    beat_command,
    dev_store_env,
    flower_command,
    mongo_command,
    port_open,
    redis_command,
    worker_command,
)
from shared.settings import get_settings, redact_url

DEV_FLOWER_LOGIN = "admin:change-me-flower"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
COLORS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m"]
RESET = "\033[0m"


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url.split(",")[0])
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _flower_login() -> str:
    """FLOWER_BASIC_AUTH if set, else the documented development login (never in .env:
    compose would take it from there for the deployed stack)."""
    configured = get_settings().flower_basic_auth
    return configured.get_secret_value() if configured else DEV_FLOWER_LOGIN


def _devstack_dir() -> Path:
    configured = get_settings().devstack_dir
    return configured if configured.is_absolute() else ROOT / configured


def plan_services() -> list[Service]:
    settings = get_settings()
    data = _devstack_dir()
    services: list[Service] = []
    seen_redis: set[int] = set()
    for url in (settings.redis_url, settings.broker_url):
        host, port = _host_port(url.get_secret_value(), 6379)
        if host in ("127.0.0.1", "localhost") and port not in seen_redis:
            seen_redis.add(port)
            if not port_open(host, port):
                (data / "redis").mkdir(parents=True, exist_ok=True)
                services.append(
                    Service(
                        f"redis:{port}",
                        redis_command(port, str(data / "redis")),
                        port=port,
                        die_with_parent=True,
                    )
                )
    host, port = _host_port(settings.mongo_url.get_secret_value(), 27017)
    starts_store = host in ("127.0.0.1", "localhost") and not port_open(host, port)
    if starts_store:
        (data / "mongo").mkdir(parents=True, exist_ok=True)
        services.append(
            Service(
                "mongo",
                mongo_command(
                    port,
                    str(data / "mongo"),
                    cache=settings.devstack_store_cache,
                    switch_interval_ms=settings.devstack_store_switch_interval_ms,
                ),
                port=port,
                die_with_parent=True,
            )
        )
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    flower_env = {"FLOWER_BASIC_AUTH": _flower_login()}
    api_env = {}
    if settings.api_workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Several uvicorn processes: /metrics must merge their series (fresh files each run).
        prom = data / "prometheus"
        shutil.rmtree(prom, ignore_errors=True)
        prom.mkdir(parents=True)
        api_env["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
    worker_env = dev_store_env(settings.model_fields_set) if starts_store else {}
    services += [
        Service(
            "worker",
            worker_command(settings.worker_concurrency, "worker"),
            env=worker_env,
            die_with_parent=True,
        ),
        Service("beat", beat_command(str(data / "celerybeat-schedule")), die_with_parent=True),
        Service(
            "flower",
            flower_command(settings.flower_port),
            env=flower_env,
            port=settings.flower_port,
            die_with_parent=True,
        ),
        Service(
            "api",
            api_command(settings.app_host, settings.app_port, settings.api_workers),
            env=api_env,
            port=settings.app_port,
            die_with_parent=True,
        ),
    ]
    if settings.devstack_prometheus:
        services.append(_prometheus_service(data))
    return services


def wait_until_listening(service: Service, timeout_s: float, every_s: float = 10.0) -> None:
    """``timeout_s=0``: as long as the process runs. A dev store holding 100M rows took
    more than the old fixed 90 s to listen after a restart (47 s with a warm page cache);
    a process that exits still ends the wait at once, and a line every ``every_s`` says
    what is being waited for."""

    def report(waited: float) -> None:
        limit = f" of {timeout_s:.0f} s" if timeout_s else ""
        print(
            f"waiting for {service.name} to listen on port {service.port}: "
            f"{waited:.0f} s{limit} (still starting; a big store takes a while)",
            flush=True,
        )

    service.wait_ready(timeout_s or None, progress=report, progress_every=every_s)


def _prometheus_service(data: Path) -> Service:
    """Opt-in (DEVSTACK_PROMETHEUS=true): the repository's rules over this stack's API, so
    the alerts page shows what production would (docs/operations.md)."""
    settings = get_settings()
    binary = prometheus_binary()
    if binary is None:
        raise RuntimeError("DEVSTACK_PROMETHEUS needs prometheus: run `make system-deps`")
    host = "127.0.0.1" if settings.app_host in ("0.0.0.0", "::") else settings.app_host
    directory = data / "prometheus-server"
    secret = settings.read_token or settings.write_token
    token = secret.get_secret_value() if secret is not None else None
    config = write_config(directory, [f"{host}:{settings.app_port}"], token=token)
    return Service(
        "prometheus",
        prometheus_command(binary, config, settings.prometheus_port, directory / "tsdb"),
        port=settings.prometheus_port,
        die_with_parent=True,
    )


class _StopRequested(Exception):
    """A stop signal while the stack was still starting."""


def main() -> int:
    settings = get_settings()
    state = RunState(_devstack_dir() / "run")
    try:
        ended = state.acquire()
    except AnotherRunActive as exc:
        print(exc, file=sys.stderr)
        return 1
    if ended:
        print(f"ended processes left by a previous run: {', '.join(ended)}", file=sys.stderr)
    print(f"MongoDB: {redact_url(settings.mongo_url.get_secret_value())} db={settings.mongo_db}")
    selector = selectors.DefaultSelector()
    stopping = False
    interruptible = True  # while starting: a stop signal ends a readiness wait at once

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if interruptible:
            raise _StopRequested

    for sig in STOP_SIGNALS:
        signal.signal(sig, request_stop)
    started: list[Service] = []
    exit_code = 0
    try:
        services = plan_services()
        for i, service in enumerate(services):
            read_fd, write_fd = os.pipe()
            # A stop signal between starting a child and recording it only sets the flag,
            # so no child goes unrecorded (a blocked signal mask would be inherited instead).
            interruptible = False
            service.start(stdout=write_fd)
            started.append(service)
            assert service.proc is not None
            state.add(service.name, service.proc.pid)
            interruptible = True
            if stopping:
                raise _StopRequested
            os.close(write_fd)
            selector.register(
                os.fdopen(read_fd, "rb", buffering=0), selectors.EVENT_READ, (i, service)
            )
            if service.port is not None:
                wait_until_listening(service, settings.devstack_start_timeout_s)
        interruptible = False
        url = f"http://{settings.app_host}:{settings.app_port}"
        flower = f"http://127.0.0.1:{settings.flower_port}"
        login = "FLOWER_BASIC_AUTH" if settings.flower_basic_auth else DEV_FLOWER_LOGIN
        alerts = (
            f", Prometheus http://127.0.0.1:{settings.prometheus_port}/alerts"
            if settings.devstack_prometheus
            else ""
        )
        print(
            f"\nStack is up: API {url} (operator page {url}/ui, docs {url}/docs), "
            f"Flower {flower} (login {login}){alerts}\n",
            flush=True,
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
    except _StopRequested:
        pass
    except (RuntimeError, TimeoutError) as exc:
        print(f"could not start the stack: {exc}", file=sys.stderr)
        exit_code = 1
    finally:
        interruptible = False
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        for service in reversed(started):
            print(f"stopping {service.name}", file=sys.stderr)
            service.stop()
        state.release()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
