"""Mount Stepdeck on NiceGUI's app: database lifecycle, engine lifecycle, API, pages."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from nicegui import app
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from engine import feed, logs
from engine.db import close_database, current, open_database
from engine.engine import Engine, make_owner_id
from engine.llm.providers import Providers
from engine.maintenance import Maintenance
from engine.registry import Registry
from engine.settings import Settings
from ui import errors, security
from ui.api import router
from ui.live import LiveRuns
from ui.pages import register_pages

log = logs.logger(__name__)

SHUTDOWN_STEP_S = 30.0  # the most one shutdown handler may take before the stop goes on without it


def mount(settings: Settings, workflows: Registry, engine: Engine | None) -> None:
    """Wire everything onto NiceGUI's app; the database must already be migrated. `workflows` are the
    definitions the pages, the API and the schedules use (the engine's too). Without an engine the
    process serves the dashboard and the API only: runs it starts are executed by another process on the
    same database (`main.py worker`, or another `serve`)."""
    app.state.settings = settings  # pages and the API show which model provider LLM steps use
    app.state.workflows = workflows  # the API reads it from the state of the app serving a request
    live = app.state.live = LiveRuns(workflows)  # this app's live views of runs, made anew with every mount
    clients = Providers()  # the model clients of the Workflows page's model check (the engine has its own)
    _open_database_in_lifespan(settings.db_url)
    errors.install(app)
    security.install(settings)
    app.include_router(router)
    _api_fast_path(settings, workflows)
    maintenance = Maintenance(settings, engine.owner if engine is not None else make_owner_id(), workflows)
    if engine is not None:
        app.on_startup(engine.start)
    app.on_startup(maintenance.start)
    app.on_startup(lambda: live.start(current().hub))
    on_shutdown("the live views", live.stop)
    on_shutdown("the model clients", clients.close)
    on_shutdown("the scheduler", maintenance.stop)
    on_shutdown("the leader's lease", maintenance.stop_leading)
    if engine is not None:
        limit_s = engine.longest_stop_s() + SHUTDOWN_STEP_S
        on_shutdown("the engine", engine.stop, limit_s)
    register_pages(maintenance, live, clients, workflows)


def on_shutdown(name: str, handler: Callable[[], Any], limit_s: float = SHUTDOWN_STEP_S) -> None:
    """Run `handler` when the app stops, for at most `limit_s` (see `bounded`)."""
    app.on_shutdown(bounded(name, handler, limit_s))


def bounded(name: str, handler: Callable[[], Any], limit_s: float) -> Callable[[], Awaitable[None]]:
    """`handler` (sync or async) as a shutdown handler that takes at most `limit_s`: one that hangs is
    given up with an error logged, and the stop goes on (the database is closed, the process exits). A
    stop cut short leaves at worst a run active, which the sweep fails; a stop that never ends holds the
    port and every run of this process."""

    async def run() -> None:
        result = handler()
        if not inspect.isawaitable(result):
            return
        try:
            await asyncio.wait_for(result, limit_s)
        except TimeoutError:
            log.error("stopping %s took longer than %g s: given up, the stop goes on", name, limit_s)

    return run


def _open_database_in_lifespan(db_url: str) -> None:
    """Open the database in the app's lifespan, before NiceGUI's startup handlers run: pages, timers,
    the engine and the API all find it (an async `on_startup` handler would be too late for some, as
    NiceGUI starts those in the background). Closed after NiceGUI's shutdown."""
    original = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        await open_database(db_url)
        try:
            await feed.start()  # other processes' changes (PostgreSQL) reach this process's hub
            async with original(a) as state:
                yield state
        finally:
            await close_database()

    app.router.lifespan_context = lifespan


API_GZIP_MIN_BYTES = 8 * 1024


def api_app(settings: Settings, sessions: security.SessionCache, workflows: Registry) -> FastAPI:
    """The JSON API on its own, behind the same gate, without the dashboard's middleware; `sessions`
    is the dashboard's (a sign-out through one gate holds in the other)."""
    api = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    api.state.settings = settings
    api.state.workflows = workflows
    errors.install(api)
    api.include_router(router)
    # Only answers of API_GZIP_MIN_BYTES or more, at level 1 (nginx's default) instead of Starlette's 9: a
    # small run's JSON (6 kB) crosses a network in well under a millisecond as it is, and compressing it
    # cost a tenth of a POST's CPU; a long run's, or a page of runs, is worth it.
    api.add_middleware(GZipMiddleware, minimum_size=API_GZIP_MIN_BYTES, compresslevel=1)
    api.add_middleware(security.Gate, settings=settings, sessions=sessions)
    return api


class ApiFastPath:
    """API requests that carry no session cookie (a token, or this machine while it has no accounts)
    go straight to the API: NiceGUI's session and per-browser storage middleware would otherwise cost
    most of a request's CPU and make a new (empty) user storage for every such request. Requests from
    a signed-in browser (a session cookie) take the dashboard's way, where their session is read."""

    def __init__(self, dashboard: ASGIApp, api: ASGIApp) -> None:
        self.dashboard, self.api = dashboard, api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/") and not _has_session_cookie(scope):
            await self.api(scope, receive, send)
        else:
            await self.dashboard(scope, receive, send)


def _has_session_cookie(scope: Scope) -> bool:
    return any(name == b"cookie" and b"session=" in value for name, value in scope["headers"])


def _api_fast_path(settings: Settings, workflows: Registry) -> None:
    """Put `ApiFastPath` outside every middleware, NiceGUI's session middleware included (which ui.run
    adds last, so the outermost place is only known when Starlette builds the stack)."""
    api = api_app(settings, app.state.sessions, workflows)
    build = app.build_middleware_stack

    def build_with_fast_path() -> ASGIApp:
        return ApiFastPath(build(), api)

    app.build_middleware_stack = build_with_fast_path  # type: ignore[method-assign]
