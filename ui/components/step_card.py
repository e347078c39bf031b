"""One step of the run page: a card whose header is bound to live state and whose body (outputs,
alternatives, errors, logs, history) is built when first opened and rebuilt when the step changes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from nicegui import ui

from engine import queries
from ui import security
from ui.components.output_view import diff_view, output_view, traceback_view
from ui.live import RunState, llm_summary
from ui.theme import STATUS_COLORS, STATUS_ICONS, status_color

Action = Callable[[str], Awaitable[None]]


class StepCard:
    def __init__(
        self, state: RunState, key: str, *, select: Callable[[str, int], Awaitable[None]], rerun: Action
    ) -> None:
        self.state, self.key = state, key
        self.select, self.rerun = select, rerun
        self.sv = sv = state.steps[key]
        self.built = False
        self.log: ui.log | None = None
        self.expansion = (
            ui.expansion(on_value_change=self._toggled)
            .classes("w-full rounded-md border border-grey-4")
            .style("scroll-margin-top: 130px")
            .mark(f"card-{key}")
        )
        # Few elements per header (a 300-step run has 300 headers in every tab); the body is built
        # when the card is first opened.
        with self.expansion.add_slot("header"), ui.row().classes("w-full items-center no-wrap gap-2"):
            ui.icon("circle", size="14px").bind_text_color_from(sv, "color")
            title = ui.label(sv.label).classes("font-medium")
            title.props["title"] = key
            ui.badge().bind_text_from(sv, "status").bind_background_color_from(sv, "color").mark(f"status-{key}")
            # Stale (built on an earlier choice) and cut off (at the token limit) share one badge.
            ui.badge().bind_text_from(sv, "flag").bind_background_color_from(sv, "flag_color").bind_visibility_from(
                sv, "flag", backward=bool
            ).mark(f"flag-{key}")
            ui.label().bind_text_from(sv, "meta").classes("ml-auto text-xs text-grey-7 whitespace-nowrap")
        self.body: ui.column | None = None

    # --- opening and refreshing ---------------------------------------------------------------

    def open(self) -> None:
        self.expansion.open()

    def close(self) -> None:
        self.expansion.close()

    def _toggled(self, event: Any) -> None:
        if event.value and not self.built:
            self.render()

    def changed(self) -> None:
        """The step's details changed: rebuild the body if it is built (opened once)."""
        if self.built:
            self.render()

    def append_log(self, line: str) -> None:
        if self.log is not None:
            self.log.push(line)

    def render(self) -> None:
        self.built = True
        step = self.state.step_detail(self.key)
        sv = self.sv
        if self.body is None:
            with self.expansion:
                self.body = ui.column().classes("w-full gap-2")
        self.body.clear()
        with self.body:
            with ui.row().classes("items-center gap-2 w-full").bind_visibility_from(sv, "status", value="running"):
                ui.linear_progress(show_value=False).bind_value_from(sv, "progress").classes("w-48")
                ui.label().bind_text_from(sv, "progress_message").classes("text-sm text-grey-8")
            if step["kind"] == "llm":
                self._llm(step)
            with ui.row().classes("items-center gap-2 w-full").bind_visibility_from(sv, "stale"):
                ui.icon("history", color="purple-5")
                ui.label().bind_text_from(sv, "stale_reason").classes("text-sm text-purple-8").mark(
                    f"stale-reason-{self.key}"
                )
            self._times(step)
            if step["status"] == "failed" and step["error"]:
                ui.label(step["error"]).classes("text-red-8 font-mono text-sm whitespace-pre-wrap").mark(
                    f"error-{self.key}"
                )
                traceback_view(step["error_detail"])
            elif step["status"] == "cancelled" and step["error"]:
                ui.label(step["error"]).classes("text-brown-8 text-sm")
            self._outputs(step)
            if step["partial_output"]:
                with ui.expansion("Partial output (before it stopped)").classes("w-full"):
                    output_view(step["partial_output"])
            self.log = ui.log(max_lines=1000).classes("w-full h-32 text-xs").mark(f"log-{self.key}")
            for line in step["logs"]:
                self.log.push(line)
            self.log.set_visibility(bool(step["logs"]) or step["status"] == "running")
            self._actions(step)
            self._history()

    def _llm(self, step: dict[str, Any]) -> None:
        """Provider, tokens against the limit, truncation, and the text as the model streams it."""
        sv = self.sv
        with ui.row().classes("items-center gap-2 w-full"):
            if step["provider"] == "simulated":
                badge = ui.badge("simulated", color="amber-8").props("outline")
                badge.props["title"] = "Generated by the built-in simulated provider, not by a model"
                badge.mark(f"simulated-{self.key}")
            ui.label().bind_text_from(sv, "llm_text").classes("text-xs text-grey-8").mark(f"llm-{self.key}")
        if step["truncated"]:
            llm = step["llm"]
            cut = [a for a in llm["alternatives"] if a["truncated"]]
            which = ", ".join(str(a["index"] + 1) for a in cut) if len(llm["alternatives"]) > 1 else ""
            more = (
                f" after {max(a['continuations'] for a in cut)} continuations"
                if llm["on_truncation"] == "continue"
                else ""
            )
            with ui.row().classes("items-center gap-2 p-2 rounded bg-orange-1 w-full").mark(f"truncation-{self.key}"):
                ui.icon("content_cut", color=STATUS_COLORS["truncated"])
                ui.label(
                    f"{'Alternative ' + which if which else 'The output'} was cut off at max_tokens="
                    f"{llm['max_tokens']:,}{more} (policy: {llm['on_truncation']}). Raise max_tokens on the step, "
                    "or set on_truncation: continue."
                ).classes("text-sm")
        stream = ui.label().bind_text_from(sv, "stream_text")
        stream.classes("w-full whitespace-pre-wrap text-sm max-h-72 overflow-y-auto rounded bg-grey-1 p-2")
        stream.bind_visibility_from(sv, "status", backward=lambda status: status == "running").mark(
            f"stream-{self.key}"
        )

    def _times(self, step: dict[str, Any]) -> None:
        started = (step["started_at"] or "")[:19].replace("T", " ")
        ended = (step["completed_at"] or "")[:19].replace("T", " ")
        parts = [f"attempt {step['attempt']}" if step["attempt"] else "not started yet"]
        if started:
            parts.append(f"started {started} UTC")
        if ended:
            parts.append(f"ended {ended} UTC")
        ui.label(" · ".join(parts)).classes("text-xs text-grey-7")

    def _outputs(self, step: dict[str, Any]) -> None:
        alternatives = step["alternatives"]
        if step["status"] == "waiting":
            with ui.row().classes("items-center gap-2 p-2 rounded bg-amber-1 w-full").mark(f"choose-{self.key}"):
                ui.icon(STATUS_ICONS["waiting"], color=status_color("waiting"))
                ui.label(f"Pick one of {len(alternatives)} alternatives to continue the run.").classes("text-sm")
        if len(alternatives) > 1 or step["status"] == "waiting":
            cut = {a["index"] for a in (step["llm"] or {}).get("alternatives", []) if a["truncated"]}
            with ui.tabs().classes("w-full").props("dense align=left no-caps") as tabs:
                names = [
                    ui.tab(
                        f"alt{i}",
                        label=f"Alternative {i + 1}"
                        + (" ✂" if i in cut else "")
                        + (" ✓" if i == step["selected_index"] else ""),
                    )
                    for i in range(len(alternatives))
                ]
            start = names[step["selected_index"]] if step["selected_index"] is not None else names[0]
            with ui.tab_panels(tabs, value=start).classes("w-full"):
                for i, alt in enumerate(alternatives):
                    with ui.tab_panel(names[i]):
                        self._alternative(i, alt, step)
            if len(alternatives) > 1:
                self._compare(alternatives)
        elif step["output"] is not None or step["status"] == "completed":
            output_view(step["output"], mark=f"output-{self.key}")

    def _alternative(self, index: int, value: Any, step: dict[str, Any]) -> None:
        selected = index == step["selected_index"]
        with ui.row().classes("items-center gap-2"):
            if selected:
                ui.badge("selected", color="green-6").mark(f"selected-{self.key}-{index}")
            button = ui.button(
                "Selected" if selected else "Select",
                on_click=lambda i=index: self.select(self.key, i),
            ).props("dense no-caps" + (" flat" if selected else ""))
            button.mark(f"select-{self.key}-{index}")
            button.set_enabled(not selected and step["status"] in ("waiting", "completed") and security.may_act())
            llm = step["llm"]
            if llm and index < len(llm["alternatives"]):
                alt = llm["alternatives"][index]
                note = f"{alt['completion_tokens']:,} tokens · finish: {alt['finish_reason']}"
                if alt["truncated"]:
                    note += " · cut off at the limit"
                ui.label(note).classes("text-xs text-grey-7").mark(f"alt-usage-{self.key}-{index}")
        output_view(value, mark=f"alternative-{self.key}-{index}")

    def _compare(self, alternatives: list[Any]) -> None:
        with ui.expansion("Compare alternatives", icon="compare").classes("w-full"):
            options = {i: f"Alternative {i + 1}" for i in range(len(alternatives))}
            with ui.row():
                left = ui.select(options, value=0, label="left")
                right = ui.select(options, value=1, label="right")
            box = ui.column().classes("w-full")

            def show() -> None:
                box.clear()
                with box:
                    diff_view(
                        alternatives[left.value], alternatives[right.value], options[left.value], options[right.value]
                    )

            left.on_value_change(show)
            right.on_value_change(show)
            show()

    def _actions(self, step: dict[str, Any]) -> None:
        if not security.may_act():
            return
        with ui.row().classes("gap-2").bind_visibility_from(self.state.view, "rerunnable"):
            if step["status"] == "failed":
                ui.button("Retry", icon="replay", on_click=lambda: self.rerun(self.key)).props("no-caps").mark(
                    f"retry-{self.key}"
                )
            else:
                ui.button("Resume from here", icon="play_arrow", on_click=lambda: self.rerun(self.key)).props(
                    "flat no-caps"
                ).mark(f"rerun-{self.key}")

    def _history(self) -> None:
        if self.sv.attempt < 2 and self.sv.status != "pending":
            return
        history = ui.expansion("Attempt history", icon="history").classes("w-full").mark(f"history-{self.key}")
        loaded = False

        async def load(event: Any) -> None:
            nonlocal loaded
            if not event.value or loaded:
                return
            loaded = True
            attempts = [a for a in await queries.list_attempts(self.state.view.id) if a["step"] == self.key]
            with history:
                if not attempts:
                    ui.label("No attempts yet").classes("text-grey-6")
                self._attempts(attempts)

        history.on_value_change(load)

    def _attempts(self, attempts: list[dict[str, Any]]) -> None:
        for a in reversed(attempts):
            current = " (current)" if a["current"] else ""
            title = f"Attempt {a['number']}{current} — {a['status']}"
            with ui.expansion(title).classes("w-full").mark(f"attempt-{self.key}-{a['number']}"):
                ui.label(f"started {(a['started_at'] or '')[:19]} · {a['duration_s'] or 0:.1f} s").classes(
                    "text-xs text-grey-7"
                )
                if a["error"]:
                    ui.label(a["error"]).classes("text-red-8 text-sm")
                if a["llm"]:
                    ui.label(llm_summary(a)).classes("text-xs text-grey-7")
                for i, value in enumerate(a["outputs"] or []):
                    chosen = " (selected)" if i == a["selected_index"] else ""
                    ui.label(f"Output {i + 1}{chosen}").classes("text-xs font-medium")
                    output_view(value)
        with_outputs = [a for a in attempts if a["outputs"]]
        if len(with_outputs) >= 2:
            newest, older = with_outputs[-1], with_outputs[-2]
            with ui.expansion(f"Compare attempt {older['number']} and {newest['number']}", icon="compare").classes(
                "w-full"
            ):
                diff_view(_chosen(older), _chosen(newest), f"attempt {older['number']}", f"attempt {newest['number']}")


def _chosen(attempt: dict[str, Any]) -> Any:
    return attempt["outputs"][attempt["selected_index"] or 0]
