"""The dashboard's pages; each module registers its routes."""

from __future__ import annotations

from nicegui import app
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from engine.llm.providers import Providers
from engine.maintenance import Maintenance
from engine.registry import Registry
from ui.live import LiveRuns


async def not_found(request: Request, exc: Exception) -> Response:
    """An unknown page gets the frame with the navigation; the API (and anything not asking for HTML)
    gets its JSON error."""
    from nicegui import Client, ui
    from nicegui.page import page

    from ui.errors import error_response, on_http_error
    from ui.theme import frame

    path = request.url.path
    if path.startswith(("/api", "/_nicegui")) or "text/html" not in request.headers.get("accept", ""):
        if isinstance(exc, StarletteHTTPException):
            return await on_http_error(request, exc)
        return error_response(404, "not_found", "not found")
    with Client(page(""), request=request) as client, frame("Not found"):
        ui.label("There is no page here.").classes("text-h6").mark("page-not-found")
        ui.label(path).classes("font-mono text-sm text-grey-7 break-all")
        ui.link("All runs", "/")
    return client.build_response(request, 404)


def register_pages(maintenance: Maintenance, live: LiveRuns, clients: Providers, workflows: Registry) -> None:
    from nicegui import ui

    from ui.components import output_view
    from ui.pages import monitoring, run_detail, runs
    from ui.pages import workflows as workflows_page
    from ui.theme import BOOT_HTML, THEME_CSS

    ui.add_css(output_view.CSS + THEME_CSS, shared=True)
    ui.add_body_html(BOOT_HTML, shared=True)

    app.add_exception_handler(404, not_found)  # in place of NiceGUI's bare page
    runs.register(live, workflows)
    run_detail.register(live)
    workflows_page.register(workflows, maintenance.schedules, clients)
    monitoring.register(maintenance, live)
