"""`GET /api/notifications`: the deliveries of notifications to their targets (targets shown by scheme and
host only: their URLs carry tokens). Included in the API's authenticated routes by ui/api.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from engine.notify.notifier import DeliveryJson, list_deliveries
from models.status import DeliveryStatus
from ui.api_models import ErrorBody

router = APIRouter()
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Sign-in is on and the request has no valid token or session"},
    422: {"model": ErrorBody, "description": "Invalid request"},
}


class DeliveryOut(BaseModel):
    id: int
    notification_id: int
    run_id: int
    event: str  # run.failed, run.waiting, run.completed, run.cancelled, step.truncated, budget.reached
    target: str  # scheme and host, e.g. https://hooks.example.com/…
    channel: str  # webhook | apprise
    status: str  # pending | delivered | failed (given up)
    attempts: int
    last_error: str | None
    response_code: int | None
    created_at: str | None
    next_at: str | None  # when a pending delivery is tried next
    delivered_at: str | None


@router.get(
    "/notifications",
    response_model=list[DeliveryOut],
    responses=RESPONSES,
    summary="Deliveries of notifications (webhooks, Apprise), newest first",
)
async def notifications(
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    status: DeliveryStatus | None = None,
) -> list[DeliveryJson]:
    return await list_deliveries(limit, status)
