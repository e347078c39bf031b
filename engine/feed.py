"""Changes that other processes commit to the same database, published on this process's hub.

On PostgreSQL several processes (servers, dashboards, workers, headless runs) share one database; each
publishes its own commits on its own hub (`engine/events.py`), and learns of the others' through the
database (`engine/db/pg_feed.py`: LISTEN/NOTIFY, then the event rows themselves). Their event rows reach
this hub as the same `Change`s a local commit gives, so pages, event streams and the engine (a cancel, a
selection, a run queued elsewhere) react to them alike. On SQLite there is nothing to do.
"""

from __future__ import annotations

import logging
from typing import Any

from engine.db import current
from engine.hub import Change, Hub
from engine.queries import event_json

log = logging.getLogger(f"stepdeck.{__name__}")  # engine/logs.py


async def start() -> None:
    """Follow the other processes' changes (call once the database is open); a failure is logged, and
    this process then sees them only by its polls (the runs list, the engine's heartbeat)."""
    database = current()
    try:
        await database.start_feed(lambda rows: publish_rows(database.hub, rows))
    except Exception as exc:
        log.warning("cannot follow other processes' changes: %s", exc)


def publish_rows(hub: Hub, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        hub.publish(Change.from_event(event_json(row)))
