"""`GET /api/notifications`: the deliveries of notifications to their targets (targets shown by scheme and
host only: their URLs carry tokens). Included in the API's authenticated routes by ui/api.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from engine.notify.notifier import DeliveryJson, list_deliveries
from models.status import DeliveryStatus
from ui.api_models import ErrorBody, documented, list_of

router = APIRouter()
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Sign-in is on and the request has no valid token or session"},
    422: {"model": ErrorBody, "description": "Invalid request"},
}


DeliveryOut = documented(DeliveryJson, "DeliveryOut")


@router.get(
    "/notifications",
    response_model=list_of(DeliveryOut),
    responses=RESPONSES,
    summary="Deliveries of notifications (webhooks, Apprise), newest first",
)
async def notifications(
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    status: DeliveryStatus | None = None,
) -> list[DeliveryJson]:
    return await list_deliveries(limit, status)
