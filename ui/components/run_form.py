"""The "New run" / "Run again" dialog: a form generated from a workflow's declared inputs.

The engine validates (through `operations.start_run`); this form only turns what was typed into
values of the declared types and puts each problem the engine reports on its field. Nothing typed
is lost on a problem: the dialog stays open with the values as they were.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

from nicegui import context, ui
from nicegui.elements.mixins.validation_element import ValidationElement

from engine import operations
from engine.definitions import InputDef, WorkflowDef
from engine.errors import Forbidden, InvalidInput, NotFound
from engine.inputs import InputError, validate_inputs
from ui import security


def json_problem(text: str | None) -> str | None:
    """Why `text` is not JSON, or None when it is (or is empty: not given)."""
    if not text or not text.strip():
        return None
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    return None


def _initial_text(idef: InputDef, value: Any) -> str:
    if value is None:
        return ""
    if idef.type == "json":
        return json.dumps(value, indent=2, ensure_ascii=False)
    return str(value)


def _number(value: Any) -> int | float | None:
    if value is None or value == "":
        return None
    number = float(value)
    # ui.number holds floats; an integer input must reach the engine as an int (300, not 300.0).
    return int(number) if number.is_integer() else number


class RunForm:
    """One open dialog; its fields keep what the person typed until a run starts."""

    def __init__(
        self, defn: WorkflowDef, initial: Mapping[str, Any] | None, on_started: Callable[[int], Any] | None
    ) -> None:
        self.defn = defn
        self.on_started = on_started
        # Where the dialog was opened from: what follows a start (notify, navigate, the callback's
        # own UI) runs there, not inside the dialog, which is deleted when it closes.
        self.origin = context.slot
        self.client = context.client
        self.fields: dict[str, ui.element] = {}
        self.error_labels: dict[str, ui.label] = {}  # for fields without an error slot (switches)
        initial = initial or {}
        with ui.dialog().mark("run-dialog") as self.dialog, ui.card().classes("w-full max-w-xl"):
            ui.label(f"Start {defn.name}").classes("text-h6")
            if defn.description:
                ui.label(defn.description).classes("text-sm text-grey-7")
            with ui.column().classes("w-full gap-1"):
                for idef in defn.inputs:
                    value = initial.get(idef.name, idef.default)
                    self.fields[idef.name] = self._field(idef, value).classes("w-full").mark(f"input-{idef.name}")
                if not defn.inputs:
                    ui.label("This workflow takes no inputs.").classes("text-grey-7")
            self.message = ui.label().classes("text-negative text-sm").mark("run-form-message")
            self.message.set_visibility(False)
            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=self.dialog.close).props("flat").mark("cancel-run")
                self.start_button = ui.button("Start", icon="play_arrow", on_click=self.start).mark("start-run")
        # A closed dialog is only hidden; drop it so a stale form never lingers in the page.
        self.dialog.on_value_change(lambda e: None if e.value else self.dialog.delete())

    def _field(self, idef: InputDef, value: Any) -> ui.element:
        label = f"{idef.name} *" if idef.required else idef.name
        element: ui.element
        if idef.type == "boolean":
            with ui.column().classes("gap-0"):
                element = ui.switch(label, value=bool(value))
                if idef.description:
                    ui.label(idef.description).classes("text-xs text-grey-7")
                self.error_labels[idef.name] = ui.label().classes("text-xs text-negative")
            return element
        if idef.type == "choice":
            # Cleared, an input with a default would silently take it: only one without can be cleared.
            element = ui.select(
                list(idef.options), label=label, value=value, clearable=not idef.required and idef.default is None
            )
        elif idef.type in ("integer", "number"):
            precision = 0 if idef.type == "integer" else None
            element = ui.number(label, value=value, precision=precision, min=idef.min, max=idef.max)
            if idef.min is not None or idef.max is not None:
                low, high = idef.min, idef.max
                element.validation = {  # shown as it is typed; the engine checks again on Start
                    f"at least {low}": lambda v: v is None or low is None or v >= low,
                    f"at most {high}": lambda v: v is None or high is None or v <= high,
                }
        elif idef.type == "text":
            element = ui.textarea(label, value=_initial_text(idef, value)).props("autogrow")
        elif idef.type == "json":
            # Checked as it is typed; the engine checks again on Start.
            element = ui.textarea(label, value=_initial_text(idef, value), validation=json_problem)
            element.props("autogrow input-class=font-mono")
        else:
            element = ui.input(label, value=_initial_text(idef, value))
        if idef.description:
            element.props["hint"] = idef.description
        return element

    def values(self) -> tuple[dict[str, Any], dict[str, str]]:
        """What was typed, as values of the declared types; plus problems found before the engine sees them."""
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for idef in self.defn.inputs:
            raw = getattr(self.fields[idef.name], "value", None)
            if idef.type in ("integer", "number"):
                value = _number(raw)
            elif idef.type == "boolean":
                value = bool(raw)
            elif idef.type == "json":
                problem = json_problem(raw)
                if problem:
                    problems[idef.name] = problem
                    continue
                value = json.loads(raw) if raw and raw.strip() else None
            else:
                value = raw or None  # an empty field is "not given": the default applies, or "required"
            if value is not None:
                values[idef.name] = value
        return values, problems

    def show_problems(self, problems: Mapping[str, str], message: str = "") -> None:
        general = [f"{name}: {text}" if name else text for name, text in problems.items() if name not in self.fields]
        for name, element in self.fields.items():
            text = problems.get(name)
            if isinstance(element, ValidationElement):
                element.error = text
            elif name in self.error_labels:
                self.error_labels[name].text = text or ""
        if message and not problems:
            general.append(message)
        self.message.text = "; ".join(general) or ("Please correct the fields marked in red." if problems else "")
        self.message.set_visibility(bool(self.message.text))

    async def start(self) -> None:
        values, problems = self.values()
        if problems:
            # Show the engine's view of the other fields too, so every problem appears at once.
            try:
                validate_inputs(self.defn, values)
            except InputError as exc:
                problems = {**exc.problems, **problems}
            self.show_problems(problems)
            return
        self.start_button.disable()  # one click, one run
        try:
            run_id = await operations.start_run(self.defn, values, await security.acting())
        except Forbidden as exc:
            self.show_problems({}, str(exc))
            return
        except InvalidInput as exc:
            self.show_problems(exc.problems, str(exc))
            return
        except NotFound as exc:  # the definition was removed by a reload meanwhile
            self.show_problems({}, str(exc))
            return
        finally:
            self.start_button.enable()
        self.dialog.close()
        origin = self.client.layout.default_slot if self.origin.parent.is_deleted else self.origin
        with origin:
            ui.notify(f"Run #{run_id} of {self.defn.name} started", type="positive")
            if self.on_started is None:
                ui.navigate.to(f"/runs/{run_id}")
                return
            result = self.on_started(run_id)
            if inspect.isawaitable(result):
                await result


def open_run_dialog(
    defn: WorkflowDef,
    initial: Mapping[str, Any] | None = None,
    on_started: Callable[[int], Any] | None = None,
) -> ui.dialog:
    """Open a dialog to start a run of `defn`, prefilled with defaults or `initial` values (run again)."""
    form = RunForm(defn, initial, on_started)
    form.dialog.open()
    return form.dialog
