"""The run page in the states that need a person (waiting for a choice, cut off, stale), at 1400 and
390 px, light and dark: nothing scrolls sideways, the banners say what is needed, and each view is
saved as a screenshot (look at them)."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Browser, expect

from tests.e2e.conftest import NARROW, WIDE
from tests.e2e.run_page import open_run, page_width, screenshot
from tests.integration.served import Server


def shoot_all(browser: Browser, server: Server, run_id: int, query: str, name: str, artifacts: Path) -> None:
    for size in (WIDE, NARROW):
        for dark in (False, True):
            context = browser.new_context(
                viewport={"width": size["width"], "height": size["height"]}, color_scheme="dark" if dark else "light"
            )
            try:
                page = context.new_page()
                open_run(page, server, run_id, query)
                body = page.locator("body")
                expect(body).to_have_class(re.compile(r"\bbody--dark\b")) if dark else None
                page.wait_for_timeout(300)  # the jump's scroll settles
                assert page_width(page) <= size["width"], f"{name} scrolls sideways: {page_width(page)} px"
                screenshot(page, artifacts, f"run-{name}-{size['width']}-{'dark' if dark else 'light'}.png")
            finally:
                context.close()


def test_waiting_cut_off_and_stale_states(browser: Browser, server: Server, artifacts: Path) -> None:
    run_id = server.start_run("states")
    run = server.wait_run(run_id, "waiting", timeout_s=60)
    assert run["truncated_steps"] == ["short"] and run["needs_choice"] == ["draft"]

    context = browser.new_context(viewport={"width": WIDE["width"], "height": WIDE["height"]})
    try:
        page = context.new_page()
        open_run(page, server, run_id)
        expect(page.get_by_text("A choice is needed: Drafts")).to_be_visible()
        expect(page.get_by_text("Cut off at the token limit: Too short")).to_be_visible()
        expect(page.get_by_test_id("card-draft")).to_have_attribute("data-open", "true")  # needs a person: open
    finally:
        context.close()
    shoot_all(browser, server, run_id, "?step=draft", "waiting", artifacts)
    shoot_all(browser, server, run_id, "?step=short", "cut-off", artifacts)

    for index in (0, 1):  # choose, then change the choice: polish was made from the first one
        r = server.client.post(f"/api/runs/{run_id}/steps/draft/select", json={"index": index})
        assert r.status_code == 200, r.text
        server.wait_run(run_id, "completed", timeout_s=60)
    assert server.run(run_id)["stale_steps"] == ["polish"]
    shoot_all(browser, server, run_id, "?step=polish", "stale", artifacts)
