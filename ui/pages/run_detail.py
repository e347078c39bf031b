"""The run page (`/runs/{id}`): header with actions, the sticky step navigator, a card per step,
and the run's timeline. Everything acts through engine operations; nothing here writes a status."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any

from nicegui import ui

from engine import operations, queries
from engine.errors import NotFound, StepdeckError
from engine.registry import workflows
from ui import security
from ui.components.step_card import StepCard
from ui.components.step_nav import StepNav
from ui.live import RunState, live
from ui.theme import frame


async def _act(what: Callable[[str], Awaitable[Any]], done: str) -> bool:
    """Run an operation as the signed-in person; show a refusal (a viewer, a conflict, bad input) as a
    notification, never a crash."""
    try:
        await what(await security.acting())
    except StepdeckError as exc:
        ui.notify(str(exc), type="warning", multi_line=True)
        return False
    ui.notify(done, type="positive")
    return True


async def _confirm(title: str, lines: list[tuple[str, list[str]]], ok: str) -> bool:
    with ui.dialog() as dialog, ui.card().classes("min-w-96").mark("confirm-dialog"):
        ui.label(title).classes("text-h6")
        for heading, items in lines:
            if items:
                ui.label(heading).classes("font-medium mt-2")
                ui.label(", ".join(items)).classes("text-sm")
        with ui.row().classes("w-full justify-end"):
            ui.button("Cancel", on_click=lambda: dialog.submit(False)).props("flat no-caps")
            ui.button(ok, on_click=lambda: dialog.submit(True)).props("no-caps").mark("confirm-ok")
    result = await dialog
    dialog.delete()
    return bool(result)


class RunPage:
    def __init__(self, state: RunState) -> None:
        self.state = state
        self.run_id = state.view.id
        self.cards: dict[str, StepCard] = {}

    def build(self) -> None:
        self._header()
        StepNav(self.state, self.jump, self.expand_all, self.collapse_all)
        with ui.column().classes("w-full gap-2").mark("step-cards"):
            for key in self.state.order:
                self.cards[key] = StepCard(self.state, key, select=self.select, rerun=self.rerun)
        # What needs a person is open from the start: a choice to make, a failure to look at.
        for key in self.state.order:
            if self.state.steps[key].status in ("waiting", "failed"):
                self.cards[key].open()
        self._timeline()
        live.step_changed.subscribe(self._step_changed)
        live.run_event.subscribe(self._run_event)
        ui.timer(1.0, self._tick)  # durations of running steps tick; the database is not read

    # --- header ---------------------------------------------------------------------------------

    def _header(self) -> None:
        v, detail = self.state.view, self.state.detail
        with ui.card().classes("w-full").mark("run-header"):
            with ui.row().classes("w-full items-center gap-3"):
                ui.label(f"Run {v.id}").classes("text-h5")
                ui.link(v.workflow, "/workflows").classes("text-lg")
                ui.badge().bind_text_from(v, "status").bind_background_color_from(v, "color").mark("run-status")
                ui.space()
                if security.may_act():
                    self._actions()
            ui.linear_progress(show_value=False).bind_value_from(v, "fraction").classes("w-full")
            with ui.row().classes("w-full gap-4 text-sm text-grey-8"):
                ui.label().bind_text_from(v, "counts_text").mark("run-counts")
                ui.label(f"started by {detail['actor']}")
                ui.label().bind_text_from(
                    v,
                    "started_at",
                    backward=lambda s: f"started {s[:19].replace('T', ' ')} UTC" if s else "not started",
                )
                ui.label().bind_text_from(
                    v, "finished_at", backward=lambda s: f"finished {s[:19].replace('T', ' ')} UTC" if s else ""
                )
            with (
                ui.row()
                .classes("items-center gap-2 p-2 rounded bg-amber-1 w-full")
                .bind_visibility_from(v, "needs_choice")
                .mark("choice-needed")
            ):
                ui.icon("front_hand", color="amber-9")
                ui.label().bind_text_from(v, "choice_text").classes("font-medium")
            with (
                ui.row()
                .classes("items-center gap-2 p-2 rounded bg-orange-1 w-full")
                .bind_visibility_from(v, "truncated_text", backward=bool)
                .mark("truncation-warning")
            ):
                ui.icon("content_cut", color="orange-9")
                ui.label().bind_text_from(v, "truncated_text").classes("font-medium")
            ui.label().bind_text_from(v, "error").bind_visibility_from(v, "error", backward=bool).classes(
                "text-red-8 whitespace-pre-wrap"
            ).mark("run-error")
            with ui.expansion("Inputs", icon="input").classes("w-full"):
                ui.code(json.dumps(detail["inputs"], ensure_ascii=False, indent=2), language="json").classes("w-full")

    def _actions(self) -> None:
        v = self.state.view
        ui.button("Cancel", icon="stop", on_click=self.cancel).props("no-caps color=negative").bind_visibility_from(
            v, "active"
        ).mark("cancel-run")
        ui.button("Resume", icon="play_arrow", on_click=self.resume).props("no-caps").bind_visibility_from(
            v, "resumable"
        ).mark("resume-run")
        ui.button("Run again", icon="replay", on_click=self.run_again).props("flat no-caps").mark("run-again")

    # --- navigation -------------------------------------------------------------------------------

    def jump(self, key: str) -> None:
        card = self.cards[key]
        card.open()
        # Scroll now, and again once the card has opened and its body arrived (it grows; near the
        # end of the page the first scroll would leave the card partly below the fold).
        ui.run_javascript(
            f"const el = getHtmlElement({card.expansion.id});"
            'const go = () => el.scrollIntoView({behavior: "smooth", block: "start"});'
            "go(); setTimeout(go, 450);"
        )

    def expand_all(self) -> None:
        for card in self.cards.values():
            card.open()

    def collapse_all(self) -> None:
        for card in self.cards.values():
            card.close()

    # --- live -------------------------------------------------------------------------------------

    def _step_changed(self, run_id: int, key: str) -> None:
        if run_id == self.run_id and key in self.cards:
            self.cards[key].changed()

    def _run_event(self, run_id: int, event: dict[str, Any]) -> None:
        if run_id != self.run_id:
            return
        if event["kind"] == "log" and event.get("step") in self.cards:
            self.cards[event["step"]].append_log(str(event.get("line", "")))
        elif event.get("id") is not None and self.timeline_rows is not None:
            self.timeline_rows.rows.append(_timeline_row(event))
            self.timeline_rows.update()

    def _tick(self) -> None:
        now = dt.datetime.now(dt.UTC)
        for sv in self.state.steps.values():
            if sv.status == "running" and sv.started_at:
                sv.set_duration((now - dt.datetime.fromisoformat(sv.started_at)).total_seconds())

    # --- actions ------------------------------------------------------------------------------------

    async def select(self, key: str, index: int) -> None:
        if await _act(
            lambda actor: operations.select(self.run_id, key, index, actor), f"Selected alternative {index + 1}"
        ):
            await live.refresh(self.run_id)

    async def rerun(self, key: str) -> None:
        plan = await operations.rerun_plan(self.run_id, key)
        if not plan.allowed:
            ui.notify(plan.reason or "not possible now", type="warning")
            return
        ok = await _confirm(
            f"Re-run from {key!r}?",
            [("Will run again (new attempts):", plan.rerun), ("Kept as they are:", plan.keep)],
            "Re-run",
        )
        if ok and await _act(lambda actor: operations.rerun_from(self.run_id, key, actor), "Re-run queued"):
            await live.refresh(self.run_id)

    async def cancel(self) -> None:
        question: list[tuple[str, list[str]]] = [("Work in progress stops; partial output is kept.", [])]
        if not await _confirm(f"Cancel run {self.run_id}?", question, "Cancel run"):
            return
        if await _act(lambda actor: operations.cancel_run(self.run_id, actor), "Run cancelled"):
            await live.refresh(self.run_id)

    async def resume(self) -> None:
        if await _act(lambda actor: operations.resume_run(self.run_id, actor), "Run resumed"):
            await live.refresh(self.run_id)

    async def run_again(self) -> None:
        from ui.components.run_form import open_run_dialog

        try:
            defn = workflows.get(self.state.view.workflow)
        except NotFound as exc:
            ui.notify(str(exc), type="warning")
            return
        open_run_dialog(defn, initial=self.state.detail["inputs"])

    # --- timeline -----------------------------------------------------------------------------------

    timeline_rows: ui.table | None = None

    def _timeline(self) -> None:
        columns = [
            {"name": "at", "label": "When (UTC)", "field": "at", "align": "left"},
            {"name": "what", "label": "What", "field": "what", "align": "left"},
            {"name": "who", "label": "Who", "field": "who", "align": "left"},
        ]
        with ui.expansion("Timeline", icon="timeline").classes("w-full").mark("timeline") as box:
            loaded = False

            async def load(event: Any) -> None:
                nonlocal loaded
                if not event.value or loaded:
                    return
                loaded = True
                events = await queries.events_after(self.run_id, 0, limit=100_000)
                with box:
                    self.timeline_rows = ui.table(
                        columns=columns, rows=[_timeline_row(e) for e in events], row_key="id", pagination=50
                    ).classes("w-full")

            box.on_value_change(load)


def _timeline_row(event: dict[str, Any]) -> dict[str, Any]:
    kind, step = event["kind"], event.get("step")
    where = f"step {step}" if step else "run"
    if kind in ("run", "step"):
        what = f"{where}: {event.get('from_status') or '—'} → {event.get('to_status')}"
    else:
        what = f"{where}: {kind}"
    if event.get("message"):
        what += f" — {event['message']}"
    return {
        "id": event["id"],
        "at": (event.get("at") or "")[:19].replace("T", " "),
        "what": what,
        "who": event.get("actor") or "engine",
    }


def register() -> None:
    @ui.page("/runs/{run_id}")
    async def run_page(run_id: str) -> None:
        state = None
        if run_id.isdigit() and len(run_id) < 18:
            try:
                state = await live.open(int(run_id))
            except NotFound:
                state = None
        with frame(f"Run {run_id}"):
            if state is None:
                ui.label(f"Run {run_id} does not exist.").classes("text-h6").mark("run-not-found")
                ui.link("All runs", "/")
                return
            ui.context.client.on_delete(lambda: live.close(int(run_id)))
            RunPage(state).build()
