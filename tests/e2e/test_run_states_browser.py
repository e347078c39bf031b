"""The run page in the states that need a person (waiting for a choice, cut off, stale), at 1400 and
390 px, light and dark: nothing scrolls sideways, the banners say what is needed, and each view is
saved as a screenshot (look at them)."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.e2e.conftest import NARROW, WIDE
from tests.e2e.run_page import body, open_run, page_width, screenshot, wait_still
from tests.integration.served import Server

DARK = re.compile(r"\bbody--dark\b")


def shoot_all(page: Page, server: Server, run_id: int, query: str, name: str, artifacts: Path) -> None:
    """Open the run at each size in each colour scheme (the system's preference, as Chromium reports it) and
    save it. One page does it all: the viewport and the preference are set before each opening."""
    key = query.removeprefix("?step=")
    for size in (WIDE, NARROW):
        page.set_viewport_size({"width": size["width"], "height": size["height"]})
        for dark in (False, True):
            page.emulate_media(color_scheme="dark" if dark else "light")
            open_run(page, server, run_id, query)
            if dark:
                expect(page.locator("body")).to_have_class(DARK)
            else:
                expect(page.locator("body")).not_to_have_class(DARK)
            # The step's body is built and the jump's scroll has ended.
            expect(body(page, key)).not_to_have_text("Loading…")
            wait_still(page, page.get_by_test_id(f"card-header-{key}"))
            assert page_width(page) <= size["width"], f"{name} scrolls sideways: {page_width(page)} px"
            screenshot(page, artifacts, f"run-{name}-{size['width']}-{'dark' if dark else 'light'}.png")


def test_waiting_cut_off_and_stale_states(page: Page, server: Server, artifacts: Path) -> None:
    run_id = server.start_run("states")
    run = server.wait_run(run_id, "waiting", timeout_s=60)
    assert run["truncated_steps"] == ["short"] and run["needs_choice"] == ["draft"]

    open_run(page, server, run_id)
    expect(page.get_by_text("A choice is needed: Drafts")).to_be_visible()
    expect(page.get_by_text("Cut off at the token limit: Too short")).to_be_visible()
    expect(page.get_by_test_id("card-draft")).to_have_attribute("data-open", "true")  # needs a person: open
    shoot_all(page, server, run_id, "?step=draft", "waiting", artifacts)
    shoot_all(page, server, run_id, "?step=short", "cut-off", artifacts)

    for index in (0, 1):  # choose, then change the choice: polish was made from the first one
        r = server.client.post(f"/api/runs/{run_id}/steps/draft/select", json={"index": index})
        assert r.status_code == 200, r.text
        server.wait_run(run_id, "completed", timeout_s=60)
    assert server.run(run_id)["stale_steps"] == ["polish"]
    shoot_all(page, server, run_id, "?step=polish", "stale", artifacts)
