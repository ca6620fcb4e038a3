"""Who is calling: JWT verification for sockets and HTTP, and tokens for trying things out.

The key is chosen by the token's algorithm, and only algorithms listed in
JWT_ALGORITHMS are accepted, so `alg: none` and HS/RS confusion (an RSA
public key used as an HMAC secret) fail: HS* tokens are checked against
JWT_SECRET, asymmetric ones against the identity provider's JWKS. `exp` and
`nbf` are always checked; `aud` and `iss` when configured. The user id is
`sub`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import orjson

from tokenwire.config import Settings
from tokenwire.errors import TokenExpired, Unauthorized

__all__ = ["Authenticator", "Principal"]

log = logging.getLogger(__name__)

_JWKS_TTL_S = 600.0
_JWKS_MIN_REFRESH_S = 30.0  # an unknown `kid` refetches at most this often
_LEEWAY_S = 5  # clock skew between us and whoever issued the token


@dataclass(slots=True, frozen=True)
class Principal:
    user_id: str
    is_admin: bool = False
    claims: dict[str, Any] = field(default_factory=dict)


class _Jwks:
    """The identity provider's signing keys, cached and refreshed when a new `kid` appears."""

    def __init__(self, url: str, client: aiohttp.ClientSession) -> None:
        self._url = url
        self._client = client
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        stale = now - self._fetched_at > _JWKS_TTL_S
        missing = kid not in self._keys and now - self._fetched_at > _JWKS_MIN_REFRESH_S
        if stale or missing:
            await self._refresh()
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        if kid is None or kid not in self._keys:
            raise Unauthorized()
        return self._keys[kid]

    async def _refresh(self) -> None:
        async with self._lock:
            try:
                timeout = aiohttp.ClientTimeout(total=10)
                async with self._client.get(
                    self._url, timeout=timeout, raise_for_status=True
                ) as response:
                    jwk_set = jwt.PyJWKSet.from_dict(orjson.loads(await response.read()))
            except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWTError) as exc:
                # Keep the keys we had; refuse the token we cannot check.
                log.error("could not load JWKS from %s: %s", self._url, exc)
                self._fetched_at = time.monotonic()
                return
            self._keys = {k.key_id or "": k for k in jwk_set.keys}
            self._fetched_at = time.monotonic()


class Authenticator:
    def __init__(self, settings: Settings, client: aiohttp.ClientSession | None = None) -> None:
        self._settings = settings
        self._algorithms = list(settings.jwt_algorithms)
        self._jwks = (
            _Jwks(settings.jwt_jwks_url, client) if settings.jwt_jwks_url and client else None
        )
        self._admins = frozenset(settings.admin_users)

    async def verify(self, token: object) -> Principal:
        if not isinstance(token, str) or not token:
            raise Unauthorized()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized() from exc
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise Unauthorized()
        key: Any
        if str(alg).startswith("HS"):
            key = self._settings.jwt_secret
        elif self._jwks is not None:
            key = await self._jwks.key(header.get("kid"))
        else:
            raise Unauthorized()
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._settings.jwt_audience,
                issuer=self._settings.jwt_issuer,
                leeway=_LEEWAY_S,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired() from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized() from exc
        return self.principal(claims)

    def principal(self, claims: dict[str, Any]) -> Principal:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized()
        is_admin = claims.get("role") == "admin" or sub in self._admins
        return Principal(sub, is_admin, claims)

    def issue(self, user_id: str, *, ttl_s: int = 3600, **claims: Any) -> str:
        """A token signed with JWT_SECRET (HS256), for `tokenwire token` and development sign-in."""
        now = int(time.time())
        payload = {"sub": user_id, "iat": now, "nbf": now, "exp": now + ttl_s, **claims}
        if self._settings.jwt_audience:
            payload.setdefault("aud", self._settings.jwt_audience)
        if self._settings.jwt_issuer:
            payload.setdefault("iss", self._settings.jwt_issuer)
        alg = next((a for a in self._algorithms if a.startswith("HS")), "HS256")
        return jwt.encode(payload, self._settings.jwt_secret, algorithm=alg)
