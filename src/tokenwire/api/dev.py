"""`POST /api/dev/token`: sign in by name, for development only.

The route is not mounted at all when ENV=production (a 404, not a 403), so a
production server can never hand out tokens to whoever asks.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field, StringConstraints

from tokenwire.api.deps import ServicesDep

__all__ = ["router"]

router = APIRouter(prefix="/api/dev", tags=["development"])


class TokenRequest(BaseModel):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
    admin: bool = False
    ttl_s: int = Field(3600, alias="ttlS", ge=60, le=86_400)


class TokenResponse(BaseModel):
    token: str
    user_id: str = Field(serialization_alias="userId")
    expires_in: int = Field(serialization_alias="expiresIn")


@router.post("/token", response_model=TokenResponse, response_model_by_alias=True)
async def dev_token(body: TokenRequest, services: ServicesDep) -> TokenResponse:
    """A token for user `name` (with `role: admin` when asked), signed with JWT_SECRET."""
    claims = {"role": "admin"} if body.admin else {}
    token = services.authenticator.issue(body.name, ttl_s=body.ttl_s, **claims)
    return TokenResponse(token=token, user_id=body.name, expires_in=body.ttl_s)
