"""Shared fixtures: a fresh, migrated SQLite file per test; an engine on it; workflow helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from engine.definitions import WorkflowDef, parse_definition
from engine.executor import Engine
from engine.registry import workflows
from engine.settings import Settings
from engine.store import fetch
from models.db import close_db, migrate, open_db
from tests import stepfns
from ui import errors
from ui.api import router


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[str]:
    """URL of a fresh SQLite file with the schema applied through migrations, connected."""
    url = f"sqlite://{tmp_path / 'stepdeck.db'}"
    await migrate(url)
    await open_db(url)
    try:
        yield url
    finally:
        await close_db()


@pytest.fixture
def settings(db: str, tmp_path: Path) -> Settings:
    return Settings(db_url=db, workflows_dir=tmp_path, heartbeat_interval_s=0.2, stale_after_s=2.0)


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    stepfns.reset()
    eng = Engine(settings)
    await eng.start()
    try:
        yield eng
    finally:
        await eng.stop()


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """The JSON API (our router and error handlers) over ASGI, on the test database and engine.

    Responses are read whole: for live SSE streams use a served process (tests/integration/test_processes.py).
    """
    app = FastAPI()
    errors.install(app)
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        yield client


@pytest.fixture
def define() -> Callable[..., WorkflowDef]:
    """Register a workflow from a dict in the documented YAML shape (calls resolve from tests.stepfns)."""

    def _define(name: str, steps: list[dict[str, Any]], **extra: Any) -> WorkflowDef:
        defn = parse_definition({"name": name, "steps": steps, **extra}, f"<test {name}>")
        workflows.add(defn)
        return defn

    return _define


async def wait_for(check: Callable[[], Awaitable[Any]], timeout_s: float = 10.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail the test with `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


async def run_status(run_id: int) -> str:
    return str((await fetch("SELECT status FROM runs WHERE id = ?", (run_id,)))[0]["status"])


async def wait_run(run_id: int, *statuses: str, timeout_s: float = 10.0) -> str:
    """Wait until the run is in one of `statuses`; returns it."""

    async def check() -> str | None:
        status = await run_status(run_id)
        return status if status in statuses else None

    result: str = await wait_for(check, timeout_s, f"run {run_id} to be {'/'.join(statuses)}")
    return result
