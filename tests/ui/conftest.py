"""UI tests run the real app (main.py) under NiceGUI's `user` fixture, on a fresh database and a
small workflows directory per test.

The app initialises Tortoise itself (register_tortoise in its lifespan): the `db` and `engine`
fixtures of tests/conftest.py would initialise it a second time, so UI tests never use them.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nicegui import ElementFilter, app, run, ui
from nicegui.testing import User

from engine.definitions import WorkflowDef
from engine.registry import Registry
from tests import pgdb, stepfns
from tests.dbtemplate import migrated_copy

DEMO = """\
name: ui-demo
description: A workflow for the dashboard tests.
inputs:
  topic:
    type: string
    description: What the run is about.
  count:
    type: integer
    default: 3
  tone:
    type: choice
    options: [friendly, formal]
    default: friendly
  payload:
    type: json
    required: false
    description: Extra settings as JSON.
  loud:
    type: boolean
    default: false
steps:
  - key: echo
    label: Echo inputs
    call: tests.stepfns:echo_inputs
  - key: finish
    label: Finish "it" <now>
    call: tests.stepfns:noop
"""

GATED = """\
name: gated
description: One step that blocks until the test releases it.
steps:
  - key: wait
    label: Wait for the test
    call: tests.stepfns:blocking
"""

BROKEN = """\
name: broken
steps:
  - key: first
    call: tests.stepfns:noop
  - key: second
    call: tests.stepfns:noop
    needs: [nope]
"""


@pytest.fixture
def workflows_dir(tmp_path: Path) -> Path:
    path = tmp_path / "workflows"
    path.mkdir()
    (path / "ui-demo.yaml").write_text(DEMO, encoding="utf-8")
    (path / "gated.yaml").write_text(GATED, encoding="utf-8")
    (path / "broken.yaml").write_text(BROKEN, encoding="utf-8")
    return path


def add_workflows(directory: Path, definitions: dict[str, str]) -> None:
    """Put definitions (YAML texts by name, indented as in the test module) in the app's workflows directory."""
    for name, text in definitions.items():
        (directory / f"{name}.yaml").write_text(textwrap.dedent(text), encoding="utf-8")


def app_workflows() -> Registry:
    """The definitions of the app under test (`app.state.workflows`, loaded from its workflows directory)."""
    workflows: Registry = app.state.workflows
    return workflows


def loaded(name: str) -> WorkflowDef:
    """A definition the app under test loaded, to start a run of it in the test as the app would."""
    return app_workflows().get(name)


@pytest.fixture(autouse=True)
def stepdeck_env(tmp_path: Path, workflows_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings for the app under test. Autouse fixtures are set up before the others of the same
    scope, so this runs before `user` executes main.py, which reads them."""
    for name in ("STEPDECK_HOST", "STEPDECK_PORT", "STEPDECK_STALE_AFTER_S", "STEPDECK_HEARTBEAT_INTERVAL_S"):
        monkeypatch.delenv(name, raising=False)
    # Migrated already (a copy of the process's template): the app finds nothing to apply.
    url = pgdb.create_blocking() if pgdb.ENABLED else f"sqlite://{migrated_copy(tmp_path / 'ui.db')}"
    monkeypatch.setenv("STEPDECK_DB", url)
    monkeypatch.setenv("STEPDECK_WORKFLOWS", str(workflows_dir))
    monkeypatch.setenv("STEPDECK_POLL_INTERVAL_S", "0.2")
    monkeypatch.setenv("STEPDECK_SHUTDOWN_GRACE_S", "0")  # a test's app stops now, not after blocked steps
    monkeypatch.setenv("STEPDECK_ALLOWED_HOSTS", "test")  # the `user` fixture's requests go to http://test
    monkeypatch.setenv("STEPDECK_SECRET_FILE", str(tmp_path / "secret.key"))
    for name in (
        "STEPDECK_LLM_PROVIDER",
        "STEPDECK_LLM_BASE_URL",
        "STEPDECK_LLM_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)  # LLM steps on the simulated provider, whatever the machine has
    stepfns.reset()
    stepfns.GATES.clear()
    try:
        yield
    finally:
        stepfns.RELEASE.set()  # never leave a blocked step thread behind
        for gate in list(stepfns.GATES.values()):
            gate.set()
        if pgdb.ENABLED:
            pgdb.drop_blocking(url)


@pytest.fixture(autouse=True)
async def fresh_app() -> AsyncIterator[None]:
    """Each test's app gets only its own database, and a failed test cannot break the next ones.

    `register_tortoise` wraps NiceGUI's lifespan, and NiceGUI's test reset does not undo that: without
    the restore below, every later test would nest the earlier tests' Tortoise set-ups and run on the
    first test's database file. And when the `user` fixture fails a test at teardown (an ERROR log),
    NiceGUI's lifespan skips its shutdown: the app stays "started" and every later test errors with
    "NiceGUI has already been started". Shutting it down here keeps one failure one failure.
    """
    original = app.router.lifespan_context
    yield
    app.router.lifespan_context = original
    if app.is_started:
        await app.stop()
        run.tear_down()


# How often `User.should_see` / `should_not_see` try (every 0.1 s): up to 30 s, for a loaded machine. They
# return at the first try that holds, so a generous bound costs nothing where the page is quick.
RETRIES = 300


async def eventually(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def table_rows(user: User, marker: str) -> list[dict[str, Any]]:
    """The rows a visible table currently sends to the browser ([] while there is no such table)."""
    assert user.client is not None
    with user.client:
        tables = list(ElementFilter(kind=ui.table, marker=marker, local_scope=False, only_visible=True))
    assert len(tables) <= 1, f"expected one table marked {marker!r}, found {len(tables)}"
    return list(tables[0].rows) if tables else []


def caught_navigations(user: User, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the page sends the browser to from now on, caught instead of followed: a run started from the
    page goes to the run's page, and the test reads the new run's id from it."""
    went_to: list[str] = []
    monkeypatch.setattr(user.navigate, "to", went_to.append)
    return went_to


async def open_run_dialog(user: User, monkeypatch: pytest.MonkeyPatch, path: str, *buttons: str) -> list[str]:
    """Open `path` and click `buttons` (markers) to open the dialog that starts a run; returns the navigations
    caught from then on (see `caught_navigations`)."""
    await user.open(path)
    went_to = caught_navigations(user, monkeypatch)
    for marker in buttons:
        user.find(marker).click()
    return went_to


async def new_run_id(went_to: list[str]) -> int:
    """The id of the run the page went to once it started one: the only navigation caught is to that run's page."""
    await eventually(lambda: went_to, "navigation to the new run")
    run_id = int(went_to[0].removeprefix("/runs/"))
    assert went_to == [f"/runs/{run_id}"]
    return run_id
