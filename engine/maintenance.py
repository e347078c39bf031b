"""Jobs on APScheduler: the orphan sweep (every `sweep_interval_s`) and, when a retention is set,
the prune of old finished runs (hourly), both also once at startup; and the workflows' cron
schedules (`engine/schedules.py`).

Several processes may each run this scheduler. Where they share a database (PostgreSQL) only the
leader (`engine/leader.py`) runs the sweep, the prune and the cron schedules; the others stand by and
take over when its lease runs out. Either way the jobs are idempotent (guarded transitions, unique fire
times). Job state is kept for the Monitoring page.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from engine import logs, orphans
from engine.leader import Leadership
from engine.records import utcnow
from engine.registry import Registry
from engine.schedules import Schedules
from engine.settings import Settings

log = logs.logger(__name__)

SWEEP_JOB_ID = "stepdeck-sweep"
PRUNE_JOB_ID = "stepdeck-prune"
LEADER_JOB_ID = "stepdeck-leader"
CATCH_UP_JOB_ID = "stepdeck-catch-up"
PRUNE_INTERVAL_S = 3600.0


@dataclass
class JobState:
    last_run_at: datetime | None = None
    last_result: str | None = None
    last_error: str | None = None
    runs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Maintenance:
    """Owns the scheduler and the state of its jobs."""

    def __init__(self, settings: Settings, owner: str, workflows: Registry) -> None:
        self.settings = settings
        self.owner = owner
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self.leadership = Leadership(settings, owner)
        self.schedules = Schedules(self.scheduler, workflows, self.leadership.is_leader)
        self.jobs: dict[str, JobState] = {SWEEP_JOB_ID: JobState()}
        if settings.retention_days > 0:
            self.jobs[PRUNE_JOB_ID] = JobState()

    def start(self) -> None:
        """Schedule the jobs and start; call from a sync startup handler (inside the running loop)."""
        if self.leadership.shared:
            every_s = self.settings.heartbeat_interval_s
            self._add(
                LEADER_JOB_ID, "hold or take the leader's lease", every_s, self.lead, grace_s=max(1, int(every_s))
            )
        self._add(SWEEP_JOB_ID, "fail orphaned runs", self.settings.sweep_interval_s, self.sweep)
        if PRUNE_JOB_ID in self.jobs:
            name = f"delete finished runs older than {self.settings.retention_days:g} days"
            self._add(PRUNE_JOB_ID, name, PRUNE_INTERVAL_S, self.prune)
        self.schedules.start()
        self.scheduler.start()

    def _add(
        self, job_id: str, name: str, every_s: float, job: Callable[[], Awaitable[None]], grace_s: int = 30
    ) -> None:
        self.scheduler.add_job(
            job,
            "interval",
            seconds=every_s,
            id=job_id,
            name=name,
            replace_existing=True,
            next_run_time=datetime.now(UTC),
            coalesce=True,
            max_instances=1,
            misfire_grace_time=grace_s,
        )

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def next_run_at(self, job_id: str) -> datetime | None:
        job = self.scheduler.get_job(job_id)
        return job.next_run_time if job else None

    async def lead(self) -> None:
        """Hold the leader's lease; on taking it, catch up on the schedules and sweep at once."""
        try:
            gained = await self.leadership.renew()
        except asyncio.CancelledError:
            return  # the scheduler shuts down: the lease runs out, or was handed over by `stop_leading`
        except Exception:
            log.exception("could not renew the leader's lease; retrying")
            return
        if gained:  # as jobs of their own: the lease is renewed meanwhile
            catch_up = self.schedules.catch_up_all
            # However late it gets to run (a busy machine): a fire time is caught up, never dropped.
            self.scheduler.add_job(catch_up, id=CATCH_UP_JOB_ID, replace_existing=True, misfire_grace_time=None)
            self.scheduler.modify_job(SWEEP_JOB_ID, next_run_time=datetime.now(UTC))

    async def stop_leading(self) -> None:
        """Hand the leader's lease over (a clean stop): another process takes it at its next heartbeat."""
        try:
            await self.leadership.release()
        except Exception:
            log.exception("could not release the leader's lease; it runs out by itself")

    async def _record(self, job_id: str, work: Callable[[], Awaitable[str]]) -> None:
        state = self.jobs[job_id]
        if not self.leadership.is_leader():
            state.last_result = "left to the leader (another process)"
            return
        state.last_run_at, state.runs = utcnow(), state.runs + 1
        try:
            result = await work()
        except asyncio.CancelledError:  # the process stops mid-job: not the job's failure, and nothing to log
            state.last_result = "stopped with the process"
            return
        except Exception as exc:
            state.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("maintenance job %s failed", job_id)
            return
        state.last_error = None
        state.last_result = result

    async def sweep(self) -> None:
        async def work() -> str:
            handled = await orphans.recover_orphans(self.settings, self.owner)
            requeued = sum(1 for v in handled if v.action == "requeue")
            return f"{len(handled) - requeued} orphaned run(s) failed, {requeued} re-queued"

        await self._record(SWEEP_JOB_ID, work)

    async def prune(self) -> None:
        async def work() -> str:
            deleted = await orphans.prune_finished(self.settings.retention_days)
            return f"{deleted} finished run(s) deleted"

        await self._record(PRUNE_JOB_ID, work)
