"""Settings: defaults, derived values, and refusals that name the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tokenwire.config import SettingsError, load_settings


def test_defaults_serve_the_demo_model_on_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LLM_PROVIDER", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(_env_file=None)
    assert settings.llm_provider == "demo"
    assert settings.database_url == "sqlite:///./tokenwire.db"
    assert settings.allowed_models == ["gpt-4"]
    assert settings.max_tokens_limit == settings.default_max_tokens == 4096
    assert settings.cors_origin == ["http://localhost:5173"]
    assert settings.jwt_secret  # a development secret, so `tokenwire token` just works


def test_openai_is_the_provider_once_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1/")
    settings = load_settings(_env_file=None)
    assert settings.llm_provider == "openai"
    assert settings.openai_base_url == "http://127.0.0.1:11434/v1"


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGIN", "https://a.example, https://b.example")
    monkeypatch.setenv("ALLOWED_MODELS", "gpt-4o,llama3")
    settings = load_settings(_env_file=None)
    assert settings.cors_origin == ["https://a.example", "https://b.example"]
    assert settings.model_allowed("llama3") and not settings.model_allowed("gpt-4")
    monkeypatch.setenv("ALLOWED_MODELS", "*")
    assert load_settings(_env_file=None).model_allowed("anything")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"JWT_ALGORITHMS": "none"}, "JWT_ALGORITHMS"),
        ({"RATE_LIMIT_CHAT": "lots"}, "RATE_LIMIT_CHAT"),
        ({"DEFAULT_TEMPERATURE": "3"}, "DEFAULT_TEMPERATURE"),
        ({"ENV": "staging"}, "ENV"),
        ({"ENV": "production", "JWT_SECRET": "short"}, "JWT_SECRET"),
        ({"ENV": "production", "JWT_SECRET": "x" * 40, "AUTH_REQUIRED": "false"}, "AUTH_REQUIRED"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=named):
        load_settings(_env_file=None)


def test_production_accepts_a_long_secret_or_jwks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENV", "production")
    monkeypatch.setenv("JWT_SECRET", "s" * 32)
    assert load_settings(_env_file=None).is_production
    monkeypatch.setenv("JWT_SECRET", "")
    monkeypatch.setenv("JWT_JWKS_URL", "https://id.example/.well-known/jwks.json")
    monkeypatch.setenv("JWT_ALGORITHMS", "RS256")
    assert load_settings(_env_file=None).jwt_jwks_url


def test_serve_with_a_bad_value_stops_with_one_line(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tokenwire", "serve"],
        env={"PATH": "/usr/bin:/bin", "PORT": "eighty", "HOME": str(tmp_path)},
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PORT" in lines[0]
