"""`GET /metrics` for Prometheus, and `GET /api/admin/stats` for dashboards and scripts."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from tokenwire.api.deps import CurrentUser, ServicesDep
from tokenwire.errors import Forbidden, Unauthorized

__all__ = ["router"]

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus text format. With METRICS_TOKEN set, `Authorization: Bearer <METRICS_TOKEN>` is required."""
    expected = services.settings.metrics_token
    if expected:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Unauthorized("A valid METRICS_TOKEN is required.")
    return Response(services.chat.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/admin/stats")
async def admin_stats(user: CurrentUser, services: ServicesDep) -> dict[str, object]:
    """The latest one-second sample with totals, as pushed to /admin (administrators only)."""
    if not user.is_admin:
        raise Forbidden("This is for administrators.")
    metrics = services.chat.metrics
    history = metrics.history()
    return metrics.snapshot(history[-1] if history else metrics.sample())
