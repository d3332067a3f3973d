import json
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


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({}, "WRITE_TOKEN"),
        ({"WRITE_TOKEN": "change-me-dev-token"}, "placeholder"),
        (
            {"WRITE_TOKEN": "s3cret", "MONGO_URL": "mongodb://u:change-me@db/"},
            "MongoDB password",
        ),
    ],
)
def test_production_refuses_placeholders(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], refused: str
) -> None:
    monkeypatch.delenv("WRITE_TOKEN", raising=False)
    monkeypatch.setenv("PRODUCTION", "true")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=refused):
        Settings()
    monkeypatch.setenv("WRITE_TOKEN", "a-real-secret")
    monkeypatch.setenv("MONGO_URL", "mongodb://u:real@db/")
    assert Settings().production
