"""In-process event hub: every change the engine commits is published here for live viewers.

Publishing never blocks and never fails: a listener that raises is logged and dropped from the
call, a subscriber whose queue is full is marked `overflowed` and detached (it must catch up from
the events table, which holds every persisted change). The run's execution never depends on who
listens.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Change:
    """One change: a persisted event (`event_id` set) or an ephemeral notice (progress, log)."""

    run_id: int
    kind: str  # run | step | action | stale | late_result | progress | log | created
    step_key: str | None = None
    event_id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[Change], None]


class Subscription:
    """A queue of changes for one consumer (an SSE stream, a headless run); iterate to read."""

    def __init__(self, hub: Hub, run_id: int | None, maxsize: int) -> None:
        self.run_id = run_id
        self.overflowed = False
        self._hub = hub
        self._queue: asyncio.Queue[Change | None] = asyncio.Queue(maxsize)

    def _offer(self, change: Change) -> None:
        if self.run_id is not None and change.run_id != self.run_id:
            return
        try:
            self._queue.put_nowait(change)
        except asyncio.QueueFull:
            self.overflowed = True
            self.close()

    async def get(self, timeout_s: float | None = None) -> Change | None:
        """The next change, or None when closed or when `timeout_s` passed without one."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout_s)
        except TimeoutError:
            return None

    def close(self) -> None:
        self._hub._subscriptions.discard(self)
        # Wake a reader blocked in get(); a full queue already has something to read.
        if not self._queue.full():
            self._queue.put_nowait(None)

    @property
    def closed(self) -> bool:
        return self not in self._hub._subscriptions

    async def __aiter__(self) -> AsyncIterator[Change]:
        while not self.closed or not self._queue.empty():
            change = await self._queue.get()
            if change is None:
                return
            yield change


class Hub:
    """Fan-out of changes to listeners (sync callbacks) and subscriptions (queues) of this process."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._subscriptions: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the loop so that threads (sync step functions) can publish into it."""
        self._loop = loop
        self._thread_id = threading.get_ident()

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` for every change; returns a function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def subscribe(self, run_id: int | None = None, maxsize: int = 10_000) -> Subscription:
        sub = Subscription(self, run_id, maxsize)
        self._subscriptions.add(sub)
        return sub

    def publish(self, change: Change) -> None:
        """Deliver a change to everyone listening; safe to call from any thread."""
        if self._loop is not None and threading.get_ident() != self._thread_id:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._deliver, change)
            return
        self._deliver(change)

    def _deliver(self, change: Change) -> None:
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("hub listener %r failed on %s; the run is not affected", listener, change.kind)
        for sub in list(self._subscriptions):
            sub._offer(change)


hub = Hub()
