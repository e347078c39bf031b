"""How a step's output, a traceback and a comparison of two outputs are shown.

An output is data a step (often a model) made: it must never reach outside its own box. Markdown is
rendered on the server and its HTML cleaned by an allow-list (`nh3`): no scripts, no event handlers,
no `style`, no classes but the syntax highlighter's; the box contains its layout (`contain: content`)
and clips what overflows. Text shows rendered or raw, can be copied and downloaded, and a long text
shows a bounded part at a time.
"""

from __future__ import annotations

import difflib
import html
import json
import re
from typing import Any

import nh3
from nicegui import ui
from pygments.token import STANDARD_TYPES

COLLAPSED_CHARS = 3000  # a text longer than this opens showing its start
SHOWN_MAX_CHARS = 100_000  # "Show more" shows at most this much; the rest is in the download
# Model output often breaks lines without blank lines between them: keep those breaks.
MARKDOWN_EXTRAS = ["fenced-code-blocks", "tables", "break-on-newline"]

# The highlighter's token classes (`k`, `s2`, …) are the only classes an output may carry.
_CODE_CLASSES = {name for name in STANDARD_TYPES.values() if name}
_ALLOWED_CLASSES = {"div": {"codehilite"}, "span": _CODE_CLASSES, "code": _CODE_CLASSES, "pre": _CODE_CLASSES}

CSS = """
.sd-output { contain: content; overflow: hidden; max-width: 100%; overflow-wrap: anywhere; }
.sd-output .nicegui-markdown h1 { font-size: 1.25rem; line-height: 1.75rem; font-weight: 600; margin: .5rem 0; }
.sd-output .nicegui-markdown h2 { font-size: 1.125rem; line-height: 1.6rem; font-weight: 600; margin: .5rem 0; }
.sd-output .nicegui-markdown h3, .sd-output .nicegui-markdown h4, .sd-output .nicegui-markdown h5,
.sd-output .nicegui-markdown h6 { font-size: 1rem; font-weight: 600; margin: .4rem 0; }
.sd-output img, .sd-output video { max-width: 100%; height: auto; }
.sd-output pre, .sd-output table { max-width: 100%; overflow-x: auto; }
.sd-del { background: #ffebee; color: #b71c1c; text-decoration: line-through; }
.sd-ins { background: #e8f5e9; color: #1b5e20; text-decoration: none; }
.body--dark .sd-del { background: #4a1c1c; color: #ffcdd2; }
.body--dark .sd-ins { background: #1b3a1f; color: #c8e6c9; }
.sd-raw { white-space: pre-wrap; overflow-wrap: anywhere; font-family: ui-monospace, monospace; font-size: 12px; }
"""


def clean_html(markup: str) -> str:
    """HTML an output rendered to, with only what cannot act or escape its box."""
    return nh3.clean(
        markup,
        allowed_classes=_ALLOWED_CLASSES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2)


def markdown(text: str) -> ui.markdown:
    return ui.markdown(text, extras=MARKDOWN_EXTRAS, sanitize=clean_html).classes("w-full")


class OutputView:
    """One output: rendered (Markdown) or raw text, with copy and download; JSON values foldable.

    A long text shows its first COLLAPSED_CHARS characters; "Show more" shows up to SHOWN_MAX_CHARS,
    "Show less" goes back, and the download always has all of it."""

    def __init__(self, value: Any, *, mark: str | None = None, name: str = "output") -> None:
        self.value, self.name = value, name
        self.raw = False
        self.expanded = False
        self.box = ui.column().classes("sd-output w-full gap-1")
        if mark:
            self.box.mark(mark)
        self.render()

    def render(self) -> None:
        value = self.value
        self.box.clear()
        with self.box:
            if value is None:
                ui.label("No output").classes("text-grey-6 italic")
                return
            text = as_text(value)
            self._toolbar(text)
            if not isinstance(value, str):
                if self.raw:
                    ui.label(text).classes("sd-raw w-full")
                else:
                    ui.json_editor(
                        {"content": {"json": value}, "readOnly": True, "mainMenuBar": False, "navigationBar": False},
                    ).classes("w-full").props("data-kind=json")
                return
            shown = (
                text if len(text) <= COLLAPSED_CHARS else text[: SHOWN_MAX_CHARS if self.expanded else COLLAPSED_CHARS]
            )
            cut = len(shown) < len(text)
            if self.raw:
                ui.label(shown + (" …" if cut else "")).classes("sd-raw w-full")
            else:
                markdown(shown + (" …" if cut else ""))
            if len(text) > COLLAPSED_CHARS:
                with ui.row().classes("items-center gap-2"):
                    if not self.expanded:
                        more = min(len(text), SHOWN_MAX_CHARS)
                        ui.button(f"Show more ({more:,} of {len(text):,} characters)", on_click=self._more).props(
                            "flat dense no-caps"
                        )
                    else:
                        ui.button("Show less", on_click=self._less).props("flat dense no-caps")
                        if cut:
                            ui.label(f"showing {len(shown):,} of {len(text):,} characters: download for all").classes(
                                "text-xs text-grey-7"
                            )

    def _toolbar(self, text: str) -> None:
        with ui.row().classes("items-center gap-1 w-full justify-end -mb-1"):
            toggle = ui.button_group().props("flat dense")
            with toggle:
                for raw, label in ((False, "JSON" if not isinstance(self.value, str) else "Rendered"), (True, "Raw")):
                    ui.button(label, on_click=lambda r=raw: self._show_raw(r)).props(
                        "dense no-caps size=sm " + ("unelevated color=primary" if self.raw == raw else "flat")
                    )
            ui.button(icon="content_copy", on_click=lambda: ui.clipboard.write(text)).props(
                'flat dense round size=sm aria-label="Copy"'
            ).tooltip("Copy")
            suffix = "md" if isinstance(self.value, str) else "json"
            ui.button(icon="download", on_click=lambda: ui.download.content(text, f"{self.name}.{suffix}")).props(
                'flat dense round size=sm aria-label="Download"'
            ).tooltip(f"Download ({len(text):,} characters)")

    def _show_raw(self, raw: bool) -> None:
        if raw != self.raw:
            self.raw = raw
            self.render()

    def _more(self) -> None:
        self.expanded = True
        self.render()

    def _less(self) -> None:
        self.expanded = False
        self.render()


def output_view(value: Any, *, mark: str | None = None, name: str = "output") -> OutputView:
    return OutputView(value, mark=mark, name=name)


def traceback_view(detail: str | None) -> None:
    if detail:
        with ui.expansion("Traceback", icon="bug_report").classes("w-full text-sm sd-output"):
            ui.code(detail, language="python").classes("w-full")


_TOKENS = re.compile(r"\s+|[^\s]+")


def word_diff(left: str, right: str) -> str:
    """HTML of `right` against `left` word by word: removed words struck through, added ones marked,
    everything escaped (the texts are outputs, never markup)."""
    a, b = _TOKENS.findall(left), _TOKENS.findall(right)
    parts: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            parts.append(html.escape("".join(a[i1:i2])))
            continue
        if op in ("delete", "replace"):
            parts.append(f'<del class="sd-del">{html.escape("".join(a[i1:i2]))}</del>')
        if op in ("insert", "replace"):
            parts.append(f'<ins class="sd-ins">{html.escape("".join(b[j1:j2]))}</ins>')
    return "".join(parts)


DIFF_MAX_CHARS = 200_000  # each side; a longer comparison is cut (the outputs themselves are not)


def diff_view(left: Any, right: Any, left_title: str, right_title: str) -> None:
    """What changed from one output to another, word by word, in one block."""
    old, new = as_text(left)[:DIFF_MAX_CHARS], as_text(right)[:DIFF_MAX_CHARS]
    with ui.column().classes("w-full gap-1 sd-output"):
        with ui.row().classes("items-center gap-3 text-xs"):
            ui.html(f'<del class="sd-del">{html.escape(left_title)}</del>', sanitize=False)
            ui.icon("arrow_forward", size="14px")
            ui.html(f'<ins class="sd-ins">{html.escape(right_title)}</ins>', sanitize=False)
        ui.html(f'<div class="sd-diff sd-raw">{word_diff(old, new)}</div>', sanitize=False).classes("w-full")
