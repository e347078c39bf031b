"""Sending one notification to one target: a signed HTTP POST, or an Apprise notification (in a thread)."""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

import httpx

from engine import logs
from engine.notify import payload
from engine.notify.targets import WEBHOOK, Target

log = logs.logger(__name__)
# Apprise and httpx log the URLs they send to (httpx each request at INFO): keep those records out of our
# logs, since target URLs carry tokens.
logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)
logging.getLogger("httpx").setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class Sent:
    ok: bool
    response_code: int | None = None
    error: str | None = None


async def send(
    client: httpx.AsyncClient, target: Target, data: dict[str, Any], delivery_id: int, secret: str, timeout_s: float
) -> Sent:
    """Deliver `data` to `target`; any failure is returned, never raised."""
    try:
        if target.channel == WEBHOOK:
            return await _post(client, target, data, delivery_id, secret, timeout_s)
        return await asyncio.wait_for(asyncio.to_thread(_apprise, target.url, data), timeout_s * 3)
    except Exception as exc:
        return Sent(False, None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


async def _post(
    client: httpx.AsyncClient, target: Target, data: dict[str, Any], delivery_id: int, secret: str, timeout_s: float
) -> Sent:
    raw = payload.encode(data)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Stepdeck-Webhook",
        payload.EVENT_HEADER: data["event"],
        payload.DELIVERY_HEADER: str(delivery_id),
        payload.TIMESTAMP_HEADER: timestamp,
    }
    if secret:
        headers[payload.SIGNATURE_HEADER] = payload.signature(secret, timestamp, raw)
    response = await client.post(target.url, content=raw, headers=headers, timeout=timeout_s)
    if 200 <= response.status_code < 300:
        return Sent(True, response.status_code)
    return Sent(False, response.status_code, f"HTTP {response.status_code} {response.reason_phrase}".strip())


def _apprise(url: str, data: dict[str, Any]) -> Sent:
    with warnings.catch_warnings():
        # Apprise loads its plugins (about a hundred) on first use; one imports the deprecated imghdr.
        warnings.simplefilter("ignore", DeprecationWarning)
        import apprise

        title, body = payload.text(data)
        sender = apprise.Apprise()
        if not sender.add(url):
            return Sent(False, None, "Apprise does not recognise this URL")
        delivered = sender.notify(title=title, body=body)
    return Sent(True) if delivered else Sent(False, None, "Apprise could not deliver it")
