"""The errors tokenwire reports to clients, each with a stable wire `code`.

    TokenwireError                     INTERNAL
    ├── Unauthorized                   UNAUTHORIZED
    │   └── TokenExpired               TOKEN_EXPIRED
    ├── Forbidden                      FORBIDDEN
    ├── ValidationFailed               VALIDATION_ERROR
    ├── InvalidModel                   INVALID_MODEL
    ├── NotFound                       NOT_FOUND
    ├── Busy                           BUSY
    ├── RateLimited                    RATE_LIMIT       (retry_after seconds, when known)
    ├── Unavailable                    UNAVAILABLE      (the database cannot be reached)
    ├── ServerShutdown                 SERVER_SHUTDOWN
    └── UpstreamError                  UPSTREAM_ERROR   (the model server failed)
        ├── UpstreamRateLimited        RATE_LIMIT
        └── UpstreamTimeout            UPSTREAM_TIMEOUT

Third-party errors (aiohttp, SQLAlchemy, PyJWT) are translated where they enter,
with `raise ... from exc`, so everything above the providers and storage speaks
only these. `error_payload` turns any exception into the `chat:error` payload;
an unexpected one becomes INTERNAL with a generic message and is logged, never
shown. Messages are written for the person using the app: no stack traces,
secrets or upstream detail.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "Busy",
    "Forbidden",
    "InvalidModel",
    "NotFound",
    "RateLimited",
    "ServerShutdown",
    "TokenExpired",
    "TokenwireError",
    "Unauthorized",
    "Unavailable",
    "UpstreamError",
    "UpstreamRateLimited",
    "UpstreamTimeout",
    "ValidationFailed",
    "error_payload",
]


class TokenwireError(Exception):
    code: ClassVar[str] = "INTERNAL"
    http_status: ClassVar[int] = 500
    default_message: ClassVar[str] = "Something went wrong on our side. Please try again."

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        self.message = message or self.default_message
        self.retry_after = retry_after
        # Which conversation and message the error is about, when the client
        # already knows them (sent along in chat:error).
        self.ids: dict[str, str] = {}
        super().__init__(self.message)


class Unauthorized(TokenwireError):
    code = "UNAUTHORIZED"
    http_status = 401
    default_message = "Sign in again: your session token is missing or invalid."


class TokenExpired(Unauthorized):
    code = "TOKEN_EXPIRED"
    default_message = "Your session has expired. Sign in again."


class Forbidden(TokenwireError):
    code = "FORBIDDEN"
    http_status = 403
    default_message = "You are not allowed to do that."


class ValidationFailed(TokenwireError):
    code = "VALIDATION_ERROR"
    http_status = 422
    default_message = "The request was not valid."


class InvalidModel(TokenwireError):
    code = "INVALID_MODEL"
    http_status = 422
    default_message = "That model is not available here."


class NotFound(TokenwireError):
    code = "NOT_FOUND"
    http_status = 404
    default_message = "Conversation not found."


class Busy(TokenwireError):
    code = "BUSY"
    http_status = 409
    default_message = "A reply is still streaming. Stop it or wait for it to finish."


class RateLimited(TokenwireError):
    code = "RATE_LIMIT"
    http_status = 429
    default_message = "Too many requests. Please wait a moment and try again."


class Unavailable(TokenwireError):
    code = "UNAVAILABLE"
    http_status = 503
    default_message = "The service is temporarily unavailable. Please try again shortly."


class ServerShutdown(TokenwireError):
    code = "SERVER_SHUTDOWN"
    http_status = 503
    default_message = "The server is restarting. Your reply so far was saved; please reconnect."


class UpstreamError(TokenwireError):
    code = "UPSTREAM_ERROR"
    http_status = 502
    default_message = "The AI model failed to answer. Please try again."

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        # True when nothing of the reply has reached anyone yet, so the
        # request may be sent again.
        self.retryable = retryable


class UpstreamRateLimited(UpstreamError):
    code = "RATE_LIMIT"
    http_status = 429
    default_message = "The AI model is busy right now. Please wait a moment and try again."


class UpstreamTimeout(UpstreamError):
    code = "UPSTREAM_TIMEOUT"
    http_status = 504
    default_message = "The AI model took too long to answer. Please try again."


def error_payload(exc: BaseException, **ids: str | None) -> dict[str, Any]:
    """The `chat:error` payload for any exception: `{message, code, ...ids, retryAfter?}`."""
    err = exc if isinstance(exc, TokenwireError) else TokenwireError()
    payload: dict[str, Any] = {"message": err.message, "code": err.code, **err.ids}
    payload.update({key: value for key, value in ids.items() if value is not None})
    if err.retry_after is not None:
        payload["retryAfter"] = err.retry_after
    return payload
