"""The dashboard's pages; each module registers its routes."""

from __future__ import annotations

from engine.scheduler import Maintenance


def register_pages(maintenance: Maintenance) -> None:
    from ui.pages import monitoring, run_detail, runs, workflows

    runs.register()
    run_detail.register()
    workflows.register(maintenance.schedules)
    monitoring.register(maintenance)
