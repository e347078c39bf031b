"""The Schedules section of the workflows page: next fire time, last run, pause, resume and run now; and a
schedule that cannot load (an invalid cron expression) shown as a broken file, with the app still serving."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from nicegui import ElementFilter, ui
from nicegui.testing import User

from engine import queries
from engine.cron import trigger
from engine.records import utcnow
from engine.schedules import Schedules
from models.tables import Run, ScheduleState
from tests.ui.conftest import RETRIES, app_workflows, caught_navigations, eventually, new_run_id

REPORT = """\
name: report
inputs:
  topic:
    type: string
    default: default topic
steps:
  - key: echo
    call: tests.stepfns:echo_inputs
schedules:
  - name: nightly
    cron: "0 3 * * *"
    timezone: Europe/Berlin
    inputs: {topic: from the schedule}
"""
BAD_CRON = """\
name: bad-cron
steps:
  - key: only
    call: tests.stepfns:noop
schedules:
  - name: hourly
    cron: "61 * * * *"
"""
MARK = "schedule-report-nightly"


@pytest.fixture(autouse=True)
def scheduled_files(workflows_dir: Path) -> None:
    """A scheduled workflow and one whose cron cannot load, in place before `user` starts the app."""
    (workflows_dir / "report.yaml").write_text(REPORT, encoding="utf-8")
    (workflows_dir / "bad-cron.yaml").write_text(BAD_CRON, encoding="utf-8")


def texts(user: User, marker: str) -> list[str]:
    assert user.client is not None
    with user.client:
        return [str(getattr(e, "text", "")) for e in ElementFilter(marker=marker, local_scope=False)]


async def test_an_invalid_cron_expression_is_a_broken_file_and_the_app_goes_on(user: User, workflows_dir: Path) -> None:
    await user.open("/workflows")
    await user.should_see("bad-cron.yaml:7: schedules.hourly.cron: invalid cron expression '61 * * * *'")
    await user.should_see("Field: schedules.hourly.cron")
    await user.should_see(marker="workflow-report")  # the other definitions, and their schedules, still load
    await user.should_see(marker=MARK)
    await user.should_not_see(marker="workflow-bad-cron")
    await user.should_not_see(marker="schedule-bad-cron-hourly")

    # A mistake saved while the server runs is reported on reload (that workflow and its schedule unload).
    (workflows_dir / "report.yaml").write_text(REPORT.replace("Europe/Berlin", "Europe/Atlantis"), encoding="utf-8")
    user.find("reload-definitions").click()
    await user.should_see(
        "report.yaml:12: schedules.nightly.timezone: unknown time zone 'Europe/Atlantis'", retries=RETRIES
    )
    await user.should_see("file(s) with errors")
    await user.should_not_see(marker=MARK, retries=RETRIES)  # the schedules list follows the error report
    (workflows_dir / "report.yaml").write_text(REPORT, encoding="utf-8")
    user.find("reload-definitions").click()
    await user.should_see(marker=MARK, retries=RETRIES)


async def test_shows_next_fire_time_and_the_last_run_with_link_and_status(user: User) -> None:
    await user.open("/workflows")
    await user.should_see(marker=MARK)
    await user.should_see("no run yet")
    expected = trigger("0 3 * * *", "Europe/Berlin").get_next_fire_time(None, utcnow())
    assert expected is not None
    next_text = f"next: {expected.strftime('%Y-%m-%d %H:%M %Z')}"
    assert " 03:00 CE" in next_text  # in the schedule's own time zone
    assert texts(user, f"{MARK}-next") == [next_text]
    assert texts(user, f"{MARK}-state") == ["active"]

    # A fire time passes (fired by a scheduler of its own, as a second server would): its run appears.
    fired_for = datetime(2024, 3, 4, 2, 0, 30, tzinfo=UTC)  # 03:00 in Berlin, plus 30 s
    run_id = await Schedules(AsyncIOScheduler(timezone="UTC"), app_workflows()).fire("report", "nightly", now=fired_for)
    assert run_id is not None

    async def completed() -> bool:
        return bool((await queries.run_detail(run_id)).to_json()["status"] == "completed")

    await eventually(completed, "the scheduled run to complete")
    await user.open("/workflows")
    await user.should_see(marker=f"{MARK}-last")
    await user.should_see("for 2024-03-04 02:00 UTC")
    assert user.client is not None
    with user.client:
        links = list(ElementFilter(kind=ui.link, local_scope=False).within(marker=f"{MARK}-last"))
        badges = list(ElementFilter(kind=ui.badge, local_scope=False).within(marker=f"{MARK}-last"))
    assert [(link.text, link.props["href"]) for link in links] == [(f"#{run_id}", f"/runs/{run_id}")]
    assert [b.text for b in badges] == ["completed"]


async def test_pause_resume_and_run_now_from_the_page(user: User, monkeypatch: pytest.MonkeyPatch) -> None:
    await user.open("/workflows")
    await user.should_see(marker=f"{MARK}-pause")
    await user.should_not_see(marker=f"{MARK}-resume")

    user.find(f"{MARK}-pause").click()
    await user.should_see(marker=f"{MARK}-resume")
    await user.should_see("nightly paused")
    assert texts(user, f"{MARK}-state") == ["paused"]
    assert texts(user, f"{MARK}-next") == ["next: —"]
    state = await ScheduleState.get(workflow="report", name="nightly")
    assert (state.paused, state.paused_by) == (True, "ui")  # the local dashboard acts as an operator

    user.find(f"{MARK}-resume").click()
    await user.should_see(marker=f"{MARK}-pause")
    await user.should_see("nightly resumed")
    assert texts(user, f"{MARK}-state") == ["active"]
    assert texts(user, f"{MARK}-next") != ["next: —"]
    state = await ScheduleState.get(workflow="report", name="nightly")
    assert (state.paused, state.paused_by) == (False, None)

    went_to = caught_navigations(user, monkeypatch)
    user.find(f"{MARK}-run-now").click()
    run = await Run.get(id=await new_run_id(went_to))
    assert (run.workflow, run.actor, run.schedule) == ("report", "ui", None)
    assert run.inputs == {"topic": "from the schedule"}
