"""A step's log on the run page: each line starts with the time it was written (UTC, to the millisecond,
the full date and time in its tooltip), live while the step runs and after; lines of an attempt stored
before times were kept show no time."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nicegui import ui
from nicegui.testing import User

from engine.db.base import Stmt
from engine.store import run_batch
from tests import stepfns
from tests.conftest import wait_for
from tests.ui.conftest import add_workflows
from tests.ui.test_run_page import WORKFLOWS as RUN_PAGE_WORKFLOWS
from tests.ui.test_run_page import api_step, show, start_run, texts_in, the, wait_run, wait_shown, wait_step

WORKFLOWS = {
    "logs": RUN_PAGE_WORKFLOWS["logs"],  # one step that reports progress and logs lines
    "live-log": """
        name: live-log
        steps:
          - key: talk
            call: tests.stepfns:logs_between_gates
    """,
}
TIME = r"\d\d:\d\d:\d\d\.\d\d\d"


@pytest.fixture(autouse=True)
def log_view_workflows(workflows_dir: Path) -> None:
    """This module's workflows for the app the `user` fixture starts (autouse: set up before `user`)."""
    add_workflows(workflows_dir, WORKFLOWS)


def shown_lines(user: User, key: str) -> list[tuple[str, str | None]]:
    """The lines of the step's log as shown: text and tooltip."""
    lines = the(user, f"log-{key}-lines")
    assert isinstance(lines, ui.log)
    return [(str(c.text), c.props.get("title")) for c in lines.default_slot.children]  # type: ignore[attr-defined]


def utc(iso: str) -> datetime:
    at = datetime.fromisoformat(iso)
    assert at.utcoffset() is not None
    return at.astimezone(UTC)


def prefix(at: datetime) -> str:
    return f"{at:%H:%M:%S}.{at.microsecond // 1000:03d}"


async def test_each_log_line_starts_with_the_time_it_was_written(user: User) -> None:
    run_id = await start_run(user, "logs")
    await wait_run(user, run_id, "completed")
    step = await api_step(user, run_id, "chatty")
    times = [utc(t) for t in step["log_times"]]
    await user.open(f"/runs/{run_id}")
    await show(user, "chatty")
    await wait_shown(user, "log-chatty", "Log · 3 lines")
    assert shown_lines(user, "chatty") == [
        (f"{prefix(at)} line {i + 1}", f"{at:%Y-%m-%d} {prefix(at)} UTC") for i, at in enumerate(times)
    ]


async def test_lines_of_an_attempt_stored_without_times_show_no_time(user: User) -> None:
    run_id = await start_run(user, "logs")
    await wait_run(user, run_id, "completed")
    # What an attempt made before times were kept holds: lines, and no times.
    await run_batch([Stmt("UPDATE attempts SET log_times = NULL WHERE run_id = ?", (run_id,))])
    assert (await api_step(user, run_id, "chatty"))["log_times"] == [None, None, None]
    await user.open(f"/runs/{run_id}")
    await show(user, "chatty")
    await wait_shown(user, "log-chatty", "Log · 3 lines")
    assert shown_lines(user, "chatty") == [("line 1", None), ("line 2", None), ("line 3", None)]


async def test_a_line_logged_while_the_page_is_open_arrives_with_its_time(user: User) -> None:
    run_id = await start_run(user, "live-log")
    await wait_step(user, run_id, "talk", "running")
    await user.open(f"/runs/{run_id}")
    await show(user, "talk")
    await user.should_see(marker="log-talk")
    stepfns.gate("talk:log").set()  # the step logs a line now, and keeps running

    async def arrived() -> list[tuple[str, str | None]]:
        return shown_lines(user, "talk")

    [(text, title)] = await wait_for(arrived, 10, "the live log line")
    await wait_shown(user, "log-talk", "Log · 1 line")
    assert "Log · 1 lines" not in texts_in(user, "log-talk")
    assert re.fullmatch(rf"{TIME} through the first gate", text), text
    assert title is not None and re.fullmatch(rf"\d{{4}}-\d\d-\d\d {TIME} UTC", title), title
    assert (await api_step(user, run_id, "talk"))["status"] == "running"  # it came live, not from the stored attempt

    stepfns.gate("talk").set()
    step = await wait_step(user, run_id, "talk", "completed")
    [at] = [utc(t) for t in step["log_times"]]
    assert text == f"{prefix(at)} through the first gate"  # the time shown live is the one kept
    assert title == f"{at:%Y-%m-%d} {prefix(at)} UTC"


@pytest.mark.parametrize("logged", ["before the read ends", "after the read"])
async def test_a_line_logged_while_the_card_is_being_opened_is_shown_once(
    user: User, monkeypatch: pytest.MonkeyPatch, logged: str
) -> None:
    # Opening a card reads the step, then builds its body. A line logged meanwhile reaches the page while
    # there is no body yet: it may be in what was read or not, and must be shown either way, once.
    from engine import queries

    run_id = await start_run(user, "live-log")
    await wait_step(user, run_id, "talk", "running")
    read = queries.step_details

    async def the_line_is_logged() -> None:
        stepfns.gate("talk:log").set()
        await wait_for(lambda: _logged(run_id), 10, "the line logged")
        await asyncio.sleep(1.0)  # the page hears of it while the body is still being built

    async def reading(run: int, keys: list[str]) -> Any:
        if logged == "before the read ends":
            await the_line_is_logged()
        details = await read(run, keys)
        if logged == "after the read":
            await the_line_is_logged()
        return details

    monkeypatch.setattr(queries, "step_details", reading)
    await user.open(f"/runs/{run_id}")
    await show(user, "talk")
    await wait_shown(user, "log-talk", "Log · 1 line")
    [(text, _)] = shown_lines(user, "talk")
    assert re.fullmatch(rf"{TIME} through the first gate", text), text
    stepfns.gate("talk").set()
    await wait_step(user, run_id, "talk", "completed")


async def _logged(run_id: int) -> bool:
    from engine.db import current

    ctx = current().hub.executing.get((run_id, "talk"))
    return ctx is not None and len(ctx.logs) == 1
