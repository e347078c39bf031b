"""The monitoring page (`/monitoring`): maintenance jobs and how many runs are in each status.

Job state lives in memory on `Maintenance`; labels bind to it (NiceGUI's one binding loop carries
changes to every tab). Run counts are re-read when a run changes, at most once a second per tab.
"""

from __future__ import annotations

from datetime import datetime

from nicegui import ui

from engine.scheduler import JobState, Maintenance
from ui import run_list
from ui.live import live
from ui.theme import frame, status_color
from ui.throttle import Throttle

COUNTS_REFRESH_INTERVAL_S = 1.0
TOKENS_NOTE = "Token usage charts appear once LLM steps run."


def format_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def job_card(maintenance: Maintenance, job_id: str, state: JobState) -> None:
    job = maintenance.scheduler.get_job(job_id)
    with ui.card().classes("w-full").mark(f"job-{job_id}"):
        with ui.row().classes("items-baseline gap-2"):
            ui.label(job.name if job else job_id).classes("text-subtitle1 font-medium")
            ui.label(job_id).classes("text-xs text-grey-7 font-mono")
        with ui.grid(columns="auto 1fr").classes("gap-x-6 gap-y-1 text-sm"):
            ui.label("Last run")
            ui.label().bind_text_from(state, "last_run_at", backward=format_time).mark(f"job-{job_id}-last-run")
            ui.label("Next run")
            # The scheduler computes the next run time before the job body starts, so it is current
            # whenever `last_run_at` changes.
            ui.label().bind_text_from(
                state, "last_run_at", backward=lambda _: format_time(maintenance.next_run_at(job_id))
            ).mark(f"job-{job_id}-next-run")
            ui.label("Runs")
            ui.label().bind_text_from(state, "runs", backward=str).mark(f"job-{job_id}-runs")
            ui.label("Last result")
            ui.label().bind_text_from(state, "last_result", backward=lambda v: v or "—").mark(f"job-{job_id}-result")
            ui.label("Last error")
            with ui.element("div"):
                ui.label().classes("text-negative").bind_text_from(state, "last_error").bind_visibility_from(
                    state, "last_error", backward=bool
                ).mark(f"job-{job_id}-error")
                ui.label("none").classes("text-grey-7").bind_visibility_from(
                    state, "last_error", backward=lambda v: not v
                )


class StatusCounts:
    """Badges with the number of runs in each status, re-read when a run changes."""

    def __init__(self) -> None:
        self.row = ui.row().classes("gap-2").mark("status-counts")
        self.badges: dict[str, ui.badge] = {}
        self.throttle = Throttle(self.refresh, COUNTS_REFRESH_INTERVAL_S, name="monitoring counts refresh")

    async def refresh(self) -> None:
        if self.row.is_deleted:
            self.throttle.close()
            return
        counts = await run_list.status_counts()
        if self.row.is_deleted:  # the tab closed while reading
            return
        with self.row:
            for status, n in counts.items():
                badge = self.badges.get(status)
                if badge is None:
                    badge = self.badges[status] = ui.badge(color=status_color(status)).props("rounded")
                    badge.classes("text-sm px-3 py-1").mark(f"count-{status}")
                badge.text = f"{status}: {n}"


def register(maintenance: Maintenance) -> None:
    @ui.page("/monitoring")
    async def monitoring_page() -> None:
        with frame("Monitoring"):
            ui.label("Maintenance jobs").classes("text-h6")
            settings = maintenance.settings
            ui.label(
                f"The sweep runs every {settings.sweep_interval_s:g} s and fails runs whose engine has not "
                f"sent a heartbeat for {settings.stale_after_s:g} s."
            ).classes("text-sm text-grey-7")
            for job_id, state in maintenance.jobs.items():
                job_card(maintenance, job_id, state)
            ui.label("Runs by status").classes("text-h6")
            counts = StatusCounts()
            await counts.refresh()
            live.runs_changed.subscribe(lambda _run_id: counts.throttle.trigger())
            ui.label("LLM token usage").classes("text-h6")
            ui.label(TOKENS_NOTE).classes("text-grey-7").mark("tokens-note")
