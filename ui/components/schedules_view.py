"""The Schedules section of the Workflows page: next fire time, last run, missed fire times, pause and
resume, run now. Re-read after each action, after a reload, and every few seconds."""

from __future__ import annotations

from datetime import datetime

from nicegui import ui

from engine.errors import OperationError
from engine.schedules import Schedules, ScheduleView
from ui import security
from ui.theme import status_badge

REFRESH_INTERVAL_S = 10.0


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M %Z") if value else "—"


class SchedulesView:
    def __init__(self, schedules: Schedules) -> None:
        self.schedules = schedules
        ui.label("Schedules").classes("text-h6")
        self.box = ui.column().classes("w-full gap-2").mark("schedules")
        ui.timer(REFRESH_INTERVAL_S, self.refresh)

    async def refresh(self) -> None:
        views = await self.schedules.overview()
        if self.box.is_deleted:
            return
        self.box.clear()
        with self.box:
            if not views:
                ui.label("No workflow declares a schedule (a `schedules:` list with cron expressions).").classes(
                    "text-grey-7"
                ).mark("no-schedules")
            for view in views:
                self._row(view)

    def _row(self, view: ScheduleView) -> None:
        s = view.schedule
        mark = f"schedule-{view.workflow}-{s.name}"
        with ui.card().classes("w-full").mark(mark), ui.row().classes("w-full items-center gap-4"):
            with ui.column().classes("gap-0"):
                ui.label(f"{view.workflow} · {s.name}").classes("font-medium")
                ui.label(f"{s.cron} ({s.timezone}) · catch up: {s.catch_up}").classes("text-xs text-grey-7 font-mono")
            state = "disabled" if not s.enabled else "paused" if view.paused else "active"
            ui.badge(state, color={"active": "green-6", "paused": "amber-8"}.get(state, "grey-6")).mark(f"{mark}-state")
            ui.label(f"next: {_when(view.next_fire_at)}").classes("text-sm").mark(f"{mark}-next")
            with ui.row().classes("items-center gap-1").mark(f"{mark}-last"):
                if view.last_run:
                    ui.label("last run:").classes("text-sm")
                    ui.link(f"#{view.last_run['id']}", f"/runs/{view.last_run['id']}")
                    status_badge(view.last_run["status"])
                    ui.label(f"for {_when(view.last_run['fire_time'])}").classes("text-xs text-grey-7")
                else:
                    ui.label("no run yet").classes("text-sm text-grey-7")
            if view.missed:
                ui.label(f"missed: {view.missed} (latest {_when(view.last_missed_at)})").classes(
                    "text-sm text-orange-9"
                ).mark(f"{mark}-missed")
            ui.space()
            if security.may_act() and s.enabled:
                if view.paused:
                    ui.button("Resume", icon="play_arrow", on_click=lambda v=view: self.pause(v, False)).props(
                        "flat dense no-caps"
                    ).mark(f"{mark}-resume")
                else:
                    ui.button("Pause", icon="pause", on_click=lambda v=view: self.pause(v, True)).props(
                        "flat dense no-caps"
                    ).mark(f"{mark}-pause")
                ui.button("Run now", icon="play_circle", on_click=lambda v=view: self.run_now(v)).props(
                    "flat dense no-caps"
                ).mark(f"{mark}-run-now")

    async def pause(self, view: ScheduleView, paused: bool) -> None:
        try:
            await self.schedules.set_paused(view.workflow, view.schedule.name, paused, await security.acting())
        except OperationError as exc:
            ui.notify(str(exc), type="warning")
            return
        ui.notify(f"{view.schedule.name} {'paused' if paused else 'resumed'}", type="positive")
        await self.refresh()

    async def run_now(self, view: ScheduleView) -> None:
        try:
            run_id = await self.schedules.run_now(view.workflow, view.schedule.name, await security.acting())
        except OperationError as exc:
            ui.notify(str(exc), type="warning")
            return
        ui.navigate.to(f"/runs/{run_id}")
