"""Settings: every knob tokenwire has, read once from the environment and `.env`.

`Settings` is built by the caller (the CLI, a test) and handed to
`create_app(settings)`; nothing reads the environment at import time. Variable
names are a public contract (operators' scripts use them) and are listed in the
README and in `.env.example`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Environment", "Settings", "SettingsError", "load_settings"]

_MIN_SECRET_BYTES = 32
_DEV_SECRET = "tokenwire-development-secret-change-me"


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class SettingsError(ValueError):
    """A setting has a value tokenwire refuses; the message names the variable."""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
        env_ignore_empty=True,  # `KEY=` in .env means "use the default", as in .env.example
    )

    # --- server
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    env: Environment = Environment.DEVELOPMENT
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    cors_origin: Annotated[list[str], NoDecode] = ["http://localhost:5173"]
    ping_interval: float = Field(25, gt=0)
    ping_timeout: float = Field(20, gt=0)
    ws_compression: bool = False
    shutdown_grace_s: float = Field(10, ge=0)
    # False: python-engineio's own sockets and uvicorn's own WebSocket protocol
    # instead of the lean layer (wire/engine.py, server.LeanWebSocketProtocol),
    # for when a library release and the lean layer disagree.
    lean_engine: bool = True

    # --- authentication
    jwt_secret: str = ""
    jwt_algorithms: Annotated[list[str], NoDecode] = ["HS256"]
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_jwks_url: str | None = None
    auth_required: bool = True
    admin_users: Annotated[list[str], NoDecode] = []

    # --- storage
    database_url: str = "sqlite:///./tokenwire.db"
    redis_url: str | None = None

    # --- upstream model
    llm_provider: Literal["openai", "demo"] | None = None
    openai_api_key: str | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    default_model: str = "gpt-4"
    allowed_models: Annotated[list[str], NoDecode] = []
    default_max_tokens: int = Field(4096, ge=1)
    max_tokens_limit: int | None = Field(None, ge=1)
    default_temperature: float = Field(0.7, ge=0, le=2)
    system_prompt: str = ""
    max_message_chars: int = Field(32000, ge=1)
    history_max_tokens: int = Field(8000, ge=1)
    # Each model's context window in tokens, `name=tokens,...`; models not
    # named are asked of the upstream's /v1/models.
    model_context: Annotated[dict[str, int], NoDecode] = {}
    upstream_timeout_s: float = Field(60, gt=0)
    upstream_idle_timeout_s: float = Field(60, gt=0)
    upstream_retries: int = Field(2, ge=0, le=10)
    # Replies talking to the upstream at once (llama.cpp, Ollama: 1); the
    # rest wait in line, at most UPSTREAM_QUEUE_TIMEOUT_S. None: no limit.
    upstream_max_concurrency: int | None = Field(None, ge=1)
    upstream_queue_timeout_s: float = Field(300, gt=0)
    demo_tokens_per_s: float = Field(40, gt=0)

    # --- streaming
    stream_flush_ms: float = Field(50, ge=0)

    # --- Socket.IO connection state recovery (see wire/recovery.py)
    connection_recovery: bool = True
    connection_recovery_s: float = Field(120, gt=0)
    connection_recovery_max_bytes: int = Field(131_072, ge=1024)

    # --- limits
    rate_limit_chat: str = "20/minute"
    max_streams_per_user: int = Field(3, ge=1)
    max_connections_per_user: int = Field(10, ge=1)
    connect_rate_per_ip: str = "60/minute"
    max_socket_backlog: int = Field(256, ge=1)
    checkpoint_interval_s: float = Field(2, gt=0)

    # --- monitoring
    metrics_token: str | None = None

    @field_validator(
        "cors_origin", "jwt_algorithms", "allowed_models", "admin_users", mode="before"
    )
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("model_context", mode="before")
    @classmethod
    def _model_context(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        windows: dict[str, int] = {}
        for part in _split_csv(value):
            name, _, size = part.rpartition("=")
            try:
                tokens = int(size)
            except ValueError:
                tokens = 0
            if not name.strip() or tokens < 1:
                raise ValueError(f"{part!r} is not 'model=tokens' (e.g. llama3.2=8192)")
            windows[name.strip()] = tokens
        return windows

    @field_validator("openai_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        allowed = {
            "HS256",
            "HS384",
            "HS512",
            "RS256",
            "RS384",
            "RS512",
            "ES256",
            "ES384",
            "ES512",
            "PS256",
            "PS384",
            "PS512",
            "EdDSA",
        }
        unknown = [alg for alg in value if alg not in allowed]
        if unknown or not value:
            # "none" is never accepted: a token without a signature proves nothing.
            raise ValueError(
                f"unsupported algorithm(s) {unknown or value}; choose from {sorted(allowed)}"
            )
        return value

    @field_validator("rate_limit_chat", "connect_rate_per_ip")
    @classmethod
    def _rate_notation(cls, value: str) -> str:
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a rate like '20/minute'") from exc
        return value

    @model_validator(mode="after")
    def _derive_and_check(self) -> Settings:
        if self.llm_provider is None:
            configured = self.openai_api_key or "openai_base_url" in self.model_fields_set
            self.llm_provider = "openai" if configured else "demo"
        if not self.allowed_models:
            self.allowed_models = [self.default_model]
        if self.max_tokens_limit is None:
            self.max_tokens_limit = self.default_max_tokens
        if self.env is Environment.PRODUCTION:
            if not self.auth_required:
                raise ValueError("AUTH_REQUIRED=false is for development only")
            hs = any(alg.startswith("HS") for alg in self.jwt_algorithms)
            if hs and not self.jwt_jwks_url and len(self.jwt_secret.encode()) < _MIN_SECRET_BYTES:
                raise ValueError(
                    f"JWT_SECRET must be at least {_MIN_SECRET_BYTES} bytes in production "
                    "(or set JWT_JWKS_URL)"
                )
        elif not self.jwt_secret:
            # Development convenience: `tokenwire token` and the server agree
            # on this secret, so the Quick start needs no configuration.
            self.jwt_secret = _DEV_SECRET
        return self

    @property
    def is_production(self) -> bool:
        return self.env is Environment.PRODUCTION

    def model_allowed(self, model: str) -> bool:
        return "*" in self.allowed_models or model in self.allowed_models


def load_settings(**overrides: Any) -> Settings:
    """Build `Settings`, turning pydantic's report into one line naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(part) for part in err.get("loc", ()) if part != "__root__"]
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        # Field errors are prefixed with the variable; cross-field ones name it themselves.
        raise SettingsError(f"{loc[0].upper()}: {message}" if loc else message) from exc
