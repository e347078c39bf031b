"""Server-Sent Events of one run: replay from the events table, then live changes from the hub.

The stream is a viewer: when the client goes away or the stream fails, it unsubscribes and the run
is untouched. Persisted events carry their id (`id:` lines) so a client resumes with Last-Event-ID;
progress and log notices are ephemeral (no id).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from engine import queries
from engine.hub import hub

log = logging.getLogger(f"stepdeck.{__name__}")  # engine/logs.py

KEEPALIVE_S = 15.0
POLL_S = 0.5  # how soon a stream notices the server is shutting down


def server_stopping() -> bool:
    """True once uvicorn was asked to exit: open streams must end, or shutdown would wait on them."""
    from nicegui.server import Server

    instance = getattr(Server, "instance", None)
    return bool(instance is not None and instance.should_exit)


def format_sse(data: dict[str, Any], kind: str, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def event_stream(request: Request, run_id: int, after: int, *, follow: bool) -> AsyncIterator[str]:
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
