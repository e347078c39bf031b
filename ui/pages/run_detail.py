"""The run page (`/runs/{id}`): header with actions, the sticky step navigator, a card per step,
and the run's timeline. Everything acts through engine operations; nothing here writes a status."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

from nicegui import background_tasks, ui

from engine import operations, queries
from engine.errors import NotFound, OperationError
from engine.hub import Change, ChangeJson, ChangeKind
from models.status import StepStatus
from ui import security
from ui.components.columns import column
from ui.components.cost_view import cost_text
from ui.components.expansion import fill_on_first_open
from ui.components.log_view import parse_time
from ui.components.run_graphs import RunGraphs
from ui.components.run_steps import RunSteps
from ui.components.step_card import StepBody
from ui.format import format_duration
from ui.live import ENDED_RUN, LiveRuns, Patch, RunState
from ui.theme import STATUS_COLORS, dashboard_page, frame


async def _act(what: Callable[[str], Awaitable[Any]], done: str) -> bool:
    """Run an operation as the signed-in person; show a refusal (a viewer, a conflict, bad input) as a
    notification, never a crash."""
    try:
        await what(await security.acting())
    except OperationError as exc:
        ui.notify(str(exc), type="warning", multi_line=True)
        return False
    ui.notify(done, type="positive")
    return True


async def _confirm(
    title: str, lines: list[tuple[str, list[str]]], ok: str, *, back: str = "Back", destructive: bool = False
) -> bool:
    with ui.dialog() as dialog, ui.card().classes("min-w-96").mark("confirm-dialog"):
        ui.label(title).classes("text-h6")
        for heading, items in lines:
            if items:
                ui.label(heading).classes("font-medium mt-2")
                ui.label(", ".join(items)).classes("text-sm")
        with ui.row().classes("w-full justify-end"):
            ui.button(back, on_click=lambda: dialog.submit(False)).props("flat no-caps").mark("confirm-back")
            ui.button(ok, on_click=lambda: dialog.submit(True)).props(
                "no-caps" + (" color=negative" if destructive else "")
            ).mark("confirm-ok")
    result = await dialog
    dialog.delete()
    return bool(result)


MAX_BODIES = 60  # open cards whose bodies a tab keeps at once (those on screen)


class RunPage:
    def __init__(self, live: LiveRuns, state: RunState, needs: dict[str, list[str]], initial: str = "") -> None:
        self.live = live
        self.needs = needs
        self.state = state
        self.run_id = state.view.id
        self.initial = initial if initial in state.rows else ""
        self.bodies: dict[str, StepBody] = {}
        self.wanted: list[str] = []
        # Log lines of steps whose body is being read: a line that arrives during the read may be in what was
        # read or not, and the body adds those that are not once it is built (`_bodies`).
        self.arriving: dict[str, list[tuple[datetime | None, str]]] = {}
        self.client = ui.context.client

    def build(self) -> None:
        state = self.state
        self.root = ui.element("div").classes("w-full column gap-2 no-wrap").props('id="run-root"').mark("run-root")
        self._mark_root()
        with self.root:
            self._header()
            # What needs a person is open from the start: a choice to make, a failure to look at.
            # And a model writing right now: its text shows as it streams.
            opened = [
                k
                for k in state.order
                if state.rows[k].status in (StepStatus.WAITING, StepStatus.FAILED)
                or (state.rows[k].status is StepStatus.RUNNING and state.rows[k].kind == "llm")
            ]
            if self.initial and self.initial not in opened:
                opened.append(self.initial)
            self.steps = RunSteps(
                [state.row_json(state.rows[k]) for k in state.order],
                initial=self.initial,
                opened=opened,
                streaming=[k for k in state.order if state.rows[k].kind == "llm"],
                on_bodies=self._bodies,
            ).mark("run-steps")
            self.graphs = RunGraphs(state, self.needs)
            self._timeline()
        state.listeners.add(self._patch)
        self.client.on_connect(self._connected)
        self.client.on_disconnect(self._disconnected)

    def _mark_root(self) -> None:
        v = self.state.view
        self.root.props["data-run-status"] = v.status
        self.root.props["data-completed"] = str(v.completed)

    def _connected(self) -> None:
        """The tab connected (again): it has the rows now; after a reconnect, send them afresh."""
        if self._patch not in self.state.listeners:
            self.state.listeners.add(self._patch)
            self.steps.reset([self.state.row_json(self.state.rows[k]) for k in self.state.order])
            self._mark_root()
            self.root.update()
        self.steps.sent()

    def _disconnected(self) -> None:
        """A closed (or cut off) tab stops costing at once: no more patches for it."""
        self.state.listeners.discard(self._patch)

    # --- header ---------------------------------------------------------------------------------

    def _header(self) -> None:
        v, header = self.state.view, self.state.header
        with ui.card().classes("w-full").mark("run-header"):
            with ui.row().classes("w-full items-center gap-3"):
                ui.label(f"Run {v.id}").classes("text-h5")
                ui.link(v.workflow, f"/workflows#workflow-{quote(v.workflow)}").classes("text-lg").mark("workflow-link")
                ui.badge().bind_text_from(v, "status").bind_background_color_from(v, "color").mark("run-status")
                ui.space()
                if security.may_act():
                    self._actions()
            # instant-feedback: the bar shows where the run is on load, not an animation up from zero.
            ui.linear_progress(show_value=False).bind_value_from(v, "fraction").classes("w-full").props(
                "instant-feedback"
            )
            with ui.row().classes("w-full gap-4 text-sm text-grey-8"):
                ui.label().bind_text_from(v, "counts_text").mark("run-counts")
                ui.label(f"started by {header['actor']}")
                self.cost_label = ui.label().mark("run-cost")
                background_tasks.create(self._show_cost(), name="run page cost")
                ui.label().bind_text_from(
                    v,
                    "started_at",
                    backward=lambda s: f"started {s[:19].replace('T', ' ')} UTC" if s else "not started",
                )
                ui.label().bind_text_from(
                    v, "finished_at", backward=lambda s: f"finished {s[:19].replace('T', ' ')} UTC" if s else ""
                )
                ui.label().bind_text_from(v, "finished_at", backward=lambda s: _took(v.started_at, s)).mark(
                    "run-duration"
                )
            with (
                ui.row()
                .classes("items-center gap-2 p-2 rounded bg-amber-1 w-full cursor-pointer")
                .bind_visibility_from(v, "needs_choice")
                .on("click", lambda: self.jump(v.choice_key) if v.choice_key else None)
                .mark("choice-needed")
            ):
                ui.icon("front_hand", color="amber-9")
                ui.label().bind_text_from(v, "choice_text").classes("font-medium text-black")
            with (
                ui.row()
                .classes("items-center gap-2 p-2 rounded bg-cyan-1 w-full")
                .bind_visibility_from(v, "truncated_text", backward=bool)
                .mark("truncation-warning")
            ):
                ui.icon("content_cut", color=STATUS_COLORS["truncated"])
                ui.label().bind_text_from(v, "truncated_text").classes("font-medium text-black")
            ui.label().bind_text_from(v, "error").bind_visibility_from(v, "error", backward=bool).classes(
                "text-red-8 whitespace-pre-wrap break-all"
            ).mark("run-error")
            with ui.expansion("Inputs", icon="input").classes("w-full"):
                ui.code(json.dumps(header["inputs"], ensure_ascii=False, indent=2), language="json").classes("w-full")

    async def _show_cost(self) -> None:
        """The run's LLM cost over every attempt (read when the page opens and when the run ends)."""
        text = cost_text(await queries.run_cost(self.run_id)) or ""
        if not self.cost_label.is_deleted:
            self.cost_label.text = text
            self.cost_label.set_visibility(bool(text))

    def _actions(self) -> None:
        v = self.state.view
        ui.button("Cancel", icon="stop", on_click=self.cancel).props("no-caps color=negative").bind_visibility_from(
            v, "active"
        ).mark("cancel-run")
        ui.button("Resume", icon="play_arrow", on_click=self.resume).props("no-caps").bind_visibility_from(
            v, "resumable"
        ).mark("resume-run")
        ui.button("Refresh stale steps", icon="history", on_click=self.refresh_stale).props(
            "no-caps color=purple-6"
        ).bind_visibility_from(v, "refreshable").mark("refresh-stale")
        ui.button("Run again", icon="replay", on_click=self.run_again).props("flat no-caps").mark("run-again")

    # --- steps ------------------------------------------------------------------------------------

    def jump(self, key: str) -> None:
        """Open a step's card and scroll to it (the component does both; the URL follows)."""
        self.steps.jump(key)

    async def _bodies(self, keys: list[str]) -> None:
        """The open cards on screen changed: build the bodies they lack, drop the others."""
        keys = [k for k in keys if k in self.state.rows][:MAX_BODIES]
        self.wanted = keys
        for key in [k for k in self.bodies if k not in keys]:
            self.bodies.pop(key).delete()
        missing = [k for k in keys if k not in self.bodies and k not in self.arriving]
        if not missing:
            return
        for key in missing:
            self.arriving[key] = []
        try:
            details = await queries.step_details(self.run_id, missing)
        finally:
            arrived = {key: self.arriving.pop(key) for key in missing}
        for key in missing:
            if key in details and key in self.wanted and key not in self.bodies:
                with self.steps:
                    body = self.bodies[key] = StepBody(self.state, details[key], select=self.select, rerun=self.rerun)
                read = Counter(details[key].timed_logs)
                for line in arrived[key]:
                    if read[line]:
                        read[line] -= 1  # it was written before the read: the body shows it already
                    else:
                        body.append_log(line[1], line[0])

    def _patch(self, patch: Patch) -> None:
        """A batch of changes of the run: redraw the changed rows, re-read the open bodies they touch."""
        if patch.rows:
            self.steps.patch([self.state.row_json(r) for r in patch.rows])
            self.graphs.changed()
        v = self.state.view
        was = self.root.props.get("data-run-status")
        if was != v.status or self.root.props.get("data-completed") != str(v.completed):
            self._mark_root()
            self.root.update()
            if was != v.status:
                background_tasks.create(self._show_cost(), name="run page cost")
        stale = [k for k in patch.bodies if k in self.bodies]
        if (was in ENDED_RUN) != (v.status in ENDED_RUN):  # a choice is offered, or no longer
            waiting = [k for k in self.bodies if self.state.rows[k].status == StepStatus.WAITING]
            stale += [k for k in waiting if k not in stale]
        if stale:
            background_tasks.create(self._rebuild(stale), name="run-page-bodies")
        self._run_events(patch.events)

    async def _rebuild(self, keys: list[str]) -> None:
        details = await queries.step_details(self.run_id, keys)
        for key in keys:
            body = self.bodies.get(key)
            if body is not None and key in details:
                body.render(details[key])

    def _run_events(self, changes: list[Change]) -> None:
        """Log lines to the open cards they belong to; persisted events to the timeline, when it is open
        (one update of the table for the whole batch)."""
        if self.bodies or self.arriving:
            for change in changes:
                if change.kind != ChangeKind.LOG:
                    continue
                key, line = change.step_key or "", (parse_time(change.at), change.line or "")
                if (body := self.bodies.get(key)) is not None:
                    body.append_log(line[1], line[0])
                elif key in self.arriving:
                    self.arriving[key].append(line)
        if self.timeline_rows is not None:
            rows = [_timeline_row(c.to_json()) for c in changes if c.event_id is not None]
            if rows:
                self.timeline_rows.rows.extend(rows)
                self.timeline_rows.update()

    # --- actions ------------------------------------------------------------------------------------

    async def select(self, key: str, index: int) -> None:
        stales = await operations.selection_stales(self.run_id, key)
        done = f"Selected alternative {index + 1}"
        if stales:
            labels = [self.state.rows[k].label for k in stales if k in self.state.rows]
            ok = await _confirm(
                f"Change the choice of {self.state.rows[key].label!r} to alternative {index + 1}?",
                [
                    ("Made from the current choice, these steps will be marked stale:", labels),
                    ("Refresh them afterwards with “Refresh stale steps” (or re-run a step).", []),
                ],
                "Change choice",
            )
            if not ok:
                return
            done += f"; {len(stales)} step{'s' if len(stales) != 1 else ''} marked stale"
        if await _act(lambda actor: operations.select(self.run_id, key, index, actor), done):
            await self.live.refresh(self.run_id, [key])

    async def refresh_stale(self) -> None:
        try:
            plan = await operations.refresh_stale_plan(self.run_id)
        except OperationError as exc:
            ui.notify(str(exc), type="warning")
            return
        ok = await _confirm(
            "Refresh the stale steps?",
            [("Will run again (new attempts):", plan.rerun), ("Kept as they are:", plan.keep)],
            "Refresh",
        )
        if ok and await _act(lambda actor: operations.refresh_stale(self.run_id, actor), "Stale steps queued"):
            await self.live.refresh(self.run_id)

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
            await self.live.refresh(self.run_id, [key])

    async def cancel(self) -> None:
        question: list[tuple[str, list[str]]] = [("Work in progress stops; partial output is kept.", [])]
        if not await _confirm(
            f"Cancel run {self.run_id}?", question, "Cancel run", back="Keep running", destructive=True
        ):
            return
        if await _act(lambda actor: operations.cancel_run(self.run_id, actor), "Run cancelled"):
            await self.live.refresh(self.run_id)

    async def resume(self) -> None:
        if await _act(lambda actor: operations.resume_run(self.run_id, actor), "Run resumed"):
            await self.live.refresh(self.run_id)

    async def run_again(self) -> None:
        from ui.components.run_form import open_run_dialog

        try:
            defn = self.live.workflows.get(self.state.view.workflow)
        except NotFound as exc:
            ui.notify(str(exc), type="warning")
            return
        open_run_dialog(defn, initial=self.state.header["inputs"])

    # --- timeline -----------------------------------------------------------------------------------

    timeline_rows: ui.table | None = None

    def _timeline(self) -> None:
        columns = [
            column("at", "When (UTC)"),
            column("what", "What"),
            column("who", "Who"),
        ]
        box = ui.expansion("Timeline", icon="timeline").classes("w-full").mark("timeline")

        async def fill() -> None:
            events = await queries.events_after(self.run_id, 0, limit=100_000)
            with box:
                self.timeline_rows = (
                    ui.table(columns=columns, rows=[_timeline_row(e) for e in events], row_key="id", pagination=50)
                    .classes("w-full")
                    .mark("timeline-rows")
                )

        fill_on_first_open(box, fill)


def _took(started: str, finished: str) -> str:
    """The run's total duration once it finished ("took 3 min 05 s")."""
    if not started or not finished:
        return ""
    seconds = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    return f"took {format_duration(max(0.0, seconds))}"


def _timeline_row(event: queries.EventJson | ChangeJson) -> dict[str, Any]:
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


def register(live: LiveRuns) -> None:
    @dashboard_page("/runs/{run_id}")
    async def run_page(run_id: str, step: str = "") -> None:
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
            RunPage(live, state, await queries.step_needs(int(run_id)), step).build()
