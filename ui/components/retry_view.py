"""What a step card shows of its retry policy: "attempt 2 of 3", and for a pending retry the error of the
attempt that failed and a live countdown ("retrying in 8 s"), counted down in the browser's tab."""

from __future__ import annotations

from datetime import datetime

from nicegui import ui

from engine.db import now as db_now
from engine.readmodel import StepDetail
from engine.retry import attempt_label
from models.status import StepStatus


def countdown_text(retry_at: datetime | str | None, now: datetime | None = None) -> str:
    if retry_at is None:
        return ""
    due = datetime.fromisoformat(retry_at) if isinstance(retry_at, str) else retry_at
    left = (due - (now or db_now())).total_seconds()
    return f"retrying in {left:.0f} s" if left >= 0.5 else "retrying now"


def retry_note(step: StepDetail) -> None:
    """Nothing for a step without retries; its place in the series otherwise."""
    if not step.retries:
        return
    key = step.key
    with ui.row().classes("items-center gap-2 w-full").mark(f"retry-{key}-note"):
        if step.status is not StepStatus.RETRYING:
            ui.label(attempt_label(step.retries_used, step.retries)).classes("text-xs text-grey-8")
            return
        ui.icon("update", color="deep-orange-5")
        ui.label(f"{attempt_label(step.retries_used - 1, step.retries)} failed").classes("text-sm")
        clock = ui.label(countdown_text(step.retry_at)).classes("text-sm font-medium").mark(f"countdown-{key}")
        ui.label(f"({attempt_label(step.retries_used, step.retries)} next)").classes("text-xs text-grey-8")
        ui.timer(1.0, lambda: clock.set_text(countdown_text(step.retry_at)))
    if step.error:
        ui.label(step.error).classes("text-red-8 font-mono text-sm whitespace-pre-wrap break-all").mark(f"error-{key}")
