"""Mount Stepdeck on NiceGUI's app: database lifecycle, engine lifecycle, API, pages."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from nicegui import app

from engine.db import close_database, open_database
from engine.executor import Engine, make_owner_id
from engine.scheduler import Maintenance
from engine.settings import Settings
from ui import errors, security
from ui.api import router
from ui.live import live
from ui.pages import register_pages


def mount(settings: Settings, engine: Engine | None) -> None:
    """Wire everything onto NiceGUI's app; the database must already be migrated. Without an engine
    the process serves the dashboard and the API only: runs it starts are executed by another process
    on the same database (`main.py worker`, or another `serve`)."""
    app.state.settings = settings  # pages and the API show which model provider LLM steps use
    _open_database_in_lifespan(settings.db_url)
    errors.install(app)
    security.install(settings)
    app.include_router(router)
    maintenance = Maintenance(settings, engine.owner if engine is not None else make_owner_id())
    if engine is not None:
        app.on_startup(engine.start)
    app.on_startup(maintenance.start)
    app.on_startup(live.start)
    app.on_shutdown(live.stop)
    app.on_shutdown(maintenance.stop)
    if engine is not None:
        # NiceGUI passes the app to a handler with one parameter: engine.stop's `why` must keep its default.
        app.on_shutdown(lambda: engine.stop())
    register_pages(maintenance)


def _open_database_in_lifespan(db_url: str) -> None:
    """Open the database in the app's lifespan, before NiceGUI's startup handlers run: pages, timers,
    the engine and the API all find it (an async `on_startup` handler would be too late for some, as
    NiceGUI starts those in the background). Closed after NiceGUI's shutdown."""
    original = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        await open_database(db_url)
        try:
            async with original(a) as state:
                yield state
        finally:
            await close_database()

    app.router.lifespan_context = lifespan
