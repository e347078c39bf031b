"""How many steps of this engine may execute at once: a counter of free slots.

Steps waiting for a slot are served in order. A slot can also be taken without waiting, from any
thread (`try_take`): a step that completes in its worker thread starts its successors in the same
commit, each with a slot of its own, or leaves them to the driver when none is free.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque


class StepSlots:
    def __init__(self, size: int) -> None:
        self._free = size
        self._lock = threading.Lock()
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        return self._free

    def try_take(self) -> bool:
        """Take a slot if one is free and nobody waits for one (safe from any thread)."""
        with self._lock:
            if self._free > 0 and not any(not w.done() for w in self._waiters):
                self._free -= 1
                return True
            return False

    async def take(self) -> None:
        """Wait for a slot (on the event loop); a cancelled waiter takes none."""
        if self.try_take():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # it was handed a slot just as it was cancelled: pass it on
            raise

    def release(self) -> None:
        """Give a slot back, to the first waiter if there is one (on the event loop)."""
        with self._lock:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
            self._free += 1

    async def __aenter__(self) -> None:
        await self.take()

    async def __aexit__(self, *exc: object) -> None:
        self.release()
