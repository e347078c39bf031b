"""Mount Stepdeck on NiceGUI's app: database lifecycle, engine lifecycle, API, pages."""

from __future__ import annotations

from nicegui import app
from tortoise.contrib.fastapi import register_tortoise

from engine.executor import Engine
from engine.scheduler import Maintenance
from engine.settings import Settings
from models.db import tortoise_config
from ui import errors, security
from ui.api import router
from ui.live import live
from ui.pages import register_pages


def mount(settings: Settings, engine: Engine) -> None:
    """Wire everything onto NiceGUI's app; the database must already be migrated."""
    # Tortoise initialises in the lifespan, before NiceGUI's startup: pages, timers and the engine
    # all find the connection (an `await Tortoise.init()` in on_startup would be too late for some).
    app.state.settings = settings  # pages and the API show which model provider LLM steps use
    register_tortoise(app, config=tortoise_config(settings.db_url))
    errors.install(app)
    security.install(settings)
    app.include_router(router)
    maintenance = Maintenance(settings, engine.owner)
    app.on_startup(engine.start)
    app.on_startup(maintenance.start)
    app.on_startup(live.start)
    app.on_shutdown(live.stop)
    app.on_shutdown(maintenance.stop)
    # NiceGUI passes the app to a handler with one parameter: engine.stop's `why` must keep its default.
    app.on_shutdown(lambda: engine.stop())
    register_pages(maintenance)
