"""The workflows page (`/workflows`): every loaded definition, and the files that failed to load.

A broken definition file is shown with its full location (file, line, step, field) instead of
taking the app down; "Reload definitions" re-reads the directory without a restart.
"""

from __future__ import annotations

from typing import Any

from nicegui import app, background_tasks, run, ui

from engine.definitions import DefinitionError, StepDef, WorkflowDef
from engine.errors import OperationError
from engine.llm.model_check import model_warnings
from engine.llm.providers import Providers
from engine.registry import Registry
from engine.schedules import Schedules
from ui import security
from ui.components.columns import column
from ui.components.dag import dag_or_opener
from ui.components.run_form import open_run_dialog
from ui.components.schedules_view import SchedulesView
from ui.theme import dashboard_page, frame

INPUT_COLUMNS = [
    column("name", "Input"),
    column("type", "Type"),
    column("required", "Required"),
    column("default", "Default"),
    column("description", "Description"),
]
STEP_COLUMNS = [
    column("key", "Key"),
    column("label", "Label"),
    column("kind", "Kind"),
    column("needs", "Needs"),
    column("alternatives", "Alternatives", "right"),
    column("select", "Select"),
    column("runs", "Runs"),
]


def input_rows(defn: WorkflowDef) -> list[dict[str, Any]]:
    # Table cells must not hold lists (the browser would choke): everything is text.
    return [
        {
            "name": i.name,
            "type": f"choice ({', '.join(i.options)})" if i.type == "choice" else i.type,
            "required": "yes" if i.required else "no",
            "default": "" if i.default is None else str(i.default),
            "description": i.description,
        }
        for i in defn.inputs
    ]


def step_rows(defn: WorkflowDef) -> list[dict[str, Any]]:
    return [
        {
            "key": s.key,
            "label": s.label,
            "kind": s.kind,
            "needs": ", ".join(s.needs) or "—",
            "alternatives": s.alternatives,
            "select": s.select,
            "runs": _what_runs(s),
        }
        for s in defn.steps
    ]


def _what_runs(step: StepDef) -> str:
    if step.kind != "llm":
        return step.call or ""
    model = step.config.get("model") or "default model"
    limit = f"max_tokens {step.config['max_tokens']:,}" if step.config.get("max_tokens") else "default max_tokens"
    return f"{model} · {limit} · on truncation: {step.config.get('on_truncation', 'warn')}"


def prompts(defn: WorkflowDef) -> None:
    llm_steps = [s for s in defn.steps if s.kind == "llm"]
    if not llm_steps:
        return
    with ui.expansion("Prompts", icon="chat").classes("w-full").mark(f"prompts-{defn.name}"):
        for s in llm_steps:
            ui.label(s.label).classes("font-medium")
            if s.config.get("system"):
                ui.code(s.config["system"], language="jinja").classes("w-full text-xs")
            ui.code(s.config["prompt"], language="jinja").classes("w-full text-xs")


def definition_card(defn: WorkflowDef) -> None:
    # Its id is the link target of runs of this workflow (/workflows#workflow-NAME).
    with ui.card().classes("w-full scroll-mt-16").props(f'id="workflow-{defn.name}"').mark(f"workflow-{defn.name}"):
        with ui.row().classes("w-full items-center"):
            ui.label(defn.name).classes("text-h6")
            ui.space()
            start = ui.button("Start run", icon="play_arrow", on_click=lambda: open_run_dialog(defn))
            start.mark(f"start-{defn.name}").set_enabled(security.may_act())
        if defn.description:
            ui.label(defn.description)
        ui.label(f"Source: {defn.source}").classes("text-xs text-grey-7 font-mono")
        if defn.inputs:
            ui.table(columns=INPUT_COLUMNS, rows=input_rows(defn), row_key="name").props("flat dense").classes(
                "w-full"
            ).mark(f"inputs-{defn.name}")
        else:
            ui.label("No inputs.").classes("text-grey-7")
        with ui.row().classes("w-full gap-4 items-start"):
            ui.table(columns=STEP_COLUMNS, rows=step_rows(defn), row_key="key").props("flat dense").classes(
                "flex-1 min-w-[20rem]"
            ).mark(f"steps-{defn.name}")
            with ui.column().classes("flex-1 min-w-[16rem]"):
                dag_or_opener(defn)
        prompts(defn)


def error_card(error: DefinitionError) -> None:
    with ui.card().classes("w-full bg-red-1 border border-red-6").mark("definition-error"):
        with ui.row().classes("items-center gap-2"):
            ui.icon("error", color="negative")
            ui.label("Definition file not loaded").classes("text-negative font-bold")
        ui.label(str(error)).classes("font-mono text-sm whitespace-pre-wrap break-all")
        where = {"File": error.source, "Line": error.line, "Step": error.step, "Field": error.field}
        with ui.row().classes("gap-4 text-xs text-grey-8"):
            for name, value in where.items():
                if value is not None:
                    ui.label(f"{name}: {value}")


def catalog_view(workflows: Registry) -> None:
    for error in workflows.errors:
        error_card(error)
    if not workflows.definitions:
        ui.label(f"No workflow definitions loaded from {workflows.directory}.").classes("text-grey-7")
    for name in sorted(workflows.definitions):
        definition_card(workflows.definitions[name])


async def reload_definitions(
    workflows: Registry, view: ui.refreshable[[Registry], None], schedules: SchedulesView
) -> None:
    try:
        await security.acting()  # reloading imports step modules and may start scheduled runs
    except OperationError as exc:
        ui.notify(str(exc), type="warning")
        return
    try:
        # Reading files and importing step modules is blocking work: off the event loop.
        catalog = await run.io_bound(workflows.reload)
    except Exception as exc:
        ui.notify(f"Reload failed: {exc}", type="negative")
        return
    if catalog is None:  # the server is shutting down
        return
    view.refresh()
    await schedules.schedules.sync()  # jobs follow the definitions now, not at the next check
    await schedules.refresh()
    broken = f", {len(catalog.errors)} file(s) with errors" if catalog.errors else ""
    ui.notify(f"{len(catalog.definitions)} definition(s) loaded{broken}", type="warning" if broken else "positive")


async def show_model_warnings(box: ui.column, workflows: Registry, clients: Providers) -> None:
    """Warn about models the definitions name that the endpoint does not list (never blocks anything)."""
    settings = getattr(app.state, "settings", None)
    if settings is None:
        return
    found = await model_warnings(settings, list(workflows.definitions.values()), clients)
    if box.is_deleted:
        return
    with box:
        for workflow, lines in sorted(found.items()):
            for line in lines:
                with ui.row().classes("items-center gap-2 p-2 rounded bg-amber-1 w-full"):
                    ui.icon("warning", color="amber-9")
                    ui.label(f"{workflow}: {line}").classes("text-sm").mark(f"model-warning-{workflow}")


def register(workflows: Registry, schedules: Schedules, clients: Providers) -> None:
    @dashboard_page("/workflows")
    async def workflows_page() -> None:
        with frame("Workflows"):
            view = ui.refreshable(catalog_view)  # per tab: a reload re-renders the tab that asked for it
            with ui.row().classes("w-full items-center"):
                ui.label(f"Definitions from {workflows.directory}").classes("text-grey-7")
                ui.space()
                reload = ui.button("Reload definitions", icon="refresh").props("outline").mark("reload-definitions")
                reload.set_enabled(security.may_act())
            schedules_view = SchedulesView(schedules)
            await schedules_view.refresh()
            reload.on_click(lambda: reload_definitions(workflows, view, schedules_view))
            ui.label("Definitions").classes("text-h6")
            model_notes = ui.column().classes("w-full gap-1").mark("model-warnings")
            view(workflows)
            # The endpoint may take seconds to answer GET /v1/models: the page does not wait for it.
            background_tasks.create(show_model_warnings(model_notes, workflows, clients), name="workflows model check")
