import json
import re
from pathlib import Path

import pytest

from shared.settings import Settings, redact_url


def test_precedence_defaults_then_json_then_dotenv_then_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("MONGO_DB", "CHUNK_SIZE_BYTES", "VERSIONS_TO_KEEP", "APP_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CONFIG_FILE", str(tmp_path / "config.json"))
    assert Settings().versions_to_keep == 2  # code default

    (tmp_path / "config.json").write_text(
        json.dumps({"mongo_db": "from_json", "chunk_size_bytes": 1, "versions_to_keep": 5})
    )
    s = Settings()
    assert (s.mongo_db, s.chunk_size_bytes, s.versions_to_keep) == ("from_json", 1, 5)

    (tmp_path / ".env").write_text("MONGO_DB=from_dotenv\nCHUNK_SIZE_BYTES=2\n")
    s = Settings()
    assert (s.mongo_db, s.chunk_size_bytes, s.versions_to_keep) == ("from_dotenv", 2, 5)

    monkeypatch.setenv("MONGO_DB", "from_env")
    s = Settings()
    assert (s.mongo_db, s.chunk_size_bytes, s.versions_to_keep) == ("from_env", 2, 5)


def test_secrets_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGO_URL", "mongodb://app:s3cret@db:27017/?authSource=admin")
    monkeypatch.setenv("WRITE_TOKEN", "tok-123")
    s = Settings()
    for text in (repr(s), str(s.safe_summary())):
        assert "s3cret" not in text and "tok-123" not in text
    assert s.safe_summary()["mongo_url"] == "mongodb://app:***@db:27017/?authSource=admin"


def test_redact_url_leaves_urls_without_password() -> None:
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


TOKEN = "t" * 40
REAL = {
    "WRITE_TOKEN": "w" * 32 + "Wq81zk",
    "MONGO_URL": "mongodb://promotions:db-pass-Dq81zk@mongo:27017/",
    "REDIS_URL": "redis://:cache-pass-Cq81zk@cache:6379/0",
    "BROKER_URL": "redis://:broker-pass-Bq81zk@redis:6379/0",
    "FLOWER_BASIC_AUTH": "ops:flower-pass-Fq81zk",
}


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("CONFIG_FILE", "/nonexistent.json")
    monkeypatch.setenv("PRODUCTION", "true")
    for key, value in REAL.items():
        monkeypatch.setenv(key, value)
    for key in ("READ_TOKEN", "SERVICE_ROLE"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({"WRITE_TOKEN": None}, "WRITE_TOKEN is not set"),
        ({"WRITE_TOKEN": "change-me-dev-token" + "x" * 30 + "Tq81zk"}, "WRITE_TOKEN is a 'cha"),
        ({"WRITE_TOKEN": "Change-Me-x" + "x" * 30 + "Uq81zk"}, "WRITE_TOKEN is a 'change-me"),
        ({"WRITE_TOKEN": "x"}, "WRITE_TOKEN is shorter than 32"),
        ({"READ_TOKEN": "short-Rq81zk"}, "READ_TOKEN is shorter than 32"),
        ({"MONGO_URL": "mongodb://u:CHANGE-ME-db-Mq81zk@db/"}, "password in MONGO_URL is a"),
        ({"MONGO_URL": "mongodb://mongo:27017/"}, "MONGO_URL has no password"),
        ({"REDIS_URL": "redis://cache:6379/0"}, "REDIS_URL has no password"),
        ({"BROKER_URL": "redis://:short@redis:6379/0"}, "password in BROKER_URL is shorter"),
        ({"FLOWER_BASIC_AUTH": None}, "FLOWER_BASIC_AUTH is not set"),
        ({"FLOWER_BASIC_AUTH": "admin:change-me-flower"}, "FLOWER_BASIC_AUTH password is a"),
    ],
)
def test_production_refuses_missing_short_and_placeholder_secrets(
    production: pytest.MonkeyPatch, env: dict[str, str | None], refused: str
) -> None:
    for key, value in env.items():
        if value is None:
            production.delenv(key)
        else:
            production.setenv(key, value)
    with pytest.raises(ValueError, match=refused) as raised:
        Settings()
    shown = str(raised.value)  # no secret shows, not even the end of one
    assert "input_value" not in shown
    for value in [*REAL.values(), *env.values()]:
        assert not value or "q81zk" not in shown
    assert Settings(production=False).production is False


def test_production_accepts_real_secrets(production: pytest.MonkeyPatch) -> None:
    assert Settings().production
    production.setenv("READ_TOKEN", TOKEN)
    assert Settings().read_token is not None


@pytest.mark.parametrize(
    ("role", "unset"),
    [
        ("worker", ["WRITE_TOKEN", "FLOWER_BASIC_AUTH"]),
        ("beat", ["WRITE_TOKEN", "FLOWER_BASIC_AUTH", "MONGO_URL", "REDIS_URL"]),
        ("flower", ["WRITE_TOKEN", "MONGO_URL", "REDIS_URL"]),
    ],
)
def test_each_role_needs_only_the_secrets_it_uses(
    production: pytest.MonkeyPatch, role: str, unset: list[str]
) -> None:
    production.setenv("SERVICE_ROLE", role)
    for key in unset:
        production.delenv(key)
    assert Settings().service_role == role
    production.setenv("SERVICE_ROLE", "api")
    with pytest.raises(ValueError, match="production needs real secrets"):
        Settings()


@pytest.mark.parametrize("value", ["", " ", "\t"])
def test_an_empty_token_is_refused_at_start_up(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CONFIG_FILE", "/nonexistent.json")
    for name in ("WRITE_TOKEN", "READ_TOKEN"):
        monkeypatch.delenv("WRITE_TOKEN", raising=False)
        monkeypatch.delenv("READ_TOKEN", raising=False)
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=f"{name} is set but empty"):
            Settings()


def test_every_setting_has_a_row_in_the_configuration_page() -> None:
    """docs/configuration.md is where operators look a setting up: none may be missing."""
    page = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    rows = [line for line in page.read_text().splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row)}
    missing = sorted({name.upper() for name in Settings.model_fields} - documented)
    assert not missing, f"settings without a row in docs/configuration.md: {missing}"


def test_the_default_process_cache_keeps_an_api_process_under_its_memory_budget() -> None:
    """An API process is ~77 MiB before lookups and needs up to ~1.4x its cache's bound on
    top when answers turn over (bench.api_memory, docs/scaling.md "API memory"); the
    default must keep it within the 150 MiB each API process is allowed."""
    mib = 1 << 20
    idle_mib, turnover, budget_mib = 77, 1.4, 150
    cache_mib = Settings(_env_file=None).local_cache_max_bytes / mib  # type: ignore[call-arg]
    assert idle_mib + turnover * cache_mib <= budget_mib
