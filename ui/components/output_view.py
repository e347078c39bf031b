"""How a step's output, a traceback and a comparison of two outputs are shown."""

from __future__ import annotations

import difflib
import html
import json
from typing import Any

from nicegui import ui

COLLAPSED_CHARS = 3000
# Model output often breaks lines without blank lines between them: keep those breaks.
MARKDOWN_EXTRAS = ["fenced-code-blocks", "tables", "break-on-newline"]


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2)


def output_view(value: Any, *, mark: str | None = None) -> None:
    """Text as sanitized markdown (long text collapsed with 'Show all'); other values as JSON."""
    with ui.column().classes("w-full gap-1") as box:
        if mark:
            box.mark(mark)
        if value is None:
            ui.label("No output").classes("text-grey-6 italic")
            return
        if not isinstance(value, str):
            ui.code(as_text(value), language="json").classes("w-full")
            return
        if len(value) <= COLLAPSED_CHARS:
            ui.markdown(value, extras=MARKDOWN_EXTRAS).classes("w-full break-words")
            return
        short = ui.markdown(value[:COLLAPSED_CHARS] + " …", extras=MARKDOWN_EXTRAS).classes("w-full break-words")
        full = ui.markdown(value, extras=MARKDOWN_EXTRAS).classes("w-full break-words")
        full.visible = False

        def show_all() -> None:
            short.visible, full.visible = False, True
            button.visible = False

        button = ui.button(f"Show all ({len(value):,} characters)", on_click=show_all).props("flat dense no-caps")


def traceback_view(detail: str | None) -> None:
    if detail:
        with ui.expansion("Traceback", icon="bug_report").classes("w-full text-sm"):
            ui.code(detail, language="python").classes("w-full")


def diff_view(left: Any, right: Any, left_title: str, right_title: str) -> None:
    """Side-by-side line diff of two outputs (escaped by difflib; sanitized again by ui.html)."""
    table = difflib.HtmlDiff(wrapcolumn=70).make_table(
        as_text(left).splitlines(),
        as_text(right).splitlines(),
        html.escape(left_title),
        html.escape(right_title),
        context=False,
    )
    style = (
        "<style>.sd-diff table.diff{font-family:monospace;font-size:12px;width:100%}"
        ".sd-diff .diff_add{background:#cfc}.sd-diff .diff_chg{background:#ffa}"
        ".sd-diff .diff_sub{background:#fcc}</style>"
    )
    ui.html(style + f'<div class="sd-diff">{table}</div>', sanitize=False).classes("w-full overflow-x-auto")
