"""The runs page (`/`): every run, filtered and paginated on the server, kept live by the hub.

The table holds one page of rows. A run change (from `live.runs_changed`) re-reads that page,
at most twice a second per tab; nothing polls the database.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from nicegui import events, ui

from engine.db import now as db_now
from engine.registry import Registry
from models.status import RunStatus, StepStatus
from ui import run_list, security
from ui.components.columns import column
from ui.components.run_form import open_run_dialog
from ui.format import ago, format_duration
from ui.live import LiveRuns
from ui.run_list import RunFilter, RunRow
from ui.theme import STATUS_COLORS, dashboard_page, frame, status_color
from ui.throttle import Throttle

ROWS_PER_PAGE = 25
REFRESH_INTERVAL_S = 0.5

# Columns a phone has no room for are hidden below 600 px (Quasar's `gt-xs`).
WIDE_ONLY = {"classes": "gt-xs", "headerClasses": "gt-xs"}
COLUMNS: list[dict[str, Any]] = [
    column("id", "Run"),
    column("workflow", "Workflow"),
    column("status", "Status"),
    column("progress", "Progress"),
    column("inputs", "Inputs", **WIDE_ONLY),
    column("actor", "Started by", **WIDE_ONLY),
    column("started", "Started", **WIDE_ONLY),
    column("duration", "Duration", "right", **WIDE_ONLY),
]

# Slots render in the browser from row fields: a page of 100 rows stays one element, not hundreds.
RUN_CELL = """
<q-td :props="props">
  <a :href="'/runs/' + props.row.id" class="text-primary font-medium no-underline">#{{ props.row.id }}</a>
</q-td>"""
STATUS_CELL = f"""
<q-td :props="props">
  <q-badge :color="props.row.color" :label="props.row.status" rounded />
  <q-badge v-if="props.row.stale" color="{STATUS_COLORS["stale"]}" outline class="q-ml-xs"
           :label="props.row.stale + ' stale'" :title="props.row.stale + ' step(s) older than their inputs'" />
  <q-badge v-if="props.row.cut_off" color="{STATUS_COLORS["truncated"]}" outline class="q-ml-xs"
           :label="'✂ ' + props.row.cut_off + ' cut off'" title="output cut off at the token limit" />
</q-td>"""
PROGRESS_CELL = f"""
<q-td :props="props">
  {{{{ props.row.done }}}}/{{{{ props.row.total }}}}<span class="gt-xs"> steps</span>
  <q-badge v-if="props.row.choice" color="{STATUS_COLORS[StepStatus.WAITING]}" label="choice needed" outline
           class="q-ml-sm" />
</q-td>"""
# The time relative to now (from the server) with the absolute time in the viewer's zone on hover.
STARTED_CELL = """
<q-td :props="props">
  <span :title="props.row.started_at ? new Date(props.row.started_at).toLocaleString() : ''">
    {{ props.row.started }}
  </span>
</q-td>"""
INPUTS_CELL = """
<q-td :props="props" class="ellipsis" style="max-width: 16rem" :title="props.row.inputs">
  {{ props.row.inputs }}
</q-td>"""
# A click anywhere on a row opens the run (links and badges inside keep their own behaviour).
ROW_CLICK = "(evt, row) => { if (!evt.target.closest('a')) window.location.href = '/runs/' + row.id; }"
INPUTS_CHARS = 80


def inputs_text(inputs: dict[str, Any] | None) -> str:
    """The run's inputs on one line: `topic=Bees · words=300`, cut to a table cell."""
    parts = []
    for key, value in (inputs or {}).items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        parts.append(f"{key}={shown}")
    text = " · ".join(parts)
    return text if len(text) <= INPUTS_CHARS else text[: INPUTS_CHARS - 1] + "…"


def table_row(run: RunRow, now: datetime) -> dict[str, Any]:
    return {
        "id": run.id,
        "workflow": run.workflow,
        "status": run.status,
        "color": status_color(run.status),
        "progress": f"{run.completed}/{run.total} steps",
        "done": run.completed,
        "total": run.total,
        "choice": run.waiting > 0,
        "stale": run.stale,
        "cut_off": run.cut_off,
        "inputs": inputs_text(run.inputs),
        "actor": run.actor,
        "started": ago(run.started_at, now),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "duration": format_duration(run.duration_s(now)),
    }


class RunsTable:
    """One tab's runs table: its filter, its page, and the re-read that keeps them current."""

    def __init__(self, workflows: Registry, initial: RunFilter | None = None) -> None:
        self.workflows = workflows  # the app's definitions: inputs in their declared order
        self.filter = initial or RunFilter()
        self.page = 1
        self.rows_per_page = ROWS_PER_PAGE
        self.total = 0
        self.visible_ids: set[int] = set()
        self._generation = 0  # of the latest refresh: an older one finishing late must not overwrite it
        self.table = (
            ui.table(
                columns=COLUMNS,
                rows=[],
                row_key="id",
                pagination={"page": 1, "rowsPerPage": ROWS_PER_PAGE, "rowsNumber": 0},
            )
            .classes("w-full")
            .props(':rows-per-page-options=[10,25,50,100] flat bordered :dense="$q.screen.lt.sm"')
            .classes("runs-table")
            .mark("runs-table")
        )
        self.table.on("rowClick", js_handler=ROW_CLICK)
        self.table.add_slot("body-cell-id", RUN_CELL)
        self.table.add_slot("body-cell-status", STATUS_CELL)
        self.table.add_slot("body-cell-progress", PROGRESS_CELL)
        self.table.add_slot("body-cell-started", STARTED_CELL)
        self.table.add_slot("body-cell-inputs", INPUTS_CELL)
        self.table.on("request", self.on_request)
        self.empty = ui.label().classes("text-grey-7 self-center").mark("runs-empty")
        self.throttle = Throttle(self.refresh, REFRESH_INTERVAL_S, name="runs page refresh")

    async def on_request(self, e: events.GenericEventArguments) -> None:
        """Quasar asks for another page (or page size): read exactly that page."""
        pagination = e.args.get("pagination", {})
        self.page = max(1, int(pagination.get("page") or 1))
        self.rows_per_page = max(1, min(int(pagination.get("rowsPerPage") or ROWS_PER_PAGE), 100))
        await self.refresh()

    async def set_filter(self, **changes: Any) -> None:
        self.filter = replace(self.filter, **changes)
        self.page = 1
        ui.navigate.history.replace(filter_url(self.filter))  # Back and reload keep the filters
        await self.refresh()

    def affects(self, run_id: int) -> bool:
        """Could a change of this run alter what this tab shows? (Most changes on a busy server do not.)"""
        if self.filter.status or run_id in self.visible_ids:
            return True
        # A new run moves every later page by one row and changes the total.
        return not self.visible_ids or run_id > max(self.visible_ids)

    def on_run_changed(self, run_id: int) -> None:
        if self.affects(run_id):
            self.throttle.trigger()

    async def refresh(self) -> None:
        if self.table.is_deleted:
            self.throttle.close()
            return
        self._generation += 1
        generation, f, page, per_page = self._generation, self.filter, self.page, self.rows_per_page
        total = await run_list.count_runs(f)
        page = min(page, max(1, -(-total // per_page)))  # runs matching the filter may have gone
        rows = await run_list.page_runs(f, page=page, rows_per_page=per_page, workflows=self.workflows)
        if generation != self._generation or self.table.is_deleted:
            return
        self.page = page
        now = db_now()  # the clock the run times were written with
        self.total = total
        self.visible_ids = {r.id for r in rows}
        self.table.rows = [table_row(r, now) for r in rows]
        self.table.pagination = {"page": page, "rowsPerPage": per_page, "rowsNumber": total}
        if total > run_list.SEARCH_COUNT_CAP and f.search.strip():
            self.empty.text = f"More than {run_list.SEARCH_COUNT_CAP:,} runs match; narrow the search to see them all."
        elif total:
            self.empty.text = ""
        elif f.active:
            self.empty.text = "No runs match these filters."
        else:
            self.empty.text = "No runs yet. Start one with “New run”, or from the Workflows page."
        self.empty.set_visibility(total == 0)
        self.table.set_visibility(total > 0)


def new_run_button(workflows: Registry) -> None:
    names = sorted(workflows.definitions)
    with ui.button("New run", icon="add").mark("new-run") as button:
        if not security.may_act():
            button.disable()
            button.tooltip("Viewers cannot start runs")
            return
        if not names:
            button.disable()
            button.tooltip("No workflow definitions loaded: see the Workflows page")
        with ui.menu().mark("new-run-menu"):
            for name in names:
                ui.menu_item(name, on_click=lambda n=name: open_run_dialog(workflows.get(n))).mark(f"new-run-{name}")


def filter_url(f: RunFilter) -> str:
    query = {k: v for k, v in (("status", f.status), ("workflow", f.workflow), ("q", f.search.strip())) if v}
    return "/?" + urlencode(query) if query else "/"


def register(live: LiveRuns, workflows: Registry) -> None:
    ui.add_css(".runs-table tbody tr { cursor: pointer; }", shared=True)

    @dashboard_page("/")
    async def runs_page(status: str = "", workflow: str = "", q: str = "") -> None:
        initial = RunFilter(
            status=status if status in {s.value for s in RunStatus} else None,
            workflow=workflow or None,
            search=q[:200],
        )
        with frame("Runs"):
            known = sorted(set(workflows.definitions) | set(await run_list.workflow_names()))
            if initial.workflow and initial.workflow not in known:
                known.append(initial.workflow)
            with ui.row().classes("w-full items-end gap-4"):
                new_run_button(workflows)
                status_select = ui.select(
                    [s.value for s in RunStatus], label="Status", clearable=True, value=initial.status
                )
                status_select.classes("w-40").mark("filter-status")
                workflow_select = ui.select(known, label="Workflow", clearable=True, value=initial.workflow)
                workflow_select.classes("w-56").mark("filter-workflow")
                search = ui.input("Search", placeholder="#id, workflow or input text", value=initial.search)
                search.props("clearable debounce=300").classes("w-72").mark("filter-search")
            runs = RunsTable(workflows, initial)
            status_select.on_value_change(lambda e: runs.set_filter(status=e.value or None))
            workflow_select.on_value_change(lambda e: runs.set_filter(workflow=e.value or None))
            search.on_value_change(lambda e: runs.set_filter(search=e.value or ""))
            await runs.refresh()
            # Subscribed inside the page: NiceGUI drops the subscription when the tab closes.
            live.runs_changed.subscribe(runs.on_run_changed)
            ui.timer(30, runs.throttle.trigger)  # "3 min ago" stays true
