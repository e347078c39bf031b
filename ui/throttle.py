"""Coalesce bursts of change notifications into at most one refresh per interval, per tab.

A busy engine emits many run changes a second; each tab that lists runs re-reads its visible page
at most every `interval_s` and always once more after the last change, so it ends up current.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from nicegui import app, background_tasks

from engine import logs

log = logs.logger(__name__)


class Throttle:
    """`trigger()` asks for a refresh; `refresh` runs at most once per `interval_s`, never twice at once."""

    def __init__(self, refresh: Callable[[], Awaitable[None]], interval_s: float, name: str) -> None:
        self.refresh = refresh
        self.interval_s = interval_s
        self.name = name
        self.closed = False
        self._dirty = False
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None

    def trigger(self) -> None:
        if not app.is_started:
            self.closed = True  # its app stopped: a later engine of the process must not refresh it
        if self.closed:
            return
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = background_tasks.create(self._loop(), name=self.name)

    def close(self) -> None:
        """The tab went away: refresh no more."""
        self.closed = True

    async def _loop(self) -> None:
        while self._dirty and not self.closed:
            wait_s = self._last + self.interval_s - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            if self.closed:
                return
            self._dirty = False
            self._last = time.monotonic()
            try:
                await self.refresh()
            except Exception:
                # A failed re-read leaves the tab showing older data; the next change tries again.
                log.warning("%s failed", self.name, exc_info=True)
