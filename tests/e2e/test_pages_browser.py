"""The runs list, Workflows and Monitoring in Chromium at 1400 and 390 px, light and dark: nothing
scrolls sideways, the header's controls are on screen, and each view is saved as a screenshot (look
at them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import NARROW, WIDE
from tests.e2e.run_page import page_width, screenshot
from tests.integration.served import Server

PAGES = [("runs", "/", "Runs"), ("workflows", "/workflows", "Workflows"), ("monitoring", "/monitoring", "Monitoring")]


def header_fits(page: Page, width: int) -> None:
    """Every link and button of the header that shows is inside the window. (Read in one evaluation: a
    query per control waits for the page between each, which a runs list busy with live runs delays.)"""
    controls = page.locator(".q-header a, .q-header button")
    rects: list[dict[str, float]] = controls.evaluate_all(
        "els => els.map(e => { const r = e.getBoundingClientRect();"
        " return {x: r.x, width: r.width, height: r.height, text: e.textContent.trim()}; })"
    )
    assert len(rects) >= 4, rects
    shown = [r for r in rects if r["width"] > 0 and r["height"] > 0]
    assert len(shown) >= 3, f"the header shows too few controls: {rects}"
    for where in shown:
        assert where["x"] >= 0 and where["x"] + where["width"] <= width + 0.5, f"a header control is at {where}"


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
@pytest.mark.parametrize("size", [WIDE, NARROW], ids=["1400", "390"])
def test_pages_fit_the_window_light_and_dark(
    page: Page, server: Server, fifty_run: int, mixed_run: int, artifacts: Path, size: dict[str, int], dark: bool
) -> None:
    page.set_viewport_size({"width": size["width"], "height": size["height"]})
    page.emulate_media(color_scheme="dark" if dark else "light")
    for name, path, title in PAGES:
        page.goto(f"{server.base_url}{path}")
        expect(page).to_have_title(re.compile(title))
        page.wait_for_load_state("networkidle")
        body = page.locator("body")
        if dark:
            expect(body).to_have_class(re.compile(r"\bbody--dark\b"))
        else:
            expect(body).not_to_have_class(re.compile(r"\bbody--dark\b"))
        header_fits(page, size["width"])
        assert page_width(page) <= size["width"], f"{path} scrolls sideways: {page_width(page)} px"
        screenshot(page, artifacts, f"{name}-{size['width']}-{'dark' if dark else 'light'}.png")


def test_a_row_opens_its_run_and_back_keeps_the_filters(
    page: Page, server: Server, fifty_run: int, mixed_run: int
) -> None:
    page.goto(f"{server.base_url}/?status=failed")
    rows = page.locator(".runs-table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(f"#{mixed_run}")
    rows.first.locator("td").nth(1).click()  # the workflow's cell, not the link
    expect(page).to_have_url(f"{server.base_url}/runs/{mixed_run}")
    page.go_back()
    expect(page).to_have_url(re.compile(r"/\?status=failed$"))
    expect(page.locator(".runs-table tbody tr")).to_have_count(1)

    # Typing a search writes it into the URL: a reload keeps it.
    page.get_by_label("Search").fill("fifty")
    expect(page).to_have_url(re.compile(r"q=fifty"))
    expect(page.get_by_text("No runs match these filters.")).to_be_visible()
    page.reload()
    expect(page.get_by_label("Search")).to_have_value("fifty")


def test_an_unknown_page_has_the_frame_and_the_api_answers_json(page: Page, server: Server) -> None:
    response = page.goto(f"{server.base_url}/no/such/page")
    assert response is not None and response.status == 404
    expect(page.get_by_text("There is no page here.")).to_be_visible()
    expect(page.locator(".q-header").get_by_text("Workflows")).to_be_visible()  # the navigation is there
    api = server.client.get("/api/no-such-thing")
    assert api.status_code == 404 and api.json()["error"] == "not_found", api.text
