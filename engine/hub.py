"""In-process event hub: every change the engine commits is published here for live viewers.

Publishing never blocks and never fails: a listener that raises is logged and dropped from the
call, a subscriber whose queue is full is marked `overflowed` and detached (it must catch up from
the events table, which holds every persisted change). The run's execution never depends on who
listens.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from engine import logs

if TYPE_CHECKING:
    from engine.context import StepContext
    from engine.queries import EventJson
    from engine.transitions import NewRunClaim

log = logs.logger(__name__)


class ChangeKind(StrEnum):
    RUN = "run"  # a run's status changed (persisted event)
    STEP = "step"  # a step's status changed (persisted event)
    ACTION = "action"  # a person or a policy acted (start, rerun, select, cancel; persisted event)
    STALE = "stale"  # a completed step was flagged stale (persisted event)
    LATE_RESULT = "late_result"  # an attempt's result arrived after it had ended (persisted event)
    PROGRESS = "progress"  # a running step reported progress (ephemeral)
    LOG = "log"  # a running step logged a line (ephemeral; the line is kept with the attempt)
    TOKENS = "tokens"  # a model streamed text (ephemeral; the text is kept with the attempt)


# Notices that are not rows of `events`: other processes learn of them only as they are sent.
EPHEMERAL = frozenset({ChangeKind.PROGRESS, ChangeKind.LOG, ChangeKind.TOKENS})


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """Streamed text of one alternative: `text` starts at `offset`; `reset` drops what came after it."""

    alternative: int
    offset: int
    text: str
    reset: bool = False


class ChangeJson(TypedDict):
    """A change in the shape of the API's events (`Change.to_json`), with the fields its kind has."""

    id: int | None
    run_id: int
    step: str | None
    kind: ChangeKind
    attempt: int | None
    from_status: str | None
    to_status: str | None
    actor: str | None
    message: str | None
    at: str | None
    fraction: NotRequired[float | None]  # progress
    line: NotRequired[str | None]  # log
    alternative: NotRequired[int]  # tokens: a TokenDelta's fields
    offset: NotRequired[int]
    text: NotRequired[str]
    reset: NotRequired[bool]


@dataclass(frozen=True, slots=True)
class Change:
    """One change: a persisted event (`event_id` set) or an ephemeral notice (progress, log, tokens)."""

    run_id: int
    kind: ChangeKind
    step_key: str | None = None
    event_id: int | None = None
    attempt: int | None = None
    from_status: str | None = None  # a RunStatus or StepStatus value
    to_status: str | None = None
    actor: str | None = None
    message: str | None = None  # also a progress message
    at: str | None = None  # ISO time of a persisted event, or of when a log line was written
    fraction: float | None = None  # progress
    line: str | None = None  # log
    tokens: TokenDelta | None = None
    truncated: bool | None = None  # a step change: the attempt's output was cut off at the token limit
    remote: bool = False  # an ephemeral notice that another process sent (never sent on again)

    def to_json(self) -> ChangeJson:
        """The change in the shape of the API's events (SSE `data:`), with the fields its kind has."""
        data: ChangeJson = {
            "id": self.event_id,
            "run_id": self.run_id,
            "step": self.step_key,
            "kind": self.kind,
            "attempt": self.attempt,
            "from_status": self.from_status,
            "to_status": self.to_status,
            "actor": self.actor,
            "message": self.message,
            "at": self.at,
        }
        if self.kind == ChangeKind.PROGRESS:
            data["fraction"] = self.fraction
        elif self.kind == ChangeKind.LOG:
            data["line"] = self.line
        elif self.kind == ChangeKind.TOKENS and self.tokens is not None:
            data["alternative"] = self.tokens.alternative
            data["offset"] = self.tokens.offset
            data["text"] = self.tokens.text
            data["reset"] = self.tokens.reset
        return data

    @property
    def ephemeral(self) -> bool:
        return self.kind in EPHEMERAL

    @classmethod
    def from_ephemeral_json(cls, data: dict[str, Any]) -> Change:
        """An ephemeral notice in its `to_json` shape, as another process sent it (`engine/feed.py`)."""
        kind = ChangeKind(data["kind"])
        if kind not in EPHEMERAL:
            raise ValueError(f"not an ephemeral change: {kind}")
        tokens = None
        if kind == ChangeKind.TOKENS:
            tokens = TokenDelta(int(data["alternative"]), int(data["offset"]), str(data["text"]), bool(data["reset"]))
        return cls(
            run_id=int(data["run_id"]),
            kind=kind,
            step_key=data["step"],
            attempt=data["attempt"],
            message=data["message"],
            at=data["at"],
            fraction=data.get("fraction"),
            line=data.get("line"),
            tokens=tokens,
            remote=True,
        )

    @classmethod
    def from_event(cls, event: EventJson) -> Change:
        """A persisted event as read back from the table (`queries.event_json`)."""
        return cls(
            run_id=event["run_id"],
            kind=event["kind"],
            step_key=event["step"],
            event_id=event["id"],
            attempt=event["attempt"],
            from_status=event["from_status"],
            to_status=event["to_status"],
            actor=event["actor"],
            message=event["message"],
            at=event["at"],
        )


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
            async with asyncio.timeout(timeout_s):  # not wait_for: it can lose a cancellation (engine/waits.py)
                return await self._queue.get()
        except TimeoutError:
            return None

    def drain(self) -> list[Change]:
        """The changes queued now, without waiting (a closing None is left in place)."""
        out: list[Change] = []
        while not self._queue.empty():
            change = self._queue.get_nowait()
            if change is None:
                self._queue.put_nowait(None)
                break
            out.append(change)
        return out

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


class Signal:
    """News without a payload for listeners of this process (sync callbacks, called on the event loop);
    one that raises is logged and the others are still called."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._listeners: list[Callable[[], None]] = []

    def add(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` on every `emit`; returns a function that removes it (safe to call twice)."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def emit(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("a listener of %s failed", self.name)


class Hub:
    """Fan-out of the changes of one open database (`Database.hub`) to listeners (sync callbacks) and
    subscriptions (queues) of this process. A new database opened is a new hub: nothing of the one before
    (listeners, subscriptions, streams) carries over."""

    def __init__(self) -> None:
        # Steps executing in this process, so that a viewer who arrives mid-stream sees the text so far.
        self.executing: dict[tuple[int, str], StepContext] = {}
        # Notification deliveries were made or tried by this process (the Monitoring page's table).
        self.deliveries = Signal("deliveries")
        # The engine of this process that claims a run as it is created when it has room (`Engine.claim_new`).
        self.claim_new: Callable[[], NewRunClaim | None] | None = None
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
