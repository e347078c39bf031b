"""The steps of a run page as one element fed a list (see run_steps.js): the sticky navigator and
the step cards in a virtual-scroll list. Cheap at any size: a step costs a short row of data, not
elements; card bodies are built by the page for the open cards on screen and dropped otherwise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nicegui import ui
from nicegui.element import Element

from ui.theme import HEADER_HEIGHT_PX, STATUS_COLORS, STATUS_ICONS

# The status colours (ui.theme.STATUS_COLORS) as the overview strip's canvas draws them.
QUASAR_HEX = {
    "blue-grey-5": "#78909c",
    "grey-5": "#9e9e9e",
    "blue-6": "#2196f3",
    "amber-8": "#ffa000",
    "green-6": "#4caf50",
    "red-6": "#f44336",
    "brown-5": "#8d6e63",
    "purple-5": "#ab47bc",
    "cyan-9": "#00838f",
    "deep-orange-5": "#ff7043",
}

CSS = """
.run-pill { display: inline-flex; align-items: center; height: 24px; margin: 2px; white-space: nowrap;
            background: #eeeeee; border: 1px solid transparent; }
.body--dark .run-pill { background: #333; color: #eee; }
.run-pill-current { border-color: currentColor; font-weight: 600; }
.run-steps-pills { overflow-x: auto; overflow-y: hidden; max-width: 100%; }
.run-steps-pills > .q-virtual-scroll__content { display: flex; flex-wrap: nowrap; }
.run-steps-nav { background: #fff; }
.body--dark .run-steps-nav { background: var(--q-dark, #1d1d1d); }
.run-card { overflow: hidden; border: 1px solid #e0e0e0; }
.body--dark .run-card { border-color: #424242; }
.run-card-label { overflow-wrap: anywhere; min-width: 0; }
.run-card-body { contain: content; overflow-wrap: anywhere; min-width: 0; }
.run-steps-strip { height: auto; }
"""


class RunSteps(Element, component="run_steps.js"):
    def __init__(
        self,
        rows: list[list[Any]],
        *,
        initial: str = "",
        opened: list[str] | None = None,
        streaming: list[str] | None = None,
        on_bodies: Callable[[list[str]], Any],
    ) -> None:
        super().__init__()
        self._props["steps"] = rows
        self._props["colors"] = QUASAR_HEX
        self._props["icons"] = STATUS_ICONS  # colour always comes with an icon
        self._props["flagColors"] = {"stale": STATUS_COLORS["stale"], "cut off": STATUS_COLORS["truncated"]}
        self._props["top"] = HEADER_HEIGHT_PX
        self._props["initial"] = initial
        self._props["opened"] = opened or []
        self._props["streaming"] = streaming or []
        self.on_bodies = on_bodies
        self.on("bodies", lambda e: on_bodies([str(k) for k in (e.args or [])]))
        ui.add_css(CSS)

    def sent(self) -> None:
        """The client has the rows: later updates of this element (its children change as bodies come
        and go) must not send 2,000 rows again. The component keeps its own copy, patched from here."""
        self._props.pop("steps", None)
        self._props["opened"] = []
        self._props["initial"] = ""

    def patch(self, rows: list[list[Any]]) -> None:
        self.run_method("patch", rows)

    def reset(self, rows: list[list[Any]]) -> None:
        self.run_method("reset", rows)

    async def show(self, keys: list[str]) -> None:
        """What the browser does when these cards are open and on screen (tests without a browser)."""
        await self.on_bodies(keys)

    def jump(self, key: str) -> None:
        self.run_method("jump", key)
