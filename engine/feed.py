"""Changes that other processes commit to the same database, published on this process's hub.

On PostgreSQL several processes (servers, dashboards, workers, headless runs) share one database; each
publishes its own commits on its own hub (`engine/events.py`), and learns of the others' through the
database (`engine/db/pg_feed.py`: LISTEN/NOTIFY, then the event rows themselves). Their event rows reach
this hub as the same `Change`s a local commit gives, so pages, event streams and the engine (a cancel, a
selection, a run queued elsewhere) react to them alike. Progress, log lines and streamed text are sent in
the notifications themselves, so a step running in a worker shows live on every dashboard. On SQLite
there is nothing to do.
"""

from __future__ import annotations

import logging
from typing import Any

from engine.db import current
from engine.hub import Change, hub
from engine.queries import event_json

log = logging.getLogger(f"stepdeck.{__name__}")  # engine/logs.py


async def start() -> None:
    """Follow the other processes' changes (call once the database is open), and send them this one's
    ephemeral notices (progress, log lines, streamed text: no rows, so they travel in the notifications).
    A failure is logged, and this process then sees the others' changes only by its polls (the runs
    list, the engine's heartbeat) and their notices when it next reads a step."""
    db = current()
    try:
        await db.start_feed(publish_rows, publish_live)
    except Exception as exc:
        log.warning("cannot follow other processes' changes: %s", exc)
    if db.kind == "postgresql":

        def send(change: Change) -> None:
            if change.ephemeral and not change.remote and not db.send_live(change.to_json()):
                remove()  # that database is closed

        remove = hub.add_listener(send)


def publish_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        hub.publish(Change.from_event(event_json(row)))


def publish_live(notices: list[dict[str, Any]]) -> None:
    for notice in notices:
        try:
            change = Change.from_ephemeral_json(notice)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("a live notice from another process was not understood (%s): %.200r", exc, notice)
            continue
        hub.publish(change)
