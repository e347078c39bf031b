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

from typing import Any

from engine import logs
from engine.db import current
from engine.hub import Change, Hub
from engine.queries import event_json

log = logs.logger(__name__)


async def start() -> None:
    """Follow the other processes' changes (call once the database is open), and send them this one's
    ephemeral notices (progress, log lines, streamed text: no rows, so they travel in the notifications).
    A failure is logged, and this process then sees the others' changes only by its polls (the runs
    list, the engine's heartbeat) and their notices when it next reads a step."""
    database = current()
    try:
        await database.start_feed(
            lambda rows: publish_rows(database.hub, rows), lambda notices: publish_live(database.hub, notices)
        )
    except Exception as exc:
        log.warning("cannot follow other processes' changes: %s", exc)
    if database.kind == "postgresql":

        def send(change: Change) -> None:
            if change.ephemeral and not change.remote:
                database.send_live(change.to_json())

        database.hub.add_listener(send)  # the hub goes with the database


def publish_rows(hub: Hub, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        hub.publish(Change.from_event(event_json(row)))


def publish_live(hub: Hub, notices: list[dict[str, Any]]) -> None:
    for notice in notices:
        try:
            change = Change.from_ephemeral_json(notice)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("a live notice from another process was not understood (%s): %.200r", exc, notice)
            continue
        hub.publish(change)
