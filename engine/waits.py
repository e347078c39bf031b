"""Waiting for an event with a time limit, without losing a cancellation.

`asyncio.wait_for(event.wait(), t)` in Python 3.11 returns normally when the event is set in the same
moment as the waiting task is cancelled: the cancellation is lost, and a loop that waits so (the
notifier, the claim loop) goes on for ever while its engine waits for it to stop. `asyncio.timeout`
keeps the cancellation (`tests/unit/test_waits.py`)."""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, timeout_s: float | None) -> bool:
    """Whether `event` was set within `timeout_s` (None: no limit). A cancellation always raises."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
