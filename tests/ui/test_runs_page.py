"""The runs page: the live table, filters, and starting a run from the generated form."""

from __future__ import annotations

from typing import Any

import pytest
from nicegui.testing import User

from engine import operations, queries
from engine.readmodel import RunDetailJson
from tests import stepfns
from tests.ui.conftest import eventually, loaded, new_run_id, open_run_dialog, table_rows
from ui import run_list
from ui.run_list import RunFilter


def row_of(user: User, run_id: int) -> dict[str, Any] | None:
    return next((r for r in table_rows(user, "runs-table") if r["id"] == run_id), None)


def choose(user: User, marker: str, value: str) -> None:
    """Pick an option of a select (clicking the option text could also hit a menu item with that text)."""
    (select,) = user.find(marker).elements
    with user:
        select.value = value  # type: ignore[attr-defined]


async def run_in(run_id: int, *statuses: str) -> RunDetailJson | None:
    run = (await queries.run_detail(run_id)).to_json()
    return run if run["status"] in statuses else None


async def test_empty_state(user: User) -> None:
    await user.open("/")
    await user.should_see("No runs yet")
    await user.should_not_see(marker="runs-table")


async def test_lists_runs_with_status_and_progress(user: User) -> None:
    done = await operations.start_run(loaded("ui-demo"), {"topic": "bees"}, "test")
    await eventually(lambda: run_in(done, "completed"), f"run {done} to complete")
    blocked = await operations.start_run(loaded("gated"), {}, "test")
    await eventually(lambda: run_in(blocked, "running"), f"run {blocked} to run")

    await user.open("/")
    await user.should_not_see("No runs yet")
    rows = table_rows(user, "runs-table")
    assert [r["id"] for r in rows] == [blocked, done]  # newest first
    assert rows[0]["workflow"] == "gated"
    assert rows[0]["status"] == "running"
    assert rows[0]["progress"] == "0/1 steps"
    assert {k: rows[1][k] for k in ("workflow", "status", "color", "progress", "choice")} == {
        "workflow": "ui-demo",
        "status": "completed",
        "color": "green-6",
        "progress": "2/2 steps",
        "choice": False,
    }
    assert rows[1]["duration"].endswith(" s")
    assert rows[1]["started"] == "just now"  # relative; the absolute time (viewer's zone) is on hover
    assert rows[1]["started_at"][:2] == "20"
    assert rows[1]["actor"] == "test"
    assert rows[1]["inputs"].startswith("topic=bees · count=3")


def test_relative_times_and_inputs_on_one_line() -> None:
    from datetime import UTC, datetime, timedelta

    from ui.format import ago
    from ui.pages.runs import inputs_text

    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert ago(None, now) == "not started"
    assert ago(now - timedelta(seconds=10), now) == "just now"
    assert ago(now - timedelta(minutes=3, seconds=20), now) == "3 min ago"
    assert ago(now - timedelta(hours=5), now) == "5 h ago"
    assert ago(now - timedelta(days=2, hours=1), now) == "2 d ago"
    assert inputs_text({"topic": "Bees", "words": 300}) == "topic=Bees · words=300"
    long = inputs_text({"topic": "x" * 500})
    assert len(long) == 80 and long.endswith("…")


async def test_filters_come_from_the_url(user: User) -> None:
    """A filtered list can be linked to and reloaded (the page writes its filters into the URL)."""
    first = await operations.start_run(loaded("ui-demo"), {"topic": "honey bees"}, "test")
    await operations.start_run(loaded("ui-demo"), {"topic": "wasps"}, "test")
    gated = await operations.start_run(loaded("gated"), {}, "test")
    await eventually(lambda: run_in(first, "completed"), f"run {first} to complete")

    await user.open("/?status=completed&q=honey")
    assert [r["id"] for r in table_rows(user, "runs-table")] == [first]
    (status,) = user.find("filter-status").elements
    assert status.value == "completed"  # type: ignore[attr-defined]
    (search,) = user.find("filter-search").elements
    assert search.value == "honey"  # type: ignore[attr-defined]

    await user.open("/?workflow=gated")
    assert [r["id"] for r in table_rows(user, "runs-table")] == [gated]
    await user.open("/?status=bogus")  # an unknown status is ignored, not an error
    assert len(table_rows(user, "runs-table")) == 3


async def test_stale_steps_show_in_the_runs_list(user: User) -> None:
    run_id = await operations.start_run(loaded("ui-demo"), {"topic": "bees"}, "test")
    await eventually(lambda: run_in(run_id, "completed"), f"run {run_id} to complete")
    await user.open("/")
    assert (row_of(user, run_id) or {})["stale"] == 0
    run = (await queries.run_detail(run_id)).to_json()
    first = run["steps"][0]["key"]
    from models.tables import Step

    await Step.filter(run_id=run_id).exclude(key=first).update(stale=True, stale_reason="made from an older output")
    rows = await run_list.page_runs(RunFilter(), page=1, rows_per_page=10)
    assert next(r for r in rows if r.id == run_id).stale == len(run["steps"]) - 1


async def test_status_change_shows_without_reload(user: User) -> None:
    await user.open("/")
    await user.should_see("No runs yet")
    run_id = await operations.start_run(loaded("gated"), {}, "test")
    # The new run appears, then turns running, then completed: all without reopening the page.
    await eventually(lambda: (row_of(user, run_id) or {}).get("status") == "running", "the row to show running")
    stepfns.RELEASE.set()
    row = await eventually(
        lambda: (r := row_of(user, run_id)) and r["status"] == "completed" and r, "the row to show completed"
    )
    assert row["progress"] == "1/1 steps"
    assert row["color"] == "green-6"


async def test_filters(user: User) -> None:
    first = await operations.start_run(loaded("ui-demo"), {"topic": "honey bees"}, "test")
    second = await operations.start_run(loaded("ui-demo"), {"topic": "wasps"}, "test")
    gated = await operations.start_run(loaded("gated"), {}, "test")
    await user.open("/")
    assert {r["id"] for r in table_rows(user, "runs-table")} == {first, second, gated}

    user.find("filter-search").type("HONEY")
    await eventually(lambda: [r["id"] for r in table_rows(user, "runs-table")] == [first], "search by input text")
    user.find("filter-search").clear().type(f"#{second}")
    await eventually(lambda: [r["id"] for r in table_rows(user, "runs-table")] == [second], "search by run id")
    user.find("filter-search").clear()
    choose(user, "filter-workflow", "gated")
    await eventually(lambda: [r["id"] for r in table_rows(user, "runs-table")] == [gated], "filter by workflow")
    user.find("filter-search").type("no such thing")
    await user.should_see("No runs match these filters.")


async def test_start_run_from_dialog(user: User, monkeypatch: pytest.MonkeyPatch) -> None:
    went_to = await open_run_dialog(user, monkeypatch, "/", "new-run", "new-run-ui-demo")
    await user.should_see(marker="run-dialog")
    (topic,) = user.find("input-topic").elements
    assert topic.props["hint"] == "What the run is about."  # descriptions show under their fields
    assert topic.props["label"] == "topic *"  # required
    user.find("input-topic").type("bees")
    user.find("input-count").clear().type("7")
    user.find("input-tone").click()
    user.find("formal").click()
    user.find("input-payload").type('{"depth": 2}')
    user.find("input-loud").click()
    user.find("start-run").click()

    run_id = await new_run_id(went_to)
    run = (await queries.run_detail(run_id)).to_json()
    assert run["workflow"] == "ui-demo"
    assert run["actor"] == "ui"
    assert run["inputs"] == {"topic": "bees", "count": 7, "tone": "formal", "payload": {"depth": 2}, "loud": True}
    await user.should_see(f"Run #{run_id} of ui-demo started")
    await user.should_not_see(marker="run-dialog")
    await eventually(lambda: row_of(user, run_id), "the new run in the table")


async def test_bad_input_keeps_the_dialog_open_and_starts_nothing(user: User, monkeypatch: pytest.MonkeyPatch) -> None:
    went_to = await open_run_dialog(user, monkeypatch, "/", "new-run", "new-run-ui-demo")
    user.find("input-count").clear().type("12")

    # The engine refuses a missing required input: the problem shows on its field.
    user.find("start-run").click()
    await user.should_see("required input missing")
    await user.should_see(marker="run-dialog")
    assert await run_list.count_runs(RunFilter()) == 0

    # JSON that does not parse is caught before the engine, with the other problems still shown.
    user.find("input-payload").type("{not json")
    await user.should_see("not valid JSON")
    user.find("start-run").click()
    await user.should_see("required input missing")
    await user.should_see(marker="run-dialog")
    assert await run_list.count_runs(RunFilter()) == 0

    # Nothing typed was lost; fixing the fields clears their messages and starts the run.
    assert user.find("input-count").elements.pop().value == 12  # type: ignore[attr-defined]
    assert user.find("input-payload").elements.pop().value == "{not json"  # type: ignore[attr-defined]
    user.find("input-topic").type("bees")
    user.find("input-payload").clear().type("[1, 2]")
    await user.should_not_see("required input missing")
    await user.should_not_see("not valid JSON")
    user.find("start-run").click()
    run = (await queries.run_detail(await new_run_id(went_to))).to_json()
    assert run["inputs"] == {"topic": "bees", "count": 12, "tone": "friendly", "payload": [1, 2], "loud": False}
    assert await run_list.count_runs(RunFilter()) == 1
