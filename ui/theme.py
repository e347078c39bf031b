"""Colours and labels of statuses, and the shared page frame (header, navigation, dark mode)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from nicegui import ui

# Quasar colour names; one place, so pills, badges, the runs table and the legend agree.
STATUS_COLORS = {
    "queued": "blue-grey-5",
    "pending": "grey-5",
    "running": "blue-6",
    "waiting": "amber-8",
    "completed": "green-6",
    "failed": "red-6",
    "cancelled": "brown-5",
    "stale": "purple-5",
}
STATUS_ICONS = {
    "queued": "schedule",
    "pending": "radio_button_unchecked",
    "running": "autorenew",
    "waiting": "front_hand",
    "completed": "check_circle",
    "failed": "error",
    "cancelled": "cancel",
}

NAV = [("Runs", "/"), ("Workflows", "/workflows"), ("Monitoring", "/monitoring")]
HEADER_HEIGHT_PX = 52  # fixed, so that sticky bars can sit exactly below it


def status_color(status: str, stale: bool = False) -> str:
    """The colour of a status; a completed step that is stale shows as stale."""
    if stale and status == "completed":
        return STATUS_COLORS["stale"]
    return STATUS_COLORS.get(status, "grey-5")


def status_badge(status: str) -> ui.badge:
    return ui.badge(status, color=status_color(status)).props("rounded").classes("text-xs")


@contextmanager
def frame(title: str) -> Iterator[None]:
    """The shared layout: header with product name, navigation and dark mode; content below."""
    dark = ui.dark_mode()  # per tab for now: remembering it needs the storage secret that sign-in brings
    ui.page_title(f"{title} · Stepdeck")
    with (
        ui.header(elevated=True)
        .classes("items-center gap-4 px-4 bg-slate-800 no-wrap")
        .style(f"height: {HEADER_HEIGHT_PX}px")
        .mark("header")
    ):
        ui.link("Stepdeck", "/").classes("text-white text-lg font-bold no-underline")
        for label, target in NAV:
            ui.link(label, target).classes("text-slate-200 no-underline hover:text-white").mark(f"nav-{label}")
        ui.space()

        def toggle() -> None:
            dark.value = not dark.value

        ui.button(icon="dark_mode", on_click=toggle).props("flat round dense color=white").tooltip("Dark mode")
    with ui.column().classes("w-full max-w-screen-xl mx-auto p-4 gap-4"):
        yield
