"""The runs page (`/`): a live list of runs. The full dashboard builds on this."""

from __future__ import annotations

from typing import Any

from nicegui import ui

from engine import queries
from engine.registry import workflows

COLUMNS = [
    {"name": "id", "label": "Run", "field": "id", "align": "left"},
    {"name": "workflow", "label": "Workflow", "field": "workflow", "align": "left"},
    {"name": "status", "label": "Status", "field": "status", "align": "left"},
    {"name": "progress", "label": "Steps", "field": "progress", "align": "left"},
    {"name": "created_at", "label": "Created", "field": "created_at", "align": "left"},
]


def _rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": r["id"],
            "workflow": r["workflow"],
            "status": r["status"] + (" (choice needed)" if r["needs_choice"] else ""),
            "progress": f"{r['progress']['completed']}/{r['progress']['total']}",
            "created_at": (r["created_at"] or "")[:19].replace("T", " "),
        }
        for r in runs
    ]


def register() -> None:
    @ui.page("/")
    async def runs_page() -> None:
        ui.label("Stepdeck").classes("text-h5")
        ui.label(f"{len(workflows.definitions)} workflows loaded. JSON API at /docs.").classes("text-grey-7")
        table = ui.table(columns=COLUMNS, rows=[], row_key="id").classes("w-full").mark("runs-table")

        async def refresh() -> None:
            table.rows = _rows(await queries.list_runs(limit=100, include_steps=False))
            table.update()

        await refresh()
        ui.timer(2.0, refresh)
