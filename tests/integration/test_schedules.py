"""Cron schedules on a real SQLite file (engine/schedules.py, engine/transitions.py `create_scheduled_run`).

Time is passed in (`now=`) wherever the slot logic is under test; APScheduler itself is only asked to run a
job now (its cron has minute granularity). Two firings of one fire time, in one process or in two, start
one run; pause lives in the database; a downtime is caught up on by the schedule's policy, once.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.job import Job
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from engine import operations
from engine.definitions import WorkflowDef
from engine.engine import Engine
from engine.records import utcnow
from engine.registry import Registry
from engine.schedules import MISFIRE_GRACE_S, Schedules, job_id
from models.tables import Run, ScheduleFire, ScheduleState
from tests.conftest import attempts_of, step_of, wait_for, wait_run
from tests.integration.served import ROOT, clean_env

BERLIN = ZoneInfo("Europe/Berlin")
WORKFLOW = "report"
DEFAULTS = {"topic": "default topic", "count": 3}
SCHEDULE: dict[str, Any] = {
    "name": "nightly",
    "cron": "0 2 * * *",
    "timezone": "Europe/Berlin",
    "inputs": {"topic": "from the schedule"},
}
NIGHT = datetime(2024, 3, 4, 2, 0, tzinfo=BERLIN)  # a fire time of SCHEDULE: 01:00 UTC
T0 = datetime(2024, 3, 4, 10, 30, tzinfo=UTC)


def workflow_yaml(steps: str = "echo", **schedule: Any) -> str:
    """The definition of WORKFLOW with one schedule (SCHEDULE with `schedule` over it); JSON is YAML."""
    body: dict[str, Any] = {
        "name": WORKFLOW,
        "inputs": {"topic": {"type": "string", "default": "default topic"}, "count": {"type": "integer", "default": 3}},
        "steps": [{"key": "echo", "call": "tests.stepfns:echo_inputs"}],
        "schedules": [{**SCHEDULE, **schedule}],
    }
    if steps == "flaky":
        body["steps"].append({"key": "flaky", "call": "tests.stepfns:fail_first", "needs": ["echo"]})
    return json.dumps(body, indent=1)


@pytest.fixture
def install(tmp_path: Path, registry: Registry) -> Any:
    """Write the workflow file into a definitions directory and load it into the test's registry, as the
    server does (each test sees only the definitions it installs: `Schedules.sync` acts on every one)."""
    directory = tmp_path / "workflows"
    directory.mkdir()

    def _install(steps: str = "echo", **schedule: Any) -> WorkflowDef:
        (directory / f"{WORKFLOW}.yaml").write_text(workflow_yaml(steps, **schedule), encoding="utf-8")
        catalog = registry.load(directory)
        assert catalog.errors == []
        return registry.get(WORKFLOW)

    return _install


@pytest.fixture
async def schedules(registry: Registry) -> AsyncIterator[Schedules]:
    """Schedules on a scheduler that is not started unless a test starts it (then it is shut down)."""
    sched = Schedules(AsyncIOScheduler(timezone="UTC"), registry)
    yield sched
    if sched.scheduler.running:
        sched.scheduler.shutdown(wait=False)


async def fires() -> list[tuple[datetime, str, int | None]]:
    rows = await ScheduleFire.filter(workflow=WORKFLOW).order_by("fire_time")
    return [(r.fire_time.astimezone(UTC), r.outcome, r.run_id) for r in rows]


async def scheduled_runs() -> list[Run]:
    return await Run.filter(workflow=WORKFLOW).order_by("id")


async def job_of(schedules: Schedules, jid: str) -> Job | None:
    """The APScheduler job (async, for `wait_for`)."""
    return schedules.scheduler.get_job(jid)


def utc(hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 3, 4, hour, minute, tzinfo=UTC)


# --- a fire starts a run ------------------------------------------------------------------------------


async def test_a_fire_starts_a_run_with_the_schedules_inputs_that_runs_retries_and_resumes(
    engine: Engine, install: Any, schedules: Schedules
) -> None:
    install(steps="flaky")
    run_id = await schedules.fire(WORKFLOW, "nightly", now=NIGHT + timedelta(seconds=20))
    assert run_id is not None

    run = await Run.get(id=run_id)
    assert run.actor == "schedule:nightly"
    assert run.schedule == "nightly"
    assert run.scheduled_for == NIGHT.astimezone(UTC)  # the fire time, not the moment it ran
    assert run.inputs == {"topic": "from the schedule", "count": 3}  # schedule inputs over the defaults
    assert await fires() == [(NIGHT.astimezone(UTC), "started", run_id)]

    # It runs like any other run: the flaky step fails once, resume picks it up, a rerun repeats a step.
    await wait_run(run_id, "failed")
    assert (await step_of(run_id, "echo"))["output"] == {"topic": "from the schedule", "count": 3}
    plan = await operations.resume_run(run_id, "tester")
    assert plan.rerun == ["flaky"]
    await wait_run(run_id, "completed")
    await operations.rerun_from(run_id, "echo", "tester")
    await wait_run(run_id, "completed")
    assert len(await attempts_of(run_id, "echo")) == 2
    assert len(await attempts_of(run_id, "flaky")) == 3
    assert [r.id for r in await scheduled_runs()] == [run_id]  # retries never look like new fires


async def test_a_fire_between_fire_times_starts_the_run_of_the_latest_one(
    db: str, install: Any, schedules: Schedules
) -> None:
    install(cron="*/15 * * * *", timezone="UTC")
    run_id = await schedules.fire(WORKFLOW, "nightly", now=utc(10, 34))
    assert run_id is not None
    assert (await Run.get(id=run_id)).scheduled_for == utc(10, 30)
    # Nothing due within the misfire grace: a late job call starts nothing.
    install(cron="0 2 * * *", timezone="UTC")
    assert await schedules.fire(WORKFLOW, "nightly", now=utc(2) + timedelta(seconds=MISFIRE_GRACE_S + 60)) is None
    assert len(await scheduled_runs()) == 1


async def test_a_disabled_schedule_or_an_unknown_one_starts_nothing(
    db: str, install: Any, schedules: Schedules
) -> None:
    install(enabled=False)
    assert await schedules.fire(WORKFLOW, "nightly", now=NIGHT) is None
    assert await schedules.fire(WORKFLOW, "other", now=NIGHT) is None
    assert await schedules.fire("no-such-workflow", "nightly", now=NIGHT) is None
    await schedules.sync(now=NIGHT)
    assert schedules.scheduler.get_job(job_id(WORKFLOW, "nightly")) is None
    assert await scheduled_runs() == []


# --- one run per fire time ------------------------------------------------------------------------------


async def test_firing_the_same_slot_twice_starts_one_run(
    db: str, install: Any, schedules: Schedules, registry: Registry
) -> None:
    install()
    first = await schedules.fire(WORKFLOW, "nightly", now=NIGHT)
    assert first is not None
    assert await schedules.fire(WORKFLOW, "nightly", now=NIGHT) is None
    assert await schedules.fire(WORKFLOW, "nightly", now=NIGHT + timedelta(minutes=3)) is None  # same slot, later
    other = Schedules(AsyncIOScheduler(timezone="UTC"), registry)  # a second scheduler on the same database
    assert await other.fire(WORKFLOW, "nightly", now=NIGHT) is None
    assert [r.id for r in await scheduled_runs()] == [first]
    assert await fires() == [(NIGHT.astimezone(UTC), "started", first)]


async def test_concurrent_fires_of_one_slot_start_one_run(
    db: str, install: Any, schedules: Schedules, registry: Registry
) -> None:
    install()
    other = Schedules(AsyncIOScheduler(timezone="UTC"), registry)
    night = NIGHT + timedelta(days=1)
    results = await asyncio.gather(*(s.fire(WORKFLOW, "nightly", now=night) for s in [schedules, other] * 10))
    started = [r for r in results if r is not None]
    assert len(started) == 1
    assert [r.id for r in await scheduled_runs()] == started
    assert await fires() == [(night.astimezone(UTC), "started", started[0])]


FIRE_SCRIPT = """
import asyncio, json, sys
from datetime import datetime
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from engine.registry import Registry
from engine.schedules import Schedules
from engine.db import close_database, open_database


async def main(db_url: str, directory: str, now: str, go: str) -> None:
    workflows = Registry()
    workflows.load(Path(directory))
    await open_database(db_url)
    try:
        schedules = Schedules(AsyncIOScheduler(timezone="UTC"), workflows)
        print("ready", flush=True)
        while not Path(go).exists():
            await asyncio.sleep(0.002)
        when = datetime.fromisoformat(now)
        ids = await asyncio.gather(*(schedules.fire("report", "nightly", now=when) for _ in range(5)))
        print(json.dumps(ids), flush=True)
    finally:
        await close_database()


asyncio.run(main(*sys.argv[1:]))
"""


async def test_two_processes_firing_one_slot_on_one_database_start_one_run(
    db: str, install: Any, schedules: Schedules, tmp_path: Path, registry: Registry
) -> None:
    install()
    go = tmp_path / "go"
    now = NIGHT + timedelta(seconds=1)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            FIRE_SCRIPT,
            db,
            str(registry.directory),
            now.isoformat(),
            str(go),
            cwd=ROOT,
            env={**clean_env(), "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"ready", (line, await proc.stderr.read() if proc.stderr else b"")
    go.touch()
    mine = await asyncio.gather(*(schedules.fire(WORKFLOW, "nightly", now=now) for _ in range(5)))
    outputs = [await asyncio.wait_for(p.communicate(), 30) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err.decode() for _, err in outputs]
    theirs = [run for out, _ in outputs for run in json.loads(out.decode().strip().splitlines()[-1])]

    started = [r for r in [*mine, *theirs] if r is not None]
    assert len(started) == 1, (mine, theirs)
    assert [r.id for r in await scheduled_runs()] == started
    assert await fires() == [(NIGHT.astimezone(UTC), "started", started[0])]


# --- APScheduler --------------------------------------------------------------------------------------------


async def test_apscheduler_runs_the_job_and_it_starts_the_run_of_the_current_minute(
    engine: Engine, install: Any, schedules: Schedules
) -> None:
    install(name="minutely", cron="* * * * *", timezone="UTC")
    schedules.start()  # the definitions watcher runs at once and adds the schedule's job
    schedules.scheduler.start()
    jid = job_id(WORKFLOW, "minutely")
    await wait_for(lambda: job_of(schedules, jid), what="the schedule's job")
    before = utcnow().replace(second=0, microsecond=0)
    schedules.scheduler.modify_job(jid, next_run_time=utcnow())  # "the next minute is now"
    runs = await wait_for(scheduled_runs, what="a run started by the job")
    after = utcnow().replace(second=0, microsecond=0)
    run = runs[0]
    assert run.actor == "schedule:minutely"
    assert run.scheduled_for in {before, after}
    await wait_run(run.id, "completed")
    # The job stays scheduled for the next minute after it ran.
    job = schedules.scheduler.get_job(jid)
    assert job is not None
    assert job.next_run_time > run.scheduled_for


async def test_sync_follows_the_definitions(db: str, install: Any, schedules: Schedules) -> None:
    install()
    await schedules.sync(now=T0)
    jid = job_id(WORKFLOW, "nightly")
    job = schedules.scheduler.get_job(jid)
    assert job is not None
    assert "0 2 * * * Europe/Berlin" in job.name
    install(name="renamed")
    await schedules.sync(now=T0)
    assert schedules.scheduler.get_job(jid) is None
    assert schedules.scheduler.get_job(job_id(WORKFLOW, "renamed")) is not None


# --- pause ------------------------------------------------------------------------------------------------


async def test_pause_stops_fires_in_every_instance_until_resumed(
    db: str, install: Any, schedules: Schedules, registry: Registry
) -> None:
    install()
    schedules.scheduler.start()
    await schedules.sync(now=T0)
    jid = job_id(WORKFLOW, "nightly")

    await schedules.set_paused(WORKFLOW, "nightly", True, "alice")
    state = await ScheduleState.get(workflow=WORKFLOW, name="nightly")
    assert (state.paused, state.paused_by) == (True, "alice")
    job = schedules.scheduler.get_job(jid)
    assert job is not None
    assert job.next_run_time is None  # APScheduler will not call it
    assert await schedules.fire(WORKFLOW, "nightly", now=NIGHT) is None

    # Another process's scheduler reads the pause from the database, at a fire and when it syncs.
    other = Schedules(AsyncIOScheduler(timezone="UTC"), registry)
    assert await other.fire(WORKFLOW, "nightly", now=NIGHT) is None
    await other.sync(now=NIGHT + timedelta(days=2))  # no catch-up for a paused schedule either
    other_job = other.scheduler.get_job(jid)
    assert other_job is not None
    assert other_job.next_run_time is None
    (view,) = await other.overview()
    assert (view.paused, view.paused_by, view.next_fire_at) == (True, "alice", None)
    assert await fires() == []
    assert await scheduled_runs() == []

    await schedules.set_paused(WORKFLOW, "nightly", False, "bob")
    state = await ScheduleState.get(workflow=WORKFLOW, name="nightly")
    assert (state.paused, state.paused_by) == (False, None)
    resumed = schedules.scheduler.get_job(jid)
    assert resumed is not None
    assert resumed.next_run_time is not None
    run_id = await other.fire(WORKFLOW, "nightly", now=NIGHT)
    assert run_id is not None
    assert [r.id for r in await scheduled_runs()] == [run_id]


async def test_a_pause_from_another_process_shows_and_holds_here(
    db: str, install: Any, schedules: Schedules, registry: Registry
) -> None:
    install()
    schedules.scheduler.start()
    await schedules.sync(now=T0)  # this process's job is scheduled and not paused
    other = Schedules(AsyncIOScheduler(timezone="UTC"), registry)
    await other.set_paused(WORKFLOW, "nightly", True, "dave")
    (view,) = await schedules.overview()
    assert (view.paused, view.paused_by, view.next_fire_at) == (True, "dave", None)
    assert await schedules.fire(WORKFLOW, "nightly", now=NIGHT) is None  # this job's call starts nothing
    await other.set_paused(WORKFLOW, "nightly", False, "dave")
    (view,) = await schedules.overview()
    assert view.paused is False
    assert view.next_fire_at is not None
    assert await schedules.fire(WORKFLOW, "nightly", now=NIGHT) is not None


async def test_run_now_starts_a_run_with_the_schedules_inputs_as_the_person(
    db: str, install: Any, schedules: Schedules
) -> None:
    install()
    run_id = await schedules.run_now(WORKFLOW, "nightly", "carol")
    run = await Run.get(id=run_id)
    assert (run.actor, run.schedule, run.scheduled_for) == ("carol", None, None)
    assert run.inputs == {"topic": "from the schedule", "count": 3}
    assert await fires() == []  # outside the fire times: the next fire still runs
    assert await schedules.fire(WORKFLOW, "nightly", now=NIGHT) is not None


# --- catch-up after a downtime ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["skip", "once"])
async def test_catch_up_after_a_downtime_records_every_missed_fire_time_once(
    db: str, install: Any, schedules: Schedules, policy: str, registry: Registry
) -> None:
    install(cron="0 * * * *", timezone="UTC", catch_up=policy)
    await schedules.sync(now=T0)  # the schedule appears at 10:30
    state = await ScheduleState.get(workflow=WORKFLOW, name="nightly")
    assert state.first_seen_at == T0
    assert await fires() == []  # nothing before it appeared is due

    restarted = Schedules(AsyncIOScheduler(timezone="UTC"), registry)  # the server comes back three hours later
    await restarted.sync(now=T0 + timedelta(hours=3))
    runs = await scheduled_runs()
    expected: list[tuple[datetime, str, int | None]]
    if policy == "skip":
        assert runs == []
        expected = [(utc(11), "missed", None), (utc(12), "missed", None), (utc(13), "missed", None)]
    else:
        assert len(runs) == 1
        assert (runs[0].scheduled_for, runs[0].actor) == (utc(13), "schedule:nightly")  # the latest
        expected = [(utc(11), "missed", None), (utc(12), "missed", None), (utc(13), "started", runs[0].id)]
    assert await fires() == expected
    missed = await ScheduleFire.filter(outcome="missed").first()
    assert missed is not None
    assert missed.detail == "no server was running at this time"

    # Idempotent: the same sync again, by this instance or another one, changes nothing.
    await restarted.sync(now=T0 + timedelta(hours=3))
    await Schedules(AsyncIOScheduler(timezone="UTC"), registry).sync(now=T0 + timedelta(hours=3, minutes=5))
    assert await fires() == expected
    assert len(await scheduled_runs()) == len(runs)

    (view,) = await restarted.overview()
    assert view.missed == (3 if policy == "skip" else 2)
    assert view.last_missed_at == (utc(13) if policy == "skip" else utc(12))
    assert view.last_run == (None if policy == "skip" else {"id": runs[0].id, "status": "queued", "fire_time": utc(13)})


async def test_no_catch_up_when_nothing_was_due(db: str, install: Any, schedules: Schedules) -> None:
    install(cron="0 * * * *", timezone="UTC", catch_up="once")
    await schedules.sync(now=T0)
    await schedules.sync(now=T0 + timedelta(minutes=29))
    assert await fires() == []
    await schedules.sync(now=T0 + timedelta(minutes=30))  # 11:00 is due now, exactly
    assert [(f[0], f[1]) for f in await fires()] == [(utc(11), "started")]


async def test_catch_up_counts_from_the_last_recorded_fire_time(db: str, install: Any, schedules: Schedules) -> None:
    install(cron="0 * * * *", timezone="UTC")
    await schedules.sync(now=T0)
    assert await schedules.fire(WORKFLOW, "nightly", now=utc(11, 0)) is not None  # the server was up at 11:00
    await schedules.sync(now=utc(13, 30))  # ... then down until 13:30
    assert [(f[0], f[1]) for f in await fires()] == [(utc(11), "started"), (utc(12), "missed"), (utc(13), "missed")]


# --- APScheduler's own misfires -----------------------------------------------------------------------------


async def test_a_job_apscheduler_could_not_run_in_time_is_recorded_as_missed(
    db: str, install: Any, schedules: Schedules
) -> None:
    install()
    event = JobExecutionEvent(EVENT_JOB_MISSED, job_id(WORKFLOW, "nightly"), "default", NIGHT)
    schedules._on_missed(event)
    schedules._on_missed(JobExecutionEvent(EVENT_JOB_MISSED, "stepdeck-sweep", "default", NIGHT))  # not a schedule
    await wait_for(fires, what="the missed fire time to be recorded")
    assert await fires() == [(NIGHT.astimezone(UTC), "missed", None)]
    row = await ScheduleFire.get(workflow=WORKFLOW)
    assert row.detail is not None
    assert f"within {MISFIRE_GRACE_S} s" in row.detail
    # A late call of the job for that fire time cannot start it afterwards.
    assert await schedules.fire(WORKFLOW, "nightly", now=NIGHT + timedelta(seconds=30)) is None
    (view,) = await schedules.overview()
    assert (view.missed, view.last_missed_at, view.last_run) == (1, NIGHT.astimezone(UTC), None)


async def test_apscheduler_reports_a_late_job_and_it_is_recorded(db: str, install: Any, schedules: Schedules) -> None:
    # A real fire time half a day away: one due while the test waits (the nightly one, within minutes of
    # the clock) would be fired in place of the late one.
    install(cron=f"0 {(utcnow().hour + 12) % 24} * * *", timezone="UTC")
    schedules.start()  # registers the listener of EVENT_JOB_MISSED
    schedules.scheduler.start()
    jid = job_id(WORKFLOW, "nightly")
    await wait_for(lambda: job_of(schedules, jid), what="the schedule's job")
    late = utcnow().replace(microsecond=0) - timedelta(seconds=MISFIRE_GRACE_S + 60)
    schedules.scheduler.modify_job(jid, next_run_time=late)  # as if the machine had slept past it
    recorded = await wait_for(fires, what="the misfire to be recorded")
    assert recorded == [(late, "missed", None)]
    assert await scheduled_runs() == []


# --- fixed after review: coalesced firings, long downtimes, pauses made elsewhere -----------------------------


async def test_fire_times_apscheduler_coalesced_into_one_are_recorded_as_missed(
    db: str, install: Any, schedules: Schedules
) -> None:
    install(cron="* * * * *", timezone="UTC")
    await schedules.sync(now=T0)
    # The job runs three minutes late (the loop was blocked): it starts the latest fire time only.
    run_id = await schedules.fire(WORKFLOW, "nightly", now=T0 + timedelta(minutes=3, seconds=5))
    assert run_id is not None
    recorded = [(f[0] - T0, f[1]) for f in await fires()]
    minute = timedelta(minutes=1)
    assert recorded == [(minute, "missed"), (2 * minute, "missed"), (3 * minute, "started")]


async def test_once_after_a_downtime_longer_than_the_slot_cap_runs_the_latest_fire_time(
    db: str, install: Any, schedules: Schedules, registry: Registry
) -> None:
    install(cron="* * * * *", timezone="UTC", catch_up="once")
    await schedules.sync(now=T0)
    back = T0 + timedelta(days=8, minutes=7)  # 11,527 fire times later
    await Schedules(AsyncIOScheduler(timezone="UTC"), registry).sync(now=back)
    [run] = await scheduled_runs()
    assert run.scheduled_for == back.replace(second=0, microsecond=0)
    missed = await ScheduleFire.filter(outcome="missed").count()
    assert 0 < missed <= 24 * 60  # the newest day one by one; the detail says there were more
    note = await ScheduleFire.filter(outcome="missed").first()
    assert note is not None and note.detail is not None and "one of many fire times missed since" in note.detail
    await Schedules(AsyncIOScheduler(timezone="UTC"), registry).sync(now=back)
    assert len(await scheduled_runs()) == 1, "a second sync starts no second run"


async def test_a_resume_in_another_process_resumes_this_process_job(
    db: str, install: Any, schedules: Schedules, registry: Registry
) -> None:
    install(cron="0 * * * *", timezone="UTC")
    schedules.scheduler.start(paused=True)
    try:
        await schedules.sync(now=T0)
        jid = "schedule:report:nightly"
        await schedules.set_paused(WORKFLOW, "nightly", True, "alice")
        assert (await job_of(schedules, jid)).next_run_time is None  # type: ignore[union-attr]
        other = Schedules(AsyncIOScheduler(timezone="UTC"), registry)
        await other.set_paused(WORKFLOW, "nightly", False, "bob")
        await schedules.watch()  # this process's periodic check
        assert (await job_of(schedules, jid)).next_run_time is not None  # type: ignore[union-attr]
    finally:
        schedules.scheduler.shutdown(wait=False)
