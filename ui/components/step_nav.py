"""The sticky step navigator of the run page: expand/collapse all, per-status counts, jumps, and
a horizontally scrollable row of status-coloured pills bound to the run's live state."""

from __future__ import annotations

from collections.abc import Callable

from nicegui import ui

from ui.live import RunState, StepView
from ui.theme import HEADER_HEIGHT_PX

PILL_LABEL_CHARS = 12


def short_label(label: str, limit: int = PILL_LABEL_CHARS) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


class StepNav:
    """Jumps go through `jump(key)`, which the page implements (open the card, scroll to it)."""

    def __init__(
        self,
        state: RunState,
        jump: Callable[[str], None],
        expand_all: Callable[[], None],
        collapse_all: Callable[[], None],
    ) -> None:
        self.state = state
        self.jump = jump
        self._last: dict[str, int] = {}
        with (
            ui.element("div")
            .classes("sticky z-20 w-full rounded-md shadow-sm bg-white dark:bg-neutral-900 px-2 py-1")
            .style(f"top: {HEADER_HEIGHT_PX}px")
            .mark("step-nav"),
            # Wraps on a narrow screen: the pills then get a line of their own instead of no room.
            ui.row().classes("w-full items-center gap-1"),
        ):
            ui.button("Expand all", icon="unfold_more", on_click=expand_all).props("flat dense no-caps size=sm").mark(
                "expand-all"
            )
            ui.button("Collapse all", icon="unfold_less", on_click=collapse_all).props(
                "flat dense no-caps size=sm"
            ).mark("collapse-all")
            ui.separator().props("vertical")
            for what, icon in (("failed", "error"), ("waiting", "front_hand"), ("stale", "history")):
                ui.button(icon=icon, on_click=lambda w=what: self.next_of(w)).props("flat dense round size=sm").tooltip(
                    f"Next {what} step"
                ).mark(f"next-{what}")
            ui.label().bind_text_from(state.view, "counts_text").classes("text-xs text-grey-7 whitespace-nowrap").mark(
                "step-counts"
            )
            with ui.row().classes("no-wrap overflow-x-auto gap-1 flex-1 min-w-[16rem] py-1").mark("pills"):
                for key in state.order:
                    self._pill(state.steps[key])

    def _pill(self, sv: StepView) -> None:
        # Three elements a pill (a 300-step run has 300 of them in every tab): the full label is a
        # plain title attribute rather than a tooltip element.
        pill = (
            ui.button(on_click=lambda k=sv.key: self.jump(k))
            .props("flat dense no-caps size=sm")
            .classes("rounded-full px-2 shrink-0 bg-grey-2 dark:bg-neutral-800")
            .mark(f"pill-{sv.key}")
        )
        pill.props["title"] = sv.label
        with pill:
            ui.icon("circle", size="10px").bind_text_color_from(sv, "color").mark(f"pill-dot-{sv.key}")
            ui.label(short_label(sv.label)).classes("ml-1 text-xs")

    def next_of(self, what: str) -> None:
        """Jump to the next step that is failed / waiting / stale, after the one jumped to last."""
        keys = [
            k
            for k in self.state.order
            if (self.state.steps[k].stale if what == "stale" else self.state.steps[k].status == what)
        ]
        if not keys:
            ui.notify(f"No {what} step", type="info")
            return
        index = (self._last.get(what, -1) + 1) % len(keys)
        self._last[what] = index
        self.jump(keys[index])
