"""Colours and labels of statuses, and the shared page frame (header, navigation, dark mode)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from nicegui import app, ui

from engine.llm import providers
from models import testhooks
from models.status import RunStatus, StepStatus
from ui import security
from ui.security.sessions import user_storage

# Quasar colour names; one place, so pills, badges, the runs table and the legend agree.
STATUS_COLORS: dict[str, str] = {
    RunStatus.QUEUED: "blue-grey-5",
    StepStatus.PENDING: "grey-5",
    StepStatus.RUNNING: "blue-6",
    StepStatus.WAITING: "amber-8",
    StepStatus.COMPLETED: "green-6",
    StepStatus.FAILED: "red-6",
    StepStatus.CANCELLED: "brown-5",
    StepStatus.RETRYING: "deep-orange-5",  # its attempt failed, the retry policy starts another at its due time
    "stale": "purple-5",
    # An output cut off at the token limit: a dark cyan, unlike waiting's amber for every kind of
    # colour vision, and always shown with its scissors icon.
    "truncated": "cyan-9",
}
STATUS_ICONS: dict[str, str] = {
    RunStatus.QUEUED: "schedule",
    StepStatus.PENDING: "radio_button_unchecked",
    StepStatus.RUNNING: "autorenew",
    StepStatus.WAITING: "front_hand",
    StepStatus.COMPLETED: "check_circle",
    StepStatus.FAILED: "error",
    StepStatus.CANCELLED: "cancel",
    "not run": "remove_circle_outline",  # pending in a run that ended
    "not chosen": "pan_tool",  # waiting in a run that ended
    "stale": "history",
    "truncated": "content_cut",
    StepStatus.RETRYING: "update",
}

# Mermaid draws its lines black: in dark mode they must read on the dark background. A step's log
# (ui/components/log_view.py) is as high as its lines up to 20rem, then scrolls: Quasar's scroll area
# draws its content at the area's own fixed height, which would be 0 here.
THEME_CSS = """
.body--dark .sd-mermaid .flowchart-link, .body--dark .sd-mermaid .edgePath .path { stroke: #cfd8dc !important; }
.body--dark .sd-mermaid marker path, .body--dark .sd-mermaid .arrowheadPath {
  fill: #cfd8dc !important; stroke: #cfd8dc !important; }
.body--dark .sd-mermaid .edgeLabel { color: #eceff1; background: transparent; }
.sd-log.q-scrollarea { height: auto; contain: none; }
.sd-log .q-scrollarea__container { position: relative !important; height: auto !important; max-height: 20rem; }
.sd-log .q-scrollarea__content { position: relative !important; }
"""
# NiceGUI answers 500 when a page is not built within its response_timeout (3 s by default): under a
# burst of loads on a busy machine that is queueing, not failure. Pages wait longer instead.
PAGE_TIMEOUT_S = 30.0

PageBuilder = Callable[..., Awaitable[None]]


def dashboard_page(path: str) -> Callable[[PageBuilder], PageBuilder]:
    """`@ui.page(path)` for a dashboard page: it may take up to PAGE_TIMEOUT_S to be built."""

    def register(builder: PageBuilder) -> PageBuilder:
        @functools.wraps(builder)  # NiceGUI and FastAPI read the builder's parameters through this
        async def build(*args: Any, **kwargs: Any) -> None:
            await testhooks.page_work()
            await builder(*args, **kwargs)

        ui.page(path, response_timeout=PAGE_TIMEOUT_S)(build)
        return builder

    return register


NAV = [("Runs", "/"), ("Workflows", "/workflows"), ("Monitoring", "/monitoring")]
HEADER_HEIGHT_PX = 52  # fixed, so that sticky bars can sit exactly below it

# Shown from the first byte of every page until the page's elements are mounted (a page of 2,000 steps
# takes a second or two in the browser): the frame's bar and a spinner, never a blank page. It hides
# itself once NiceGUI's app has children (`:has`); with scripts off it says so after a while.
BOOT_HTML = f"""
<div class="sd-boot" role="status" aria-live="polite" data-testid="boot">
  <div class="sd-boot-bar" style="height: {HEADER_HEIGHT_PX}px">Stepdeck</div>
  <div class="sd-boot-body"><span class="sd-boot-spinner"></span><span>Loading…</span></div>
</div>
<style>
.sd-boot {{ position: fixed; inset: 0; z-index: 1; background: #fff; color: #64748b;
  font: 15px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }}
.sd-boot-bar {{ background: #1e293b; color: #fff; font-weight: 700; font-size: 18px; display: flex;
  align-items: center; padding: 0 16px; box-shadow: 0 2px 4px rgb(0 0 0 / 0.2); }}
.sd-boot-body {{ display: flex; align-items: center; justify-content: center; gap: 12px; padding-top: 30vh; }}
.sd-boot-spinner {{ width: 22px; height: 22px; border: 3px solid #cbd5e1; border-top-color: #0284c7;
  border-radius: 50%; animation: sd-boot-spin 0.8s linear infinite; }}
@keyframes sd-boot-spin {{ to {{ transform: rotate(360deg); }} }}
@media (prefers-color-scheme: dark) {{ .sd-boot {{ background: #121212; color: #94a3b8; }} }}
body:has(#app > *) .sd-boot {{ display: none; }}
</style>
"""


def status_color(status: str, stale: bool = False, truncated: bool = False) -> str:
    """The colour of a status; a completed step that is stale shows as stale, one whose output was
    cut off at the token limit as truncated."""
    if stale and status == StepStatus.COMPLETED:
        return STATUS_COLORS["stale"]
    if truncated and status in (StepStatus.COMPLETED, StepStatus.WAITING):
        return STATUS_COLORS["truncated"]
    return STATUS_COLORS.get(status, "grey-5")


def status_badge(status: str) -> ui.badge:
    return ui.badge(status, color=status_color(status)).props("rounded").classes("text-xs")


SIMULATED_HINT = (
    "LLM steps run on the built-in simulated provider: their text is generated locally, not by a model. "
    "Set STEPDECK_LLM_BASE_URL (and STEPDECK_LLM_API_KEY, STEPDECK_LLM_MODEL) to use a real one."
)


def _provider_chip() -> None:
    """Which model provider LLM steps use: loud when it is the simulated one."""
    settings = getattr(app.state, "settings", None)
    if settings is None:
        return
    info = providers.describe(settings)
    if info["simulated"]:
        # A phone shows the short form; the full hint is the title on both.
        chip = ui.badge(color="amber-8").props("rounded").classes("text-sm px-3 py-1 no-wrap").mark("llm-simulated")
        chip.props["title"] = SIMULATED_HINT
        with chip:
            ui.label("LLM: simulated").classes("gt-xs")
            ui.label("sim").classes("xs")
    else:
        host = (info["base_url"] or "").split("//")[-1]
        label = ui.label(f"LLM: {info['model'] or 'model per step'} · {host}")
        label.classes("text-xs text-slate-300 gt-xs ellipsis").style("max-width: 28rem").mark("llm-provider")
        label.props["title"] = label.text


def _remembered_dark() -> bool | None:
    """The person's choice (dark or light), or None to follow the system's preference."""
    storage = user_storage()  # None without user storage (no storage secret): the system's
    value = storage.get("dark") if storage is not None else None
    return value if isinstance(value, bool) else None


# The dark-mode button cycles: the system's preference → dark → light → the system's preference.
DARK_CYCLE: dict[bool | None, tuple[bool | None, str, str]] = {
    None: (True, "brightness_auto", "Theme: as the system (click for dark)"),
    True: (False, "dark_mode", "Theme: dark (click for light)"),
    False: (None, "light_mode", "Theme: light (click to follow the system)"),
}


def _account() -> None:
    who = security.current()
    if who.via != "session":
        return
    ui.label(f"{who.name} · {who.role}").classes("text-xs text-slate-300").mark("account")
    # Sign-out is a POST (a link could be followed from another site): a plain form, no websocket needed.
    with ui.element("form").props('method="post" action="/logout"').classes("m-0"):
        ui.button(icon="logout").props("flat round dense color=white type=submit").tooltip("Sign out").mark("sign-out")


@contextmanager
def frame(title: str) -> Iterator[None]:
    """The shared layout: header with product name, navigation and dark mode; content below."""
    dark = ui.dark_mode(_remembered_dark())
    ui.page_title(f"{title} · Stepdeck")
    with (
        ui.header(elevated=True)
        .classes("items-center gap-3 sm:gap-4 px-2 sm:px-4 bg-slate-800 no-wrap")
        .style(f"height: {HEADER_HEIGHT_PX}px")
        .mark("header")
    ):
        ui.link("Stepdeck", "/").classes("text-white text-lg font-bold no-underline gt-xs")
        for label, target in NAV:
            ui.link(label, target).classes("text-slate-200 no-underline hover:text-white").mark(f"nav-{label}")
        ui.space()
        _provider_chip()
        _account()

        def toggle() -> None:
            dark.value = DARK_CYCLE[dark.value][0]
            storage = user_storage()
            if storage is not None:
                storage["dark"] = dark.value  # remembered per browser (and so per person)
            _, icon, hint = DARK_CYCLE[dark.value]
            button.props(f"icon={icon}")
            tip.text = hint

        _, icon, hint = DARK_CYCLE[dark.value]
        button = ui.button(icon=icon, on_click=toggle).props("flat round dense color=white").mark("dark-toggle")
        with button:
            tip = ui.tooltip(hint)
    with ui.column().classes("w-full max-w-screen-xl mx-auto p-2 sm:p-4 gap-4"):
        yield
