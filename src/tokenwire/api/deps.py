"""FastAPI dependencies: the running app's services, and the caller from `Authorization: Bearer`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tokenwire.auth import Principal
from tokenwire.errors import Unauthorized
from tokenwire.services import Services

__all__ = ["CurrentUser", "ServicesDep"]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]


async def _current_user(request: Request, services: ServicesDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    return await services.authenticator.verify(token.strip())


CurrentUser = Annotated[Principal, Depends(_current_user)]
