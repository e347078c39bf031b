"""A step's log: a heading with the line count, a search, wrap on/off and a download; the lines in a
box sized to them (up to a screenful) that follows new lines while the step runs. A line written with
a time starts with it (UTC, to the millisecond; the full date and time in its tooltip); lines of
attempts made before times were kept show none."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from nicegui import ui

MAX_LINES = 1000  # lines a tab keeps (the attempt keeps its own, bounded, copy)

Line = tuple[datetime | None, str]  # when it was written (None: not known), and the text


def time_prefix(at: datetime) -> str:
    """The compact time a log line starts with: `21:14:03.120` (UTC)."""
    at = at.astimezone(UTC)
    return f"{at:%H:%M:%S}.{at.microsecond // 1000:03d}"


def full_time(at: datetime) -> str:
    at = at.astimezone(UTC)
    return f"{at:%Y-%m-%d} {time_prefix(at)} UTC"


def parse_time(value: object) -> datetime | None:
    """The time of a live log notice (ISO 8601), or None."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


class LogView:
    def __init__(self, lines: Sequence[Line], *, name: str, mark: str, live: bool) -> None:
        self.lines: list[Line] = list(lines)[-MAX_LINES:]
        self.name = name
        self.query = ""
        with ui.column().classes("w-full gap-1").mark(mark) as self.box:
            with ui.row().classes("items-center gap-2 w-full no-wrap"):
                ui.icon("notes", color="grey-7")
                self.title = ui.label().classes("text-sm font-medium")
                ui.space()
                search = ui.input(placeholder="search").props("dense clearable debounce=200").classes("w-40 text-xs")
                search.on_value_change(lambda e: self._search(e.value or ""))
                self.wrap = ui.switch("wrap", value=True).props("dense size=xs").classes("text-xs")
                self.wrap.on_value_change(lambda _: self._style())
                ui.button(icon="download", on_click=lambda: ui.download.content(self._text(), f"{name}.log")).props(
                    'flat dense round size=sm aria-label="Download log"'
                ).tooltip("Download the log")
            self.log = ui.log(max_lines=MAX_LINES).classes("w-full text-xs sd-log").mark(f"{mark}-lines")
        self._style()
        self._fill()
        self.box.set_visibility(bool(self.lines) or live)

    def _style(self) -> None:
        # Sized to its lines up to a screenful (ui/theme.py); wrapped or scrolled sideways inside its box.
        self.log.style("white-space: pre-wrap; overflow-wrap: anywhere;" if self.wrap.value else "white-space: pre;")

    def _text(self) -> str:
        """The log as a file: each line after its full time (ISO 8601) when it has one."""
        return "".join(
            f"{at.isoformat(timespec='milliseconds')} {text}\n" if at else f"{text}\n" for at, text in self.lines
        )

    def _shown(self) -> list[Line]:
        q = self.query.lower()
        return [line for line in self.lines if q in line[1].lower()] if q else self.lines

    def _push(self, line: Line) -> None:
        at, text = line
        if at is None:
            self.log.push(text)
            return
        prefix = time_prefix(at)
        # Continuation lines of a multi-line message are indented under its text, not its time.
        indented = text.replace("\n", "\n" + " " * (len(prefix) + 1))
        self.log.push(f"{prefix} {indented}", props=f'title="{full_time(at)}"')

    def _fill(self) -> None:
        self.log.clear()
        shown = self._shown()
        for line in shown:
            self._push(line)
        self._title(len(shown))

    def _title(self, shown: int) -> None:
        total = len(self.lines)
        lines = f"{total} line{'s' if total != 1 else ''}"
        self.title.text = f"Log · {shown} of {lines}" if self.query else f"Log · {lines}"

    def _search(self, query: str) -> None:
        self.query = query
        self._fill()

    def push(self, text: str, at: datetime | None = None) -> None:
        """A new line while the step runs: shown at once (the box scrolls to it) unless a search hides it."""
        self.lines.append((at, text))
        del self.lines[:-MAX_LINES]
        self.box.set_visibility(True)
        if not self.query or self.query.lower() in text.lower():
            self._push((at, text))
        self._title(len(self._shown()) if self.query else len(self.lines))
