"""Two pictures of a run, drawn when their panel is opened and redrawn (at most once a second) while
it stays open: the step graph with live statuses (Mermaid) and a Gantt chart of step times (ECharts).

Both are for runs a person can take in at a glance: above GRAPH_MAX_STEPS / GANTT_MAX_STEPS they say
so and point to the overview strip instead of drawing thousands of nodes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nicegui import background_tasks, ui

from engine.readmodel import StepRow
from ui.components.dag import mermaid_text
from ui.components.run_steps import QUASAR_HEX
from ui.live import RunState, shown_status
from ui.theme import status_color

GRAPH_MAX_STEPS = 150
GANTT_MAX_STEPS = 500
REDRAW_INTERVAL_S = 1.0


def graph_source(state: RunState, needs: dict[str, list[str]]) -> str:
    """The run's DAG in Mermaid syntax, each node coloured (and labelled) by its step's live status."""
    lines = ["graph LR"]
    used: dict[str, str] = {}
    for i, key in enumerate(state.order):
        row = state.rows[key]
        status = shown_status(row, state.view.status)
        lines.append(f'  s{i}["{mermaid_text(row.label)} · {mermaid_text(status)}"]')
        colour = QUASAR_HEX.get(status_color(row.status, row.stale, row.truncated), "#9e9e9e")
        name = "c" + colour.lstrip("#")
        used[name] = colour
        lines.append(f"  class s{i} {name}")
    for i, key in enumerate(state.order):
        lines += [f"  s{state.position[n]} --> s{i}" for n in needs.get(key, []) if n in state.position]
    lines += [f"  classDef {name} fill:{colour},stroke:{colour},color:#fff" for name, colour in used.items()]
    return "\n".join(lines)


def gantt_options(state: RunState) -> dict[str, Any]:
    """Horizontal bars from each step's start to its end (or now, while it runs), in declared order."""
    rows: list[StepRow] = [state.rows[k] for k in state.order if state.rows[k].started_at is not None]
    if not rows:
        return {}
    origin = min(r.started_at or 0.0 for r in rows)
    now = time.time()
    labels, offsets, spans = [], [], []
    for r in rows:
        start = (r.started_at or origin) - origin
        end = (r.finished_at or now) - origin
        labels.append(r.label)
        offsets.append(round(start, 3))
        colour = QUASAR_HEX.get(status_color(r.status, r.stale, r.truncated), "#9e9e9e")
        spans.append({"value": round(max(end - start, 0.001), 3), "itemStyle": {"color": colour}})
    return {
        "grid": {"left": 8, "right": 16, "top": 8, "bottom": 24, "containLabel": True},
        "tooltip": {"trigger": "axis", "axisPointer": {"type": "shadow"}},
        "xAxis": {"type": "value", "name": "s", "min": 0},
        "yAxis": {"type": "category", "data": labels, "inverse": True},
        "series": [
            {"type": "bar", "stack": "t", "data": offsets, "itemStyle": {"color": "transparent"}, "silent": True},
            {"type": "bar", "stack": "t", "data": spans, "name": "seconds"},
        ],
    }


class RunGraphs:
    """The "Graph" and "Gantt" panels of a run page."""

    def __init__(self, state: RunState, needs: dict[str, list[str]]) -> None:
        self.state, self.needs = state, needs
        self.graph: ui.mermaid | None = None
        self.gantt: ui.echart | None = None
        self.drawn_at = 0.0
        self.pending = False
        steps = len(state.order)
        with ui.expansion("Graph", icon="account_tree").classes("w-full").mark("run-graph") as self.graph_box:
            if steps > GRAPH_MAX_STEPS:
                ui.label(f"{steps:,} steps are too many to draw; the overview strip above shows them all.")
        with ui.expansion("Gantt", icon="view_timeline").classes("w-full").mark("run-gantt") as self.gantt_box:
            if steps > GANTT_MAX_STEPS:
                ui.label(f"{steps:,} steps are too many to chart; each card shows its step's times.")
        if steps <= GRAPH_MAX_STEPS:
            self.graph_box.on_value_change(lambda e: self._open_graph() if e.value else None)
        if steps <= GANTT_MAX_STEPS:
            self.gantt_box.on_value_change(lambda e: self._open_gantt() if e.value else None)

    def _open_graph(self) -> None:
        if self.graph is None:
            with self.graph_box:
                self.graph = ui.mermaid(graph_source(self.state, self.needs)).classes(
                    "w-full overflow-x-auto sd-mermaid"
                )
                self.graph.mark("run-graph-chart")

    def _open_gantt(self) -> None:
        if self.gantt is None:
            with self.gantt_box:
                height = max(160, 22 * len(self.state.order) + 48)
                self.gantt = ui.echart(gantt_options(self.state)).classes("w-full").style(f"height: {height}px")
                self.gantt.mark("run-gantt-chart")

    def changed(self) -> None:
        """Steps changed: redraw what is open, at most once a second."""
        if self.graph is None and self.gantt is None:
            return
        wait = self.drawn_at + REDRAW_INTERVAL_S - time.monotonic()
        if wait > 0:
            if not self.pending:
                self.pending = True
                background_tasks.create(self._later(wait), name="run page graphs")
            return
        self._redraw()

    async def _later(self, wait: float) -> None:
        await asyncio.sleep(wait)
        if not self.graph_box.is_deleted:
            self._redraw()

    def _redraw(self) -> None:
        self.pending = False
        self.drawn_at = time.monotonic()
        if self.graph is not None and self.graph_box.value:
            self.graph.set_content(graph_source(self.state, self.needs))
        if self.gantt is not None and self.gantt_box.value:
            self.gantt.options.clear()
            self.gantt.options.update(gantt_options(self.state))
            self.gantt.update()
