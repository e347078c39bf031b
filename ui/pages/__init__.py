"""The dashboard's pages; each module registers its routes."""

from __future__ import annotations

from engine.scheduler import Maintenance


def register_pages(maintenance: Maintenance) -> None:
    from nicegui import ui

    from ui.components import output_view
    from ui.pages import monitoring, run_detail, runs, workflows
    from ui.theme import THEME_CSS

    ui.add_css(output_view.CSS + THEME_CSS, shared=True)

    runs.register()
    run_detail.register()
    workflows.register(maintenance.schedules)
    monitoring.register(maintenance)
