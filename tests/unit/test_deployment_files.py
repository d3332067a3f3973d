"""The compose stack and images keep their promises (no Docker engine needed to check)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_every_service_is_health_checked_and_waits_for_healthy_deps(
    compose: dict[str, Any],
) -> None:
    assert "version" not in compose
    services = compose["services"]
    assert set(services) >= {"api", "worker", "beat", "flower", "mongo", "redis", "cache", "edge"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, how in (service.get("depends_on") or {}).items():
            assert how == {"condition": "service_healthy"}, f"{name} -> {dep}"


def test_store_and_broker_are_pinned_private_and_authenticated(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert re.fullmatch(r"mongo:8\.\d+\.\d+", services["mongo"]["image"])
    for name in ("redis", "cache"):
        assert re.fullmatch(r"redis:7\.\d+\.\d+(-alpine)?", services[name]["image"])
    assert "noeviction" in " ".join(services["redis"]["command"])  # the broker never loses tasks
    assert "allkeys-lru" in " ".join(services["cache"]["command"])  # the cache can make room
    for name in ("mongo", "redis", "cache"):
        assert "ports" not in services[name], f"{name} must not be published"
    assert "MONGO_INITDB_ROOT_PASSWORD" in services["mongo"]["environment"]
    text = (ROOT / "docker-compose.yml").read_text()
    for required in _COMPOSE_ENV:
        assert "${" + required + ":?" in text, f"{required} must be required"
    for name, variable in (("redis", "REDIS_PASSWORD"), ("cache", "CACHE_PASSWORD")):
        command = " ".join(services[name]["command"])
        assert "requirepass" in command and f"$${variable}" in command, name
        assert f'REDISCLI_AUTH="$${variable}"' in " ".join(services[name]["healthcheck"]["test"])
    assert 'PRODUCTION: "true"' in text
    # The service connects as its own readWrite user, created at init, never as root.
    assert "mongodb://promotions:${MONGO_PASSWORD" in text and "authSource=vervedb" in text
    init = (ROOT / "deploy" / "mongo-init.js").read_text()
    assert 'role: "readWrite", db: "vervedb"' in init and "MONGO_APP_PASSWORD" in init


# A slim Python of an exact version, pinned by the digest of its image (docs/security.md,
# "Base image"): the tag alone can be moved to another image.
_PINNED_BASE = r"python:\d+\.\d+\.\d+-slim(-[a-z]+)?@sha256:[0-9a-f]{64}"


def _base_image(dockerfile: str) -> str:
    [line] = re.findall(r"^FROM .*$", (ROOT / dockerfile).read_text(), re.M)
    return line.removeprefix("FROM ").strip()


def test_both_images_build_on_the_same_pinned_base() -> None:
    assert _base_image("Dockerfile.api") == _base_image("Dockerfile.worker")


@pytest.mark.parametrize("dockerfile", ["Dockerfile.api", "Dockerfile.worker"])
def test_images_are_slim_pinned_non_root_and_runtime_only(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    assert re.fullmatch(_PINNED_BASE, _base_image(dockerfile)), _base_image(dockerfile)
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert "requirements-dev" not in text and "secantus" not in text
    assert "secantus" not in (ROOT / "requirements.txt").read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and "data" in ignored


def _compose_client() -> list[str]:
    """A real compose client: Docker's v2 plugin where it exists, else Debian's
    ``docker-compose`` (``make system-deps`` installs it). Missing is a failure, not a skip:
    CI must never pass an unchecked compose file."""
    if shutil.which("docker") and (
        subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("no compose client: run `make system-deps` (installs Debian's docker-compose)")


# What the stack requires from the environment; the check sees nothing else of ours.
_COMPOSE_ENV = {
    "WRITE_TOKEN": "t",
    "READ_TOKEN": "rt",
    "MONGO_PASSWORD": "p",
    "MONGO_ROOT_PASSWORD": "r",
    "REDIS_PASSWORD": "bp",
    "CACHE_PASSWORD": "cp",
    "FLOWER_BASIC_AUTH": "a:b",
    "GRAFANA_ADMIN_PASSWORD": "g",
}

# What each application container may receive: the secrets its role uses, no more.
_SECRETS = {
    "MONGO_URL",
    "REDIS_URL",
    "BROKER_URL",
    "WRITE_TOKEN",
    "READ_TOKEN",
    "FLOWER_BASIC_AUTH",
}
_ROLE_SECRETS = {
    "api": {"MONGO_URL", "REDIS_URL", "BROKER_URL", "WRITE_TOKEN", "READ_TOKEN"},
    "worker": {"MONGO_URL", "REDIS_URL", "BROKER_URL"},
    "beat": {"BROKER_URL"},
    "flower": {"BROKER_URL", "FLOWER_BASIC_AUTH"},
}


def _compose_config(
    compose_file: Path, env: dict[str, str], quiet: bool = True
) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [*_compose_client(), "-f", str(compose_file), "config", *(["-q"] if quiet else [])],
        cwd=compose_file.parent,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _stack_services() -> dict[str, Any]:
    """The stack's services as compose resolves them with the required secrets set."""
    done = _compose_config(ROOT / "docker-compose.yml", _COMPOSE_ENV, quiet=False)
    assert done.returncode == 0, done.stderr
    services: dict[str, Any] = yaml.safe_load(done.stdout)["services"]
    return services


def test_compose_config_validates() -> None:
    done = _compose_config(ROOT / "docker-compose.yml", _COMPOSE_ENV)
    assert done.returncode == 0, done.stderr


def test_the_development_env_file_does_not_leak_into_the_stack() -> None:
    """Compose substitutes ${VAR} from the .env beside the file: the stack's own service URLs
    must win over the development values there (127.0.0.1)."""
    assert (ROOT / ".env").exists()
    services = _stack_services()
    for name in ("api", "worker", "beat", "flower"):
        env = services[name]["environment"]
        assert env["BROKER_URL"] == "redis://:bp@redis:6379/0", name
        if "REDIS_URL" in env:
            assert env["REDIS_URL"] == "redis://:cp@cache:6379/0", name
        assert "127.0.0.1" not in env.get("MONGO_URL", ""), name


def test_only_the_edge_is_published_and_each_container_gets_only_its_secrets() -> None:
    services = _stack_services()
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"edge", "prometheus", "grafana"}
    [edge] = services["edge"]["ports"]
    assert str(edge.get("target", edge)).endswith("8443")
    # Prometheus has no login and Grafana's is plain HTTP: this host's loopback only.
    for name in published - {"edge"}:
        for port in services[name]["ports"]:
            host = port.get("host_ip") if isinstance(port, dict) else str(port)
            assert str(host).startswith("127.0.0.1"), (name, port)
    for role, wanted in _ROLE_SECRETS.items():
        env = services[role]["environment"]
        assert env["SERVICE_ROLE"] == role and env["PRODUCTION"] == "true"
        assert set(env) & _SECRETS == wanted, role
    mounts = " ".join(str(v) for v in services["edge"]["volumes"])
    assert "deploy/nginx/nginx.conf" in mounts and "deploy/tls" in mounts


def _nginx_blocks(text: str, head: str) -> list[str]:
    """The bodies of the blocks opened by ``head`` (e.g. ``location /flower/``)."""
    bodies = []
    for match in re.finditer(re.escape(head) + r"\s*\{", text):
        depth, start = 1, match.end()
        end = start
        while depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        bodies.append(text[start : end - 1])
    return bodies


def _nginx_directives(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_flower_is_reached_only_through_the_edge_with_a_login_on_every_path() -> None:
    """Flower serves /metrics and /healthcheck without its own login: it is never published,
    and the edge asks for a login on everything under /flower/ (tests/e2e/test_edge.py runs
    it). Flower keeps its own login too."""
    services = _stack_services()
    flower = services["flower"]
    assert not flower.get("ports"), "Flower must not be published"
    assert "--url_prefix=flower" in " ".join(flower["command"])
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == _COMPOSE_ENV["FLOWER_BASIC_AUTH"]
    # The edge holds only the login's hash (a mounted file), no secret in its environment.
    assert not services["edge"].get("environment")
    # Compose clients write a volume as "source:target:mode" or as a mapping.
    mounts = [
        f"{v['source']}:{v['target']}" if isinstance(v, dict) else str(v).removesuffix(":ro")
        for v in services["edge"]["volumes"]
    ]
    assert any(m.endswith("deploy/edge-auth:/etc/nginx/auth") for m in mounts), mounts
    edge = ROOT / "deploy" / "nginx" / "edge"
    server = _nginx_directives((edge / "server.conf").read_text())
    [location] = _nginx_blocks(server, "location /flower/")
    assert location.split() == ["include", "edge/flower.conf;"]
    flower_conf = _nginx_directives((edge / "flower.conf").read_text())
    assert re.search(r"^auth_basic \"[^\"]+\";", flower_conf, re.M)
    assert re.search(r"^auth_basic_user_file auth/flower\.htpasswd;", flower_conf, re.M)
    assert "proxy_pass http://$flower_upstream;" in flower_conf
    assert "set $flower_upstream flower:5555;" in flower_conf
    # Nothing turns the login off, and only that location reaches Flower.
    for conf in edge.parent.rglob("*.conf"):
        text = _nginx_directives(conf.read_text())
        assert "auth_basic off" not in text, conf
        if conf.name != "flower.conf":
            assert "flower:" not in text and "$flower_upstream" not in text, conf
    assert "deploy/edge-auth/" in (ROOT / ".gitignore").read_text().split()


def test_compose_check_rejects_a_broken_file_and_missing_secrets(tmp_path: Path) -> None:
    """The check above can fail: an unknown option or a missing required secret does."""
    text = (ROOT / "docker-compose.yml").read_text()
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace("  api:\n", "  api:\n    restart_policy_typo: always\n", 1))
    done = _compose_config(broken, _COMPOSE_ENV)
    assert done.returncode != 0 and "restart_policy_typo" in done.stderr, done.stderr
    without = {k: v for k, v in _COMPOSE_ENV.items() if k != "MONGO_ROOT_PASSWORD"}
    done = _compose_config(ROOT / "docker-compose.yml", without)
    assert done.returncode != 0 and "MONGO_ROOT_PASSWORD" in done.stderr, done.stderr


def test_the_images_install_every_package_pinned_with_hashes() -> None:
    """requirements.lock (``make lock``) holds every runtime package, indirect ones too, at
    the version requirements.txt names, each with hashes; the images install only it."""
    lock = (ROOT / "requirements.lock").read_text()
    entries = re.findall(
        r"^([A-Za-z0-9_.\-]+)==(\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]{64}.*\n)+)", lock, re.M
    )
    pinned = {name.lower().replace("_", "-"): version for name, version, _ in entries}
    assert len(entries) == len(re.findall(r"^\S+==", lock, re.M)), "an entry has no hash"
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = re.sub(r"\[.*\]", "", line).split("==")
            assert pinned.get(name.lower().replace("_", "-")) == version, line
    for dockerfile in ("Dockerfile.api", "Dockerfile.worker"):
        text = (ROOT / dockerfile).read_text()
        assert "pip install --require-hashes --no-deps -r requirements.lock" in text
        assert "requirements.txt" not in text
