"""Server-Sent Events of one run: replay from the events table, then live changes from the hub.

The stream is a viewer: when the client goes away or the stream fails, it unsubscribes and the run
is untouched. Persisted events carry their id (`id:` lines) so a client resumes with Last-Event-ID;
progress and log notices are ephemeral (no id).

Resuming loses nothing and repeats nothing. On SQLite event ids are in commit order: the stream sends
them in id order. On PostgreSQL they are not (a transaction can commit after another that took a later
id): there the hub only says when to look, and the events are read from the table in commit order
(`queries.events_committed_after`), each sent once no transaction still in flight can come before it;
a resume starts just after the event the client names, in that order.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from starlette.requests import Request

from engine import logs, queries
from engine.hub import ChangeJson, Hub

log = logs.logger(__name__)

KEEPALIVE_S = 15.0
POLL_S = 0.5  # how soon a stream notices the server is shutting down
HELD_S = 0.02  # how soon a stream looks again at events held back behind a transaction in flight
RECHECK_S = 2.0  # a look at the table even when the hub said nothing (a change missed by the hub)
SETTLE_S = 2.0  # how long a replay without `follow` waits for held-back events


def server_stopping() -> bool:
    """True once uvicorn was asked to exit: open streams must end, or shutdown would wait on them."""
    from nicegui.server import Server

    instance = getattr(Server, "instance", None)
    return bool(instance is not None and instance.should_exit)


def format_sse(data: queries.EventJson | ChangeJson, kind: str, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def event_stream(request: Request, hub: Hub, run_id: int, after: int, *, follow: bool) -> AsyncIterator[str]:
    """The run's events after `after`, then (`follow`) its changes as `hub` (the database's) hears them."""
    stream = _in_id_order if queries.ids_in_commit_order() else _in_commit_order
    async for chunk in stream(request, hub, run_id, after, follow=follow):
        yield chunk


async def _in_id_order(request: Request, hub: Hub, run_id: int, after: int, *, follow: bool) -> AsyncIterator[str]:
    # Subscribe before replaying so nothing committed in between is missed; ids dedupe the overlap.
    sub = hub.subscribe(run_id) if follow else None
    last = after
    try:
        for event in await queries.events_after(run_id, last, limit=100_000):
            yield format_sse(event, event["kind"], event["id"])
            last = event["id"]
        if sub is None:
            return
        yield ": live\n\n"
        quiet_s = 0.0
        while not server_stopping() and not await request.is_disconnected():
            change = await sub.get(timeout_s=POLL_S)
            if change is None:
                if sub.closed:  # we fell behind: catch up from the table, then listen again
                    sub = hub.subscribe(run_id)
                    for event in await queries.events_after(run_id, last, limit=100_000):
                        yield format_sse(event, event["kind"], event["id"])
                        last = event["id"]
                quiet_s += POLL_S
                if quiet_s >= KEEPALIVE_S:
                    quiet_s = 0.0
                    yield ": keepalive\n\n"
                continue
            quiet_s = 0.0
            if change.event_id is not None:
                if change.event_id <= last:
                    continue
                last = change.event_id
            yield format_sse(change.to_json(), change.kind, change.event_id)
    finally:
        if sub is not None:
            sub.close()


async def _in_commit_order(request: Request, hub: Hub, run_id: int, after: int, *, follow: bool) -> AsyncIterator[str]:
    # Subscribed before the first read: a change committed in between wakes the loop, which reads again.
    sub = hub.subscribe(run_id) if follow else None
    cursor = await queries.event_cursor(run_id, after)
    try:
        events, held = await queries.events_committed_after(run_id, cursor)
        deadline = time.monotonic() + SETTLE_S
        while True:
            for position, event in events:
                yield format_sse(event, event["kind"], event["id"])
                cursor = position
            if sub is not None or not held or time.monotonic() > deadline:
                break
            await asyncio.sleep(HELD_S)
            events, held = await queries.events_committed_after(run_id, cursor)
        if sub is None:
            return
        yield ": live\n\n"
        said_at = read_at = time.monotonic()
        held_s = HELD_S  # grows while a long transaction holds events back (another one may hold it for long)
        while not server_stopping() and not await request.is_disconnected():
            change = await sub.get(timeout_s=held_s if held else POLL_S)
            changes = [] if change is None else [change, *sub.drain()]
            persisted = False
            for c in changes:
                if c.event_id is None:
                    said_at = time.monotonic()
                    yield format_sse(c.to_json(), c.kind)
                else:
                    persisted = True
            if change is None and sub.closed:  # we fell behind the hub: listen again, and read
                sub = hub.subscribe(run_id)
                persisted = True
            now = time.monotonic()
            if persisted or held or now - read_at >= RECHECK_S:
                read_at = now
                events, held = await queries.events_committed_after(run_id, cursor)
                held_s = min(held_s * 2, POLL_S) if held and not events else HELD_S
                for position, event in events:
                    said_at = time.monotonic()
                    yield format_sse(event, event["kind"], event["id"])
                    cursor = position
            if time.monotonic() - said_at >= KEEPALIVE_S:
                said_at = time.monotonic()
                yield ": keepalive\n\n"
    finally:
        if sub is not None:
            sub.close()
