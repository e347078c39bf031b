"""The run page in real Chromium: the sticky step navigator, pill jumps, live pill colours, and
screenshots at desktop and narrow widths (saved under $STEPDECK_ARTIFACTS or tests/e2e/artifacts/).

NiceGUI's `.mark()` names do not reach the DOM: elements are found by their text and Quasar classes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.e2e.conftest import DESKTOP, NARROW, STEP_COUNT, step_label
from tests.integration.served import Server

LAST = step_label(STEP_COUNT)
RUNNING_CLASS = re.compile(r"\btext-blue-6\b")
COMPLETED_CLASS = re.compile(r"\btext-green-6\b")


def _page(browser: Browser, size: dict[str, int]) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": size["width"], "height": size["height"]})
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def desktop(browser: Browser) -> Iterator[Page]:
    yield from _page(browser, DESKTOP)


@pytest.fixture
def narrow(browser: Browser) -> Iterator[Page]:
    yield from _page(browser, NARROW)


# --- locating things on the page --------------------------------------------------------------------


def open_run(page: Page, server: Server, run_id: int) -> Locator:
    """Open the run page; returns the sticky navigation bar (the sticky element holding 'Expand all')."""
    page.goto(f"{server.base_url}/runs/{run_id}")
    nav = page.locator(".sticky", has_text="Expand all")
    expect(nav).to_be_visible(timeout=10_000)
    return nav


def pill(nav: Locator, label: str) -> Locator:
    return nav.locator("button", has_text=label)


def pill_dot(nav: Locator, label: str) -> Locator:
    return pill(nav, label).locator("i.q-icon")


def card(page: Page, label: str, key: str) -> Locator:
    """The step card (an expansion item) whose header shows the label and the key."""
    # The label of a card's header carries the step key as its title.
    return (
        page.locator(f'.q-expansion-item:has(.q-item__label [title="{key}"], [title="{key}"])')
        .filter(has_text=label)
        .first
    )


def box(locator: Locator) -> dict[str, float]:
    b = locator.bounding_box()
    assert b is not None, f"{locator} is not rendered"
    return {"x": b["x"], "y": b["y"], "width": b["width"], "height": b["height"]}


def settled_box(locator: Locator, timeout_s: float = 5.0) -> dict[str, float]:
    """The bounding box once it stops moving (smooth scrolling and the expansion's animation are over)."""
    deadline = time.monotonic() + timeout_s
    last = box(locator)
    still = 0
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = box(locator)
        still = still + 1 if now == last else 0
        if still >= 3:
            return now
        last = now
    raise AssertionError(f"{locator} kept moving for {timeout_s} s (last box {last})")


def topmost_inside(page: Page, locator: Locator, x: float, y: float) -> bool:
    """Whether the element drawn at viewport point (x, y) belongs to `locator` (nothing covers it there)."""
    handle = locator.element_handle()
    assert handle is not None
    result: Any = page.evaluate("([el, x, y]) => el.contains(document.elementFromPoint(x, y))", [handle, x, y])
    return bool(result)


def screenshot(page: Page, directory: Path, name: str) -> Path:
    path = directory / name
    page.screenshot(path=str(path))
    assert path.is_file() and path.stat().st_size > 0, f"no screenshot at {path}"
    return path


# --- tests ----------------------------------------------------------------------------------------------


def test_navigation_bar_stays_at_the_top_after_scrolling_to_the_bottom(
    desktop: Page, server: Server, fifty_run: int, artifacts: Path
) -> None:
    page = desktop
    nav = open_run(page, server, fifty_run)
    expect(card(page, LAST, "s50")).to_be_attached()
    screenshot(page, artifacts, "run-page-desktop.png")
    header = box(page.locator(".q-header"))

    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    page.wait_for_function("window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 2")
    expect(card(page, LAST, "s50")).to_be_in_viewport()
    screenshot(page, artifacts, "run-page-desktop-bottom.png")

    bar = settled_box(nav)
    assert page.evaluate("window.scrollY") > 1000, "the 50-step page did not scroll"
    # Right below the fixed header, inside the viewport, and drawn on top of the cards scrolling under it.
    assert header["y"] + header["height"] - 1 <= bar["y"] <= header["y"] + header["height"] + 12, (bar, header)
    assert bar["y"] + bar["height"] <= DESKTOP["height"]
    assert topmost_inside(page, nav, bar["x"] + 40, bar["y"] + bar["height"] / 2), "the bar is covered"
    expect(nav.get_by_text("Expand all")).to_be_in_viewport()
    expect(pill(nav, step_label(1))).to_be_in_viewport()


def test_clicking_the_last_pill_brings_its_card_into_view(desktop: Page, server: Server, fifty_run: int) -> None:
    page = desktop
    nav = open_run(page, server, fifty_run)
    last_card = card(page, LAST, "s50")
    expect(last_card).to_be_attached()
    expect(last_card).not_to_be_in_viewport()

    pill(nav, LAST).click()  # Playwright scrolls the pill row to the pill first, as a person would

    expect(last_card).to_have_class(re.compile(r"q-expansion-item--expanded"))
    expect(last_card).to_contain_text("s50 done")  # the body was built on opening
    where = settled_box(last_card)
    bar = box(nav)
    header_row = last_card.locator(".q-item").first
    head = box(header_row)
    assert bar["y"] + bar["height"] <= head["y"], f"the card's header {head} is under the sticky bar {bar}"
    assert topmost_inside(page, header_row, head["x"] + 60, head["y"] + head["height"] / 2)
    scroll_y, max_scroll_y = page.evaluate("[window.scrollY, document.documentElement.scrollHeight - innerHeight]")
    assert where["y"] >= 0 and where["y"] + where["height"] <= DESKTOP["height"], (
        f"the opened card {where} does not fit in the {DESKTOP['height']} px viewport after the scroll "
        f"(the page stopped at scrollY {scroll_y} of {max_scroll_y})"
    )


def test_narrow_window_stacks_cards_and_keeps_the_pills_scrollable(
    narrow: Page, server: Server, fifty_run: int, artifacts: Path
) -> None:
    page = narrow
    nav = open_run(page, server, fifty_run)
    expect(card(page, LAST, "s50")).to_be_attached()
    screenshot(page, artifacts, "run-page-narrow.png")

    page_width = page.evaluate("document.documentElement.scrollWidth")
    assert page_width <= NARROW["width"], f"the page scrolls sideways: {page_width} px wide in {NARROW['width']} px"
    first, second = box(card(page, step_label(1), "s01")), box(card(page, step_label(2), "s02"))
    assert second["y"] >= first["y"] + first["height"] - 1, "cards do not stack"
    assert first["x"] >= 0 and first["x"] + first["width"] <= NARROW["width"]

    pills = nav.locator(".overflow-x-auto")
    row = box(pills)
    scroll_width, client_width = pills.evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert row["width"] >= 100, f"the pill row is {row['width']:.0f} px wide at {NARROW['width']} px: no pill shows"
    assert scroll_width > client_width, "50 pills should overflow the row and scroll horizontally"
    pill(nav, LAST).click()
    expect(card(page, LAST, "s50")).to_be_in_viewport()


def test_a_pill_changes_colour_live_when_its_step_completes(
    desktop: Page, server: Server, tmp_path: Path, artifacts: Path
) -> None:
    page = desktop
    gate_dir = tmp_path / "gates"
    gate_dir.mkdir()
    run_id = server.start_run("gated-trio", {"gate_dir": str(gate_dir)})
    server.wait_step(run_id, "bravo", "running")
    nav = open_run(page, server, run_id)
    dot = pill_dot(nav, "Bravo")
    expect(dot).to_have_class(RUNNING_CLASS)
    expect(pill_dot(nav, "Charlie")).to_have_class(re.compile(r"\btext-grey-5\b"))
    run_badge = page.locator(".q-page-container .q-badge").first  # the run status, above the steps
    expect(run_badge).to_have_text("running")
    screenshot(page, artifacts, "run-page-desktop-running.png")
    page.evaluate("window.stepdeckNoReload = true")

    (gate_dir / "bravo").touch()

    expect(dot).to_have_class(COMPLETED_CLASS, timeout=5_000)
    expect(pill_dot(nav, "Charlie")).to_have_class(COMPLETED_CLASS, timeout=5_000)
    expect(run_badge).to_have_text("completed")
    assert page.evaluate("window.stepdeckNoReload === true"), "the page was reloaded"
    assert server.run(run_id)["status"] == "completed"


def test_a_tab_that_lost_its_connection_catches_up_without_reload(
    desktop: Page, server: Server, tmp_path: Path
) -> None:
    page = desktop
    gate_dir = tmp_path / "gates"
    gate_dir.mkdir()
    run_id = server.start_run("gated-trio", {"gate_dir": str(gate_dir)})
    server.wait_step(run_id, "bravo", "running")
    nav = open_run(page, server, run_id)
    expect(pill_dot(nav, "Bravo")).to_have_class(RUNNING_CLASS)
    page.evaluate("window.stepdeckNoReload = true")

    page.context.set_offline(True)  # the websocket drops, as with a sleeping laptop or a flaky LAN
    page.wait_for_timeout(1_500)
    (gate_dir / "bravo").touch()
    server.wait_run(run_id, "completed")  # the run goes on without its viewer
    page.wait_for_timeout(500)
    # Still the old colour: the tab really is cut off (otherwise this test would prove nothing).
    expect(pill_dot(nav, "Bravo")).to_have_class(RUNNING_CLASS)
    page.context.set_offline(False)

    expect(pill_dot(nav, "Bravo")).to_have_class(COMPLETED_CLASS, timeout=15_000)
    expect(pill_dot(nav, "Charlie")).to_have_class(COMPLETED_CLASS, timeout=5_000)
    assert page.evaluate("window.stepdeckNoReload === true"), "the page was reloaded to catch up"
