"""Per-endpoint request limits: at most N requests in flight, at most M started in any 60 seconds.

So that 200 queued runs do not fire 600 parallel requests at a local server. A request holds a slot
for as long as its HTTP exchange lasts (a retry's backoff does not hold one).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

WINDOW_S = 60.0


class RequestLimits:
    """Concurrency and requests-per-minute limits of one endpoint; 0 means no limit."""

    def __init__(
        self, max_concurrent: int = 0, per_minute: int = 0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_concurrent, self.per_minute, self.clock = max_concurrent, per_minute, clock
        self._in_flight = 0
        self._started: deque[float] = deque()
        self._changed: asyncio.Condition | None = None

    def wait_s(self) -> float:
        """Seconds until the per-minute limit lets another request start (0: now)."""
        if not self.per_minute:
            return 0.0
        now = self.clock()
        while self._started and self._started[0] <= now - WINDOW_S:
            self._started.popleft()
        if len(self._started) < self.per_minute:
            return 0.0
        return self._started[0] + WINDOW_S - now

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextlib.asynccontextmanager
    async def slot(self, on_wait: Callable[[str], None] | None = None) -> AsyncIterator[None]:
        """Hold one request slot; waits (telling `on_wait` why, once) while either limit is reached."""
        if not self.max_concurrent and not self.per_minute:
            yield
            return
        if self._changed is None:
            self._changed = asyncio.Condition()
        told = False
        async with self._changed:
            while True:
                busy = self.max_concurrent and self._in_flight >= self.max_concurrent
                delay = 0.0 if busy else self.wait_s()
                if not busy and delay <= 0:
                    break
                if on_wait is not None and not told:
                    told = True
                    on_wait(
                        f"{self._in_flight} requests in flight (the limit is {self.max_concurrent})"
                        if busy
                        else f"{self.per_minute} requests started in the last minute (the limit)"
                    )
                with contextlib.suppress(TimeoutError):  # not wait_for: it can lose a cancellation (engine/waits.py)
                    async with asyncio.timeout(None if busy else delay):
                        await self._changed.wait()
            self._in_flight += 1
            if self.per_minute:
                self._started.append(self.clock())
        try:
            yield
        finally:
            async with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()
