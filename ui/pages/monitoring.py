"""The monitoring page (`/monitoring`): maintenance jobs, runs in each status, and LLM token usage.

Job state lives in memory on `Maintenance`; labels bind to it (NiceGUI's one binding loop carries
changes to every tab). Run counts are re-read when a run changes, at most once a second per tab.
The token report (`engine.monitoring`) is computed once per refresh, at most every few seconds per
tab, and every element of the panel draws from that one report.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from nicegui import background_tasks, events, ui

from engine.maintenance import JobState, Maintenance
from engine.monitoring import TokenReport, shared_token_report
from ui import run_list
from ui.components.columns import column
from ui.components.cost_view import COST_COLUMNS, cost_rows, cost_summary
from ui.components.notifications_view import notifications_section
from ui.components.token_charts import (
    distribution_options,
    set_options,
    step_id,
    step_row,
    summary,
    tokens_day_options,
    tokens_run_options,
    truncation_options,
)
from ui.live import LiveRuns
from ui.theme import dashboard_page, frame, status_color
from ui.throttle import Throttle

COUNTS_REFRESH_INTERVAL_S = 1.0
TOKENS_REFRESH_INTERVAL_S = 5.0
FIRST_PAINT_S = 1.0  # the page waits this long for the first token report; a bigger one fills in later
WINDOWS = {7: "7 days", 30: "30 days", 90: "90 days"}
MAX_NEAR_LIMIT = 20  # steps listed under "close to their limit" (the table has them all)
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
                    # Each count opens the runs list filtered to that status.
                    with ui.link(target=f"/?status={status}").classes("no-underline").mark(f"count-link-{status}"):
                        badge = self.badges[status] = ui.badge(color=status_color(status)).props("rounded")
                    badge.classes("text-sm px-3 py-1 cursor-pointer").mark(f"count-{status}")
                badge.text = f"{status}: {n}"


def register(maintenance: Maintenance, live: LiveRuns) -> None:
    @dashboard_page("/monitoring")
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
            tokens = TokenPanel()
            first = background_tasks.create(tokens.refresh(), name="monitoring tokens first refresh")
            await asyncio.wait([first], timeout=FIRST_PAINT_S)
            live.runs_changed.subscribe(lambda _run_id: tokens.throttle.trigger())
            await notifications_section(settings)


AS_PERCENT = {":format": "v => Math.round(v * 100) + ' %'"}  # a fraction shown as a whole percentage
STEP_COLUMNS: list[dict[str, Any]] = [
    column("workflow", "Workflow", sortable=True),
    column("step", "Step", sortable=True),
    column("rows", "Outputs", "right", sortable=True),
    column("limit", "Limit", "right", sortable=True),
    column("p95", "p95 tokens", "right", sortable=True),
    column("p95_fraction", "p95 of limit", "right", sortable=True, **AS_PERCENT),
    column("truncation_rate", "Truncated", "right", sortable=True, **AS_PERCENT),
    column("suggested", "Suggested limit", "right", **{":format": "v => v ?? '—'"}),
]  # fmt: skip
# Steps close to their limit are highlighted in the browser from a row field: the table stays one element.
STEP_ROW = """
<q-tr :props="props" :class="props.row.close ? 'bg-amber-2 text-black' : ''">
  <q-td v-for="col in props.cols" :key="col.name" :props="props">
    {{ col.value }}
    <q-badge v-if="col.name === 'step' && props.row.close" color="amber-9" label="close to limit" class="q-ml-sm" />
  </q-td>
</q-tr>"""


class TokenPanel:
    """One tab's token usage: a window, a table of steps, the steps near their limit, and four charts."""

    def __init__(self) -> None:
        self.days = 30
        self.report: TokenReport | None = None
        self._generation = 0  # of the latest refresh: an older one finishing late must not overwrite it
        with ui.row().classes("w-full items-center gap-4"):
            ui.toggle(WINDOWS, value=self.days, on_change=self.set_days).mark("token-window")
            ui.button("Refresh", icon="refresh", on_click=self.refresh).props("flat").mark("token-refresh")
        self.note = ui.label("Reading token usage…").classes("text-grey-7").mark("tokens-note")
        self.content = ui.column().classes("w-full gap-4")
        self.content.visible = False
        with self.content:
            self.summary = ui.label().classes("text-sm text-grey-8").mark("token-summary")
            self.table = ui.table(columns=STEP_COLUMNS, rows=[], row_key="id").classes("w-full")
            self.table.props("flat bordered dense").mark("token-table")
            self.table.add_slot("body", STEP_ROW)
            self.costs = ui.label().classes("text-sm text-grey-8").mark("token-costs")
            self.cost_table = ui.table(columns=COST_COLUMNS, rows=[], row_key="id").classes("w-full")
            self.cost_table.props("flat bordered dense").mark("cost-table")
            self.near = ui.column().classes("w-full gap-1").mark("near-limit")
            self.step = ui.select({}, label="Step", on_change=lambda _: self.draw_distribution())
            self.step.classes("w-96").mark("token-step")
            self.distribution = ui.echart(distribution_options(None)).classes("w-full h-72")
            self.distribution.mark("chart-distribution")
            with ui.grid(columns="repeat(auto-fit, minmax(420px, 1fr))").classes("w-full gap-4"):
                self.truncation = ui.echart({}).classes("w-full h-72").mark("chart-truncation")
                self.per_day = ui.echart({}).classes("w-full h-72").mark("chart-tokens-day")
                self.per_run = ui.echart({}, on_point_click=self.open_run).classes("w-full h-72")
                self.per_run.mark("chart-tokens-run")
        self.throttle = Throttle(self.refresh, TOKENS_REFRESH_INTERVAL_S, name="monitoring tokens refresh")

    async def set_days(self, e: events.ValueChangeEventArguments[Any]) -> None:
        self.days = int(e.value)
        await self.refresh()

    def open_run(self, e: events.EChartPointClickEventArguments) -> None:
        if self.report and 0 <= e.data_index < len(self.report.tokens_by_run):
            ui.navigate.to(f"/runs/{self.report.tokens_by_run[e.data_index].run_id}")

    async def refresh(self) -> None:
        if self.table.is_deleted:
            self.throttle.close()
            return
        self._generation += 1
        generation = self._generation
        report = await shared_token_report(self.days)
        if generation != self._generation or self.table.is_deleted:
            return
        self.report = report
        self.note.text = (
            f"{TOKENS_NOTE} No LLM step recorded token usage in the last {report.days} days: run a workflow "
            "with a `kind: llm` step (without a model endpoint configured, the built-in simulated provider answers)."
        )
        self.note.visible = report.empty
        self.content.visible = not report.empty
        if report.empty:
            return
        self.summary.text = summary(report)
        self.table.rows = [step_row(s) for s in report.steps]
        self.costs.text = cost_summary(report)
        self.cost_table.rows = cost_rows(report)
        self.draw_near_limit(report)
        options = {step_id(s): f"{step_id(s)}{'  (close to limit)' if s.close_to_limit else ''}" for s in report.steps}
        if self.step.value not in options:  # first time, or its step left the window: the first one near its limit
            self.step.value = None
        first = next((s for s in report.steps if s.close_to_limit), report.steps[0])
        self.step.set_options(options, value=self.step.value or step_id(first))
        self.draw_distribution()
        set_options(self.truncation, truncation_options(report))
        set_options(self.per_day, tokens_day_options(report))
        set_options(self.per_run, tokens_run_options(report))

    def draw_near_limit(self, report: TokenReport) -> None:
        near = [s for s in report.steps if s.close_to_limit]
        self.near.clear()
        with self.near:
            if not near:
                ui.label("No step runs close to its limit.").classes("text-sm text-grey-7")
            for s in near[:MAX_NEAR_LIMIT]:
                suggestion = f"suggested max_tokens: {s.suggested_limit}" if s.suggested_limit else "already raised"
                ui.label(
                    f"⚠ {s.workflow} · {s.step_key}: p95 uses {s.p95_fraction:.0%} of its {s.limit}-token limit, "
                    f"{s.truncated} of {s.rows} outputs truncated; {suggestion}."
                ).classes("text-sm").mark(f"near-limit-{s.workflow}-{s.step_key}")
            if len(near) > MAX_NEAR_LIMIT:
                ui.label(f"… and {len(near) - MAX_NEAR_LIMIT} more (see the table).").classes("text-sm text-grey-7")

    def draw_distribution(self) -> None:
        steps = {step_id(s): s for s in self.report.steps} if self.report else {}
        set_options(self.distribution, distribution_options(steps.get(self.step.value or "")))
