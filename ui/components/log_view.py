"""A step's log: a heading with the line count, a search, wrap on/off and a download; the lines in a
box sized to them (up to a screenful) that follows new lines while the step runs."""

from __future__ import annotations

from nicegui import ui

MAX_LINES = 1000  # lines a tab keeps (the attempt keeps its own, bounded, copy)


class LogView:
    def __init__(self, lines: tuple[str, ...] | list[str], *, name: str, mark: str, live: bool) -> None:
        self.lines = list(lines)[-MAX_LINES:]
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
                ui.button(
                    icon="download", on_click=lambda: ui.download.content("\n".join(self.lines) + "\n", f"{name}.log")
                ).props('flat dense round size=sm aria-label="Download log"').tooltip("Download the log")
            self.log = ui.log(max_lines=MAX_LINES).classes("w-full text-xs sd-log").mark(f"{mark}-lines")
        self._style()
        self._fill()
        self.box.set_visibility(bool(self.lines) or live)

    def _style(self) -> None:
        # Sized to its lines up to a screenful; wrapped or scrolled sideways inside its box.
        self.log.style(
            "height: auto; max-height: 20rem; min-height: 1.6rem; overflow: auto; "
            + ("white-space: pre-wrap; overflow-wrap: anywhere;" if self.wrap.value else "white-space: pre;")
        )

    def _shown(self) -> list[str]:
        q = self.query.lower()
        return [line for line in self.lines if q in line.lower()] if q else self.lines

    def _fill(self) -> None:
        self.log.clear()
        shown = self._shown()
        for line in shown:
            self.log.push(line)
        total = len(self.lines)
        self.title.text = (
            f"Log · {len(shown)} of {total} line{'s' if total != 1 else ''}"
            if self.query
            else f"Log · {total} line{'s' if total != 1 else ''}"
        )

    def _search(self, query: str) -> None:
        self.query = query
        self._fill()

    def push(self, line: str) -> None:
        """A new line while the step runs: shown at once (the box scrolls to it) unless a search hides it."""
        self.lines.append(line)
        del self.lines[:-MAX_LINES]
        self.box.set_visibility(True)
        if not self.query or self.query.lower() in line.lower():
            self.log.push(line)
        self.title.text = f"Log · {len(self.lines)} lines"
