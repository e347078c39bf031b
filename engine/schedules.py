"""Cron schedules of workflows, run by APScheduler inside the server.

Every fire time is recorded once (`schedule_fires`, unique per workflow, schedule and fire time):
the run it started, or that it was missed. The run and its fire-time record are written in one
commit, so a double firing (two processes each with their own scheduler, a restart at the wrong
moment) starts one run. A fire time missed while no server ran is recorded as missed (`skip`), or
the latest one is run at startup (`once`); one APScheduler could not run in time is recorded too.
Nothing is missed silently.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from engine import logs, operations, records
from engine.cron import MAX_SLOTS, fire_times, latest_fire_time, trigger
from engine.definitions import ScheduleDef, WorkflowDef
from engine.errors import NotFound, OperationError
from engine.records import utcnow
from engine.registry import Registry
from engine.store import fetch
from models.tables import ScheduleState

log = logs.logger(__name__)

JOB_PREFIX = "schedule:"
MISFIRE_GRACE_S = 300  # a fire time APScheduler reaches this late still runs (a busy or sleeping machine)
SYNC_INTERVAL_S = 10.0  # how often definitions on disk are checked for changes


def job_id(workflow: str, schedule: str) -> str:
    return f"{JOB_PREFIX}{workflow}:{schedule}"


@dataclass
class ScheduleView:
    """What the Workflows page shows of a schedule."""

    workflow: str
    schedule: ScheduleDef
    paused: bool
    paused_by: str | None
    next_fire_at: datetime | None
    last_run: dict[str, Any] | None  # id, status, fire_time
    missed: int
    last_missed_at: datetime | None


class Schedules:
    def __init__(
        self, scheduler: AsyncIOScheduler, workflows: Registry, is_leader: Callable[[], bool] = lambda: True
    ) -> None:
        self.scheduler = scheduler
        self.workflows = workflows  # the definitions whose schedules it runs (reloaded when their files change)
        self.is_leader = is_leader  # only the leader fires, catches up and records missed fire times
        self.started_at = utcnow()  # fire times before this were due while this process did not run
        self._synced_catalog: object | None = None
        self._mtimes: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[bool]] = set()

    def start(self) -> None:
        """Call before the scheduler starts: sync now, then watch definitions; record missed fire times."""
        self.scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        self.scheduler.add_job(
            self.watch,
            "interval",
            seconds=SYNC_INTERVAL_S,
            id="stepdeck-schedules",
            name="sync cron schedules with the definitions",
            replace_existing=True,
            next_run_time=utcnow(),
            coalesce=True,
            max_instances=1,
            misfire_grace_time=30,
        )

    async def watch(self) -> None:
        """Reload definitions when a file changed on disk; sync jobs when the definitions changed."""
        if self.workflows.directory is not None and self._changed_on_disk():
            await asyncio.to_thread(self.workflows.reload)
        if self.workflows.catalog is not self._synced_catalog:
            await self.sync()
        else:
            await self._follow_pauses()

    async def _follow_pauses(self) -> None:
        """Pause or resume this process's jobs as people did in any process (the state is in the database)."""
        for state in await ScheduleState.all():
            job = self.scheduler.get_job(job_id(state.workflow, state.name))
            if job is None:
                continue
            if state.paused and job.next_run_time is not None:
                job.pause()
            elif not state.paused and job.next_run_time is None:
                job.resume()

    def _changed_on_disk(self) -> bool:
        directory = self.workflows.directory
        assert directory is not None
        try:
            mtimes = {str(p): p.stat().st_mtime for p in directory.iterdir() if p.suffix in (".yaml", ".yml", ".py")}
        except OSError:
            return False
        first, changed = not self._mtimes, mtimes != self._mtimes
        self._mtimes = mtimes
        return changed and not first

    async def sync(self, now: datetime | None = None) -> None:
        """Make the jobs match the schedules of the loaded definitions, then catch up on missed fire times."""
        async with self._lock:
            catalog = self.workflows.catalog
            now = now or utcnow()
            wanted: dict[str, tuple[WorkflowDef, ScheduleDef]] = {}
            for defn in catalog.definitions.values():
                for sched in defn.schedules:
                    if sched.enabled:
                        wanted[job_id(defn.name, sched.name)] = (defn, sched)
            for job in self.scheduler.get_jobs():
                if job.id.startswith(JOB_PREFIX) and job.id not in wanted:
                    job.remove()
            for jid, (defn, sched) in wanted.items():
                state = await self._state(defn.name, sched.name, now)
                self.scheduler.add_job(
                    self.fire,
                    trigger(sched.cron, sched.timezone),
                    args=[defn.name, sched.name],
                    id=jid,
                    name=f"{defn.name}: {sched.name} ({sched.cron} {sched.timezone})",
                    replace_existing=True,
                    coalesce=True,
                    max_instances=1,
                    misfire_grace_time=MISFIRE_GRACE_S,
                )
                if state.paused:
                    self.scheduler.pause_job(jid)
                else:
                    await self.catch_up(defn, sched, state, now)
            self._synced_catalog = catalog

    async def _state(self, workflow: str, name: str, now: datetime) -> ScheduleState:
        state = await ScheduleState.filter(workflow=workflow, name=name).first()
        if state is None:
            await ScheduleState.bulk_create(
                [ScheduleState(workflow=workflow, name=name, first_seen_at=now, updated_at=now)], ignore_conflicts=True
            )
            state = await ScheduleState.get(workflow=workflow, name=name)
        return state

    async def _since(self, defn: WorkflowDef, sched: ScheduleDef, state: ScheduleState) -> datetime:
        """Where fire times are due from: the last one recorded, or when the schedule appeared or resumed."""
        rows = await fetch(
            "SELECT max(fire_time) AS last FROM schedule_fires WHERE workflow = ? AND schedule = ?",
            (defn.name, sched.name),
        )
        since = max(_utc(state.first_seen_at), _utc(state.updated_at))
        if rows and rows[0]["last"] is not None:
            since = max(since, _utc(rows[0]["last"]))
        return since

    async def catch_up_all(self, now: datetime | None = None) -> None:
        """`catch_up` on every enabled, unpaused schedule (a process that just became the leader)."""
        async with self._lock:
            now = now or utcnow()
            for defn in self.workflows.catalog.definitions.values():
                for sched in defn.schedules:
                    if not sched.enabled:
                        continue
                    state = await self._state(defn.name, sched.name, now)
                    if not state.paused:
                        await self.catch_up(defn, sched, state, now)

    async def catch_up(self, defn: WorkflowDef, sched: ScheduleDef, state: ScheduleState, now: datetime) -> None:
        """Fire times since the last one recorded (or since the schedule appeared or resumed), up to now.

        Those from before this process started (less the misfire grace) were missed while no server
        ran: recorded as missed (`skip`), or the latest of them run (`once`). Of those since, the
        latest is started, as the job would have (a reload replaced the job before it could fire),
        the earlier ones recorded as missed.
        """
        if not self.is_leader():
            return  # the leader catches up (this process too, should it become the leader)
        t = trigger(sched.cron, sched.timezone)
        since = await self._since(defn, sched, state)
        latest = latest_fire_time(t, now, now - since) if now > since else None
        if latest is None or latest <= since:
            return
        # Fire times before this process started (less the grace APScheduler would have given them)
        # were due while no server ran; later ones, a reload replaced the job before it could fire.
        boundary = min(now, self.started_at - timedelta(seconds=MISFIRE_GRACE_S))
        down = list(fire_times(t, since, boundary))
        if len(down) >= MAX_SLOTS:  # a long downtime: list the newest day one by one, count the rest
            down = list(fire_times(t, max(since, boundary - timedelta(days=1)), boundary))
            summary = f"one of many fire times missed since {since.isoformat()} while no server was running"
        else:
            summary = None
        running = list(fire_times(t, max(since, boundary), now)) if now > boundary else []
        to_run = running[-1:]
        if sched.catch_up == "once" and down and not to_run:
            to_run = [down[-1]]
        late = running[:-1]  # a reload replaced the job while several fire times passed: recorded
        missed = [w for w in down if w not in to_run]
        if late:
            fires = [records.ScheduledFire(defn.name, sched.name, _utc(w)) for w in late]
            await records.record_fires(fires, "missed", "the server could not start it in time")
        if missed:
            fires = [records.ScheduledFire(defn.name, sched.name, _utc(w)) for w in missed]
            detail = summary or "no server was running at this time"
            await records.record_fires(fires, "missed", detail)
            log.warning("schedule %s/%s: %d fire time(s) missed while down", defn.name, sched.name, len(missed))
        for when in to_run:
            run_id = await operations.start_scheduled_run(defn, sched.name, when)
            if run_id is not None:
                log.info("schedule %s/%s: caught up on %s with run %s", defn.name, sched.name, when, run_id)

    async def fire(self, workflow: str, name: str, now: datetime | None = None) -> int | None:
        """The job: start the run of the latest fire time (at most once per fire time, across processes)."""
        if not self.is_leader():
            return None  # the leader fires it (one that takes over late catches up)
        now = now or utcnow()
        try:
            defn = self.workflows.get(workflow)
        except NotFound:
            return None
        sched = next((s for s in defn.schedules if s.name == name), None)
        if sched is None or not sched.enabled:
            return None
        state = await ScheduleState.filter(workflow=workflow, name=name).first()
        if state is not None and state.paused:
            return None  # paused from another process: this one's job has not heard yet
        t = trigger(sched.cron, sched.timezone)
        slot = latest_fire_time(t, now, timedelta(seconds=MISFIRE_GRACE_S + SYNC_INTERVAL_S))
        if slot is None:
            return None
        if state is not None:
            # Fire times APScheduler coalesced into this one (the loop was blocked, the machine asleep).
            skipped = [w for w in fire_times(t, await self._since(defn, sched, state), slot) if w < slot]
            if skipped:
                fires = [records.ScheduledFire(workflow, name, _utc(w)) for w in skipped]
                await records.record_fires(fires, "missed", "the server could not start it in time")
        run_id = await operations.start_scheduled_run(defn, name, slot)
        if run_id is not None:
            log.info("schedule %s/%s fired for %s: run %s", workflow, name, slot.isoformat(), run_id)
        else:  # another process's scheduler, or an earlier firing of this one, recorded it first
            log.info("schedule %s/%s fired for %s: already recorded, no new run", workflow, name, slot.isoformat())
        return run_id

    def _on_missed(self, event: JobExecutionEvent) -> None:
        if not event.job_id.startswith(JOB_PREFIX) or not self.is_leader():
            return
        workflow, _, name = event.job_id.removeprefix(JOB_PREFIX).partition(":")
        task = asyncio.get_running_loop().create_task(self._missed(workflow, name, _utc(event.scheduled_run_time)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _missed(self, workflow: str, name: str, scheduled: datetime) -> bool:
        """Record a fire time APScheduler could not run in time, and those it coalesced into it."""
        detail = f"the server could not start it within {MISFIRE_GRACE_S} s of its time"
        times = [scheduled]
        with contextlib.suppress(OperationError, StopIteration):
            defn, sched = self._find(workflow, name)
            state = await ScheduleState.filter(workflow=workflow, name=name).first()
            if state is not None:
                since = await self._since(defn, sched, state)
                times = [*fire_times(trigger(sched.cron, sched.timezone), since, scheduled), scheduled]
        fires = [records.ScheduledFire(workflow, name, _utc(w)) for w in dict.fromkeys(times)]
        await records.record_fires(fires, "missed", detail)
        return True

    # --- people's actions -------------------------------------------------------------------------

    async def set_paused(self, workflow: str, name: str, paused: bool, actor: str) -> None:
        defn, _ = self._find(workflow, name)
        now = utcnow()
        state = await self._state(defn.name, name, now)
        await ScheduleState.filter(id=state.id).update(
            paused=paused, paused_by=actor if paused else None, updated_at=now
        )
        jid = job_id(workflow, name)
        if self.scheduler.get_job(jid) is not None:
            if paused:
                self.scheduler.pause_job(jid)
            else:
                self.scheduler.resume_job(jid)

    async def run_now(self, workflow: str, name: str, actor: str) -> int:
        """A run with the schedule's inputs, now, outside its fire times (recorded as the person's)."""
        defn, sched = self._find(workflow, name)
        return await operations.start_run(defn, sched.inputs, actor)

    def _find(self, workflow: str, name: str) -> tuple[WorkflowDef, ScheduleDef]:
        defn = self.workflows.get(workflow)
        for sched in defn.schedules:
            if sched.name == name:
                return defn, sched
        raise NotFound(f"workflow {workflow!r} has no schedule {name!r}")

    async def overview(self) -> list[ScheduleView]:
        views = []
        for defn in sorted(self.workflows.definitions.values(), key=lambda d: d.name):
            for sched in defn.schedules:
                views.append(await self._view(defn, sched))
        return views

    async def _view(self, defn: WorkflowDef, sched: ScheduleDef) -> ScheduleView:
        state = await ScheduleState.filter(workflow=defn.name, name=sched.name).first()
        paused = bool(state and state.paused)
        job = self.scheduler.get_job(job_id(defn.name, sched.name)) if self.scheduler.running else None
        next_at = job.next_run_time if job is not None else None
        if next_at is None and sched.enabled and not paused:
            next_at = trigger(sched.cron, sched.timezone).get_next_fire_time(None, utcnow())
        last = await fetch(
            "SELECT f.fire_time, r.id, r.status FROM schedule_fires f JOIN runs r ON r.id = f.run_id"
            " WHERE f.workflow = ? AND f.schedule = ? ORDER BY f.fire_time DESC LIMIT 1",
            (defn.name, sched.name),
        )
        missed = await fetch(
            "SELECT count(*) AS n, max(fire_time) AS latest FROM schedule_fires"
            " WHERE workflow = ? AND schedule = ? AND outcome = 'missed'",
            (defn.name, sched.name),
        )
        return ScheduleView(
            workflow=defn.name,
            schedule=sched,
            paused=paused,
            paused_by=state.paused_by if state else None,
            next_fire_at=None if paused or not sched.enabled else next_at,
            last_run={"id": last[0]["id"], "status": last[0]["status"], "fire_time": _utc(last[0]["fire_time"])}
            if last
            else None,
            missed=int(missed[0]["n"]) if missed else 0,
            last_missed_at=_utc(missed[0]["latest"]) if missed and missed[0]["latest"] else None,
        )


def _utc(value: Any) -> datetime:
    from datetime import UTC

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
