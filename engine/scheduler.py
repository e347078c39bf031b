"""Maintenance jobs on APScheduler: the orphan sweep, every `sweep_interval_s` and once at startup.

Several processes may each run this scheduler: the sweep is idempotent (guarded transitions), so
running it twice fails a dead run once. Job state is kept for the Monitoring page.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from engine import maintenance
from engine.settings import Settings
from engine.transitions import utcnow

log = logging.getLogger(__name__)

SWEEP_JOB_ID = "stepdeck-sweep"


@dataclass
class JobState:
    last_run_at: datetime | None = None
    last_result: str | None = None
    last_error: str | None = None
    runs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Maintenance:
    """Owns the scheduler and the state of its jobs."""

    def __init__(self, settings: Settings, owner: str) -> None:
        self.settings = settings
        self.owner = owner
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self.jobs: dict[str, JobState] = {SWEEP_JOB_ID: JobState()}

    def start(self) -> None:
        """Schedule the jobs and start; call from a sync startup handler (inside the running loop)."""
        self.scheduler.add_job(
            self.sweep,
            "interval",
            seconds=self.settings.sweep_interval_s,
            id=SWEEP_JOB_ID,
            name="fail orphaned runs",
            replace_existing=True,
            next_run_time=utcnow(),
            coalesce=True,
            max_instances=1,
            misfire_grace_time=30,
        )
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def next_run_at(self, job_id: str) -> datetime | None:
        job = self.scheduler.get_job(job_id)
        return job.next_run_time if job else None

    async def sweep(self) -> None:
        state = self.jobs[SWEEP_JOB_ID]
        state.last_run_at, state.runs = utcnow(), state.runs + 1
        try:
            failed = await maintenance.recover_orphans(self.settings, self.owner)
        except Exception as exc:
            state.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("orphan sweep failed")
            return
        state.last_error = None
        state.last_result = f"{len(failed)} orphaned run(s) failed"
