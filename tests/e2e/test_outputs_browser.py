"""Outputs in Chromium: they stay inside their box (no overlay, no restyling), show rendered or raw,
copy and download, and a 2 MB output shows a bounded part of itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.run_page import body, card, open_run, screenshot
from tests.integration.served import Server


@pytest.fixture(scope="module")
def outputs_run(server: Server) -> int:
    run_id = server.start_run("outputs")
    server.wait_run(run_id, "completed", timeout_s=60)
    return run_id


def test_an_output_cannot_draw_over_the_page(page: Page, server: Server, outputs_run: int, artifacts: Path) -> None:
    open_run(page, server, outputs_run, "?step=overlay")
    output = body(page, "overlay").locator(".sd-output").first
    expect(output).to_contain_text("After the overlay.")
    overlay = output.get_by_text("overlay", exact=True)
    expect(overlay).to_be_visible()
    assert overlay.get_attribute("style") is None and not overlay.get_attribute("class")
    position = overlay.evaluate("el => getComputedStyle(el).position")
    assert position == "static", position
    # What is drawn below the output is what is there: the next card's header takes the click.
    header = card(page, "below").get_by_test_id("card-header-below")
    header.scroll_into_view_if_needed()
    b = header.bounding_box()
    assert b is not None
    hit = page.evaluate(
        "([x, y]) => document.elementFromPoint(x, y).closest('[data-testid]')?.dataset.testid",
        [b["x"] + b["width"] / 2, b["y"] + b["height"] / 2],
    )
    assert hit == "card-header-below", hit
    # The output's heading is smaller than the run's title.
    heading = output.locator("h1")
    title = page.get_by_text(f"Run {outputs_run}", exact=True)
    size = heading.evaluate("el => parseFloat(getComputedStyle(el).fontSize)")
    assert size < title.evaluate("el => parseFloat(getComputedStyle(el).fontSize)")
    screenshot(page, artifacts, "outputs-overlay.png")

    # Raw shows the text as it came, markup and all.
    body(page, "overlay").get_by_role("button", name="Raw").click()
    expect(body(page, "overlay").locator(".sd-raw")).to_contain_text('<div style="position:fixed')


def test_a_2_mb_output_shows_a_bounded_part_and_downloads_whole(
    page: Page, server: Server, outputs_run: int, artifacts: Path
) -> None:
    open_run(page, server, outputs_run, "?step=huge")
    huge = body(page, "huge")
    expect(huge).to_contain_text("line 000000")

    def shown() -> int:
        length: int = huge.locator(".sd-output .nicegui-markdown").evaluate("el => el.textContent.length")
        return length

    assert shown() < 5_000
    huge.get_by_role("button", name="Show more").click()
    expect(huge.get_by_role("button", name="Show less")).to_be_visible()
    assert 90_000 < shown() < 110_000
    height: int = page.evaluate("document.documentElement.scrollHeight")
    assert height < 80_000, f"the page is {height} px tall"
    with page.expect_download() as download:
        huge.get_by_role("button", name="Download").click()
    saved = download.value.path()
    assert saved is not None
    text = Path(saved).read_text()
    assert text.startswith("line 000000") and "line 031999" in text and len(text) > 1_900_000
    huge.get_by_role("button", name="Show less").click()
    expect(huge.get_by_role("button", name="Show more")).to_be_visible()
    assert shown() < 5_000


def test_a_json_output_is_foldable(page: Page, server: Server, outputs_run: int) -> None:
    open_run(page, server, outputs_run, "?step=nested")
    nested = body(page, "nested")
    expect(nested.locator("[data-kind=json]")).to_contain_text("sections")
    nested.get_by_role("button", name="Raw").click()
    expect(nested.locator(".sd-raw")).to_contain_text('"words": 200')
