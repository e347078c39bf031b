"""Expansions whose content is read when first opened."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nicegui import ui
from nicegui.events import ValueChangeEventArguments


def fill_on_first_open(expansion: ui.expansion, fill: Callable[[], Awaitable[None]]) -> None:
    """Call `fill` the first time `expansion` is opened, once: what it shows (a step's attempts, a run's
    timeline) is read only when someone asks for it, and not again when it is closed and reopened."""
    filled = False

    async def opened(event: ValueChangeEventArguments[bool]) -> None:
        nonlocal filled
        if not event.value or filled:
            return
        filled = True
        await fill()

    expansion.on_value_change(opened)
