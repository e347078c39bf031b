"""Shared fixtures: a fresh, migrated SQLite file per test (a copy of one migrated once); an engine on it;
workflow helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest


def keep_bytecode() -> None:
    """The suite starts hundreds of processes (servers, workers, the command line). Where the environment
    says not to write bytecode (PYTHONDONTWRITEBYTECODE), each would compile every module it imports
    again, about a second of CPU a start: they keep it in one cache outside the source tree instead
    (a cache the environment names is kept). The xdist workers and every process started later inherit it.

    Called before this module imports NiceGUI, FastAPI and our own modules (below, and the plugins of
    `pytest_plugins`): the first test process, which starts the others, uses the cache for them too."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    default = Path(tempfile.gettempdir()) / f"stepdeck-pycache-{os.getuid()}"
    prefix = os.environ.setdefault("PYTHONPYCACHEPREFIX", str(default))
    sys.dont_write_bytecode, sys.pycache_prefix = False, prefix


keep_bytecode()

import httpx
from fastapi import FastAPI

from engine import audit, leases, operations, queries
from engine.db import close_database, open_database
from engine.definitions import WorkflowDef, parse_definition
from engine.engine import Engine
from engine.registry import Registry
from engine.settings import Settings
from engine.store import fetch
from tests import dbtemplate, pgdb, stepfns
from tests.dbtemplate import migrated_copy
from ui import errors
from ui.api import router

# Tests that wait on the clock whatever the machine does (the next minute boundary): started first, so that the
# other worker runs the rest of the suite meanwhile.
WAIT_ON_THE_CLOCK = ("tests/integration/test_schedules_served.py",)


# NiceGUI's `user` fixture: a plugin of this file rather than `-p` in pyproject.toml's addopts, so that it is
# imported after `keep_bytecode()`.
pytest_plugins = ["tests.hangs", "nicegui.testing.user_plugin"]

# Its tests start several processes, each with its pools of connections: one at a time, so that the suite
# stays under PostgreSQL's max_connections (100 by default) on any number of workers.
CLUSTER_TIER = "tests/postgres/"
# The browser tests share a served process and their big runs (session-scoped fixtures of tests/e2e/conftest.py):
# on one worker, which sets them up once, rather than on every worker that gets one of its modules.
BROWSER_TIER = "tests/e2e/"
MODULE_FIXTURE = re.compile(r"@pytest\.fixture\([^)]*scope=\"module\"")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject.toml): four test processes, three on PostgreSQL, where each process's test
    databases hold connections of their own beside the served processes (`pgdb.ServedProcesses`), all
    under the server's `max_connections`."""
    return 3 if pgdb.ENABLED else 4


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """The suite runs on four processes (pytest-xdist, `-n auto` in pyproject.toml), test by test, except that
    the tests of a module with module-scoped fixtures (a served process, a browser; their own or from a
    conftest) stay on one worker, which sets them up once, and so do the tests of `CLUSTER_TIER` and of
    `BROWSER_TIER`. (A session-scoped fixture is set up once per worker anyway. xdist's own `loadgroup` does
    not work with pytest 9: it renames node ids through an attribute pytest no longer reads.)"""
    if config.getvalue("dist") != "load":  # another mode asked for on the command line
        return None
    from xdist.scheduler import LoadScopeScheduling

    root = config.rootpath
    tests = root / "tests"
    shared: dict[str, bool] = {}

    def declares_module_fixtures(path: Path) -> bool:
        return path.is_file() and MODULE_FIXTURE.search(path.read_text(encoding="utf-8")) is not None

    def has_module_fixtures(module: str) -> bool:
        if module not in shared:
            path = root / module
            conftests = [d / "conftest.py" for d in path.parents if d == tests or tests in d.parents]
            shared[module] = any(declares_module_fixtures(f) for f in [path, *conftests])
        return shared[module]

    class Scheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            for tier in (CLUSTER_TIER, BROWSER_TIER):
                if module.startswith(tier):
                    return tier
            return module if has_module_fixtures(module) else nodeid

    config.option.loadscopereorder = False  # keep the collection's order: what waits on the clock first
    return Scheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    if config.getvalue("dist") != "no" and not hasattr(config, "workerinput"):
        from tests.integration.served import ZYGOTE

        ZYGOTE.start_for_workers()  # xdist's controller: one zygote for the workers it starts next
        dbtemplate.share_with_workers()  # and one migrated template
    config.addinivalue_line(
        "markers",
        "sqlite_only: about SQLite itself (its files, its query plans, liveness by process and heartbeat);"
        " left out on PostgreSQL",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # What waits on the clock first, then the long chunks of `CLUSTER_TIER` and `BROWSER_TIER`: none is left for
    # the end.
    items.sort(
        key=lambda item: (
            not item.nodeid.startswith(WAIT_ON_THE_CLOCK),
            not item.nodeid.startswith(CLUSTER_TIER),
            not item.nodeid.startswith(BROWSER_TIER),
        )
    )
    # Left out (deselected, not skipped) when the suite runs on PostgreSQL.
    if pgdb.ENABLED:
        left_out = [item for item in items if item.get_closest_marker("sqlite_only")]
        if left_out:
            config.hook.pytest_deselected(items=left_out)
            items[:] = [item for item in items if not item.get_closest_marker("sqlite_only")]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if pgdb.ENABLED:
        pgdb.drop_all()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[str]:
    """URL of a fresh SQLite file (or PostgreSQL database, `STEPDECK_TEST_DB=postgres`) with the schema
    applied through migrations, connected."""
    url = await pgdb.create() if pgdb.ENABLED else f"sqlite://{migrated_copy(tmp_path / 'stepdeck.db')}"
    await open_database(url)
    try:
        yield url
    finally:
        await close_database()
        if pgdb.ENABLED:
            await pgdb.drop_url(url)


@pytest.fixture
def settings(db: str, tmp_path: Path) -> Settings:
    # No shutdown grace by default: a test that stops its engine means "now" (grace has its own tests).
    return Settings(
        db_url=db, workflows_dir=tmp_path, heartbeat_interval_s=0.2, stale_after_s=2.0, shutdown_grace_s=0.0
    )


@pytest.fixture
def registry() -> Registry:
    """This test's workflow definitions: `define` adds to it; the engine, the API and the test read it."""
    return Registry()


@contextlib.asynccontextmanager
async def engine_running(settings: Settings, workflows: Registry | None = None) -> AsyncIterator[Engine]:
    """A started engine, stopped on exit (also for part of a test, to look at runs no engine claims)."""
    eng = Engine(settings, workflows=workflows)
    await eng.start()
    try:
        yield eng
    finally:
        await eng.stop()


@pytest.fixture
async def engine(settings: Settings, registry: Registry) -> AsyncIterator[Engine]:
    stepfns.reset()
    async with engine_running(settings, registry) as eng:
        yield eng


@pytest.fixture
async def audit_clean(db: str) -> AsyncIterator[None]:
    """After the scenario (and the engine's shutdown), the audit finds no impossible state."""
    yield
    findings, _ = await audit.audit()
    assert [str(f) for f in findings] == []


@contextlib.asynccontextmanager
async def api_client(settings: Settings, workflows: Registry) -> AsyncIterator[httpx.AsyncClient]:
    """The JSON API (our router and error handlers) over ASGI, with these settings and definitions.

    Responses are read whole: for live SSE streams use a served process (tests/integration/test_processes.py).
    """
    app = FastAPI()
    app.state.settings = settings
    app.state.workflows = workflows
    errors.install(app)
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """The JSON API on the test database, with the engine's settings and definitions."""
    async with api_client(engine.settings, engine.workflows) as client:
        yield client


@pytest.fixture
def define(registry: Registry) -> Callable[..., WorkflowDef]:
    """Register a workflow from a dict in the documented YAML shape (calls resolve from tests.stepfns) in
    this test's registry."""

    def _define(name: str, steps: list[dict[str, Any]], **extra: Any) -> WorkflowDef:
        defn = parse_definition({"name": name, "steps": steps, **extra}, f"<test {name}>")
        registry.add(defn)
        return defn

    return _define


async def holding_lease(owner: str) -> str:
    """`owner`, as an engine holding a live lease where engines hold leases (PostgreSQL), as a started
    engine does (a claim or a step start is refused to an engine without one); returns it."""
    if leases.shared() and not await leases.renew(owner, 3600):
        await leases.register(owner, 3600)
    return owner


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


async def run_to_end(defn: WorkflowDef, ends: str, timeout_s: float = 10.0) -> int:
    """Start a run of `defn` as "tester", wait until it completes or fails, and check that it `ends` so
    ("completed" or "failed"); returns its id."""
    run_id = await operations.start_run(defn, {}, "tester")
    assert await wait_run(run_id, "completed", "failed", timeout_s=timeout_s) == ends
    return run_id


async def commits_of_events(run_id: int, after_id: int) -> int | None:
    """How many commits wrote the run's event rows after `after_id`, where the database tells: SQLite, by
    the clock that the rows of one commit share. PostgreSQL keeps nothing a test can read that tells (its
    clock is each statement's, and each batch of a group commit runs in a subtransaction with an `xmin` of
    its own): None there."""
    if pgdb.ENABLED:
        return None
    rows = await fetch("SELECT DISTINCT created_at FROM events WHERE run_id = ? AND id > ?", (run_id, after_id))
    return len(rows)


def as_json(document: Mapping[str, Any]) -> dict[str, Any]:
    """A typed read as the tests take it: a JSON document, read as a client of the API reads it."""
    return dict(document)


async def step_of(run_id: int, key: str) -> dict[str, Any]:
    run = (await queries.run_detail(run_id)).to_json()
    return as_json(next(s for s in run["steps"] if s["key"] == key))


async def attempts_of(run_id: int, key: str) -> list[dict[str, Any]]:
    return [as_json(a) for a in await queries.list_attempts(run_id) if a["step"] == key]


async def events_of(run_id: int, kind: str | None = None) -> list[dict[str, Any]]:
    return [as_json(e) for e in await queries.events_after(run_id) if kind is None or e["kind"] == kind]


@pytest.fixture(autouse=True)
def _fresh_step_functions() -> None:
    """The step functions of `tests/stepfns.py` count their calls per run id and step in this process; a test
    database's run ids start at 1 again, so a count left by an earlier test would change what a step does."""
    stepfns.reset()
