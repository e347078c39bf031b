"""The run page's layout in real Chromium: the overview strip of a 300-step run, narrow windows, long
unbroken words, and screenshots at 1400 and 390 px in light and dark mode (saved under
$STEPDECK_ARTIFACTS or tests/e2e/artifacts/; look at them)."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.e2e.conftest import FAILING_AT, LAST, LONG_RUN, LONG_TOKEN, NARROW, WIDE
from tests.e2e.run_page import (
    assert_at_step,
    assert_card_in_view,
    body,
    box,
    card,
    cell_statuses,
    contrast,
    open_run,
    page_width,
    pill,
    screenshot,
)
from tests.integration.served import Server


def test_narrow_window_stacks_cards_and_keeps_the_pills_scrollable(
    narrow: Page, server: Server, fifty_run: int, artifacts: Path
) -> None:
    page = narrow
    nav = open_run(page, server, fifty_run)
    screenshot(page, artifacts, "run-page-narrow.png")

    assert page_width(page) <= NARROW["width"], f"the page scrolls sideways: {page_width(page)} px"
    first, second = box(card(page, "s01")), box(card(page, "s02"))
    assert second["y"] >= first["y"] + first["height"] - 1, "cards do not stack"
    assert first["x"] >= 0 and first["x"] + first["width"] <= NARROW["width"]

    pills = page.get_by_test_id("pills")
    row = box(pills)
    scroll_width, client_width = pills.evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert row["width"] >= 100, f"the pill row is {row['width']:.0f} px wide at {NARROW['width']} px: no pill shows"
    assert scroll_width > client_width, "50 pills should overflow the row and scroll horizontally"
    pills.evaluate("strip => { strip.scrollLeft = strip.scrollWidth; }")
    pill(page, LAST).click()
    expect(card(page, LAST)).to_have_attribute("data-open", "true")
    assert_card_in_view(page, nav, LAST)


def test_the_overview_strip_shows_every_step_of_a_300_step_run_without_scrolling(
    page: Page, server: Server, mixed_run: int
) -> None:
    nav = open_run(page, server, mixed_run)
    overview = page.get_by_test_id("overview")
    expect(overview).to_have_attribute("data-cells", str(LONG_RUN))

    size = overview.evaluate(
        "c => ({buffer: c.width, height: c.height, shown: c.clientWidth, box: c.getBoundingClientRect().right,"
        " room: c.parentElement.clientWidth})"
    )
    bar = box(nav)
    assert size["buffer"] == size["shown"], f"the canvas draws {size['buffer']} px into {size['shown']} px"
    assert size["shown"] >= 0.9 * bar["width"], f"the strip uses {size['shown']} of the navigator's {bar['width']} px"
    assert size["shown"] <= size["room"] and size["box"] <= WIDE["width"], f"the strip is wider than its place: {size}"
    assert size["height"] <= 20, f"the strip takes {size['height'] // 10} lines (at most two)"
    assert nav.evaluate("e => e.scrollWidth <= e.clientWidth"), "the navigator scrolls sideways"
    assert page_width(page) <= WIDE["width"], f"the page scrolls sideways: {page_width(page)} px"

    # Every step is a cell of its status's colour, in order: the failed ones where they are.
    cells = cell_statuses(page)
    expected = ["failed" if i in FAILING_AT else "completed" for i in range(1, LONG_RUN + 1)]
    wrong = [
        (f"s{i + 1:02d}", got, want) for i, (got, want) in enumerate(zip(cells, expected, strict=True)) if got != want
    ]
    assert not wrong, f"{len(wrong)} cells of the overview are not their step's colour: {wrong[:10]}"

    # A click on a cell jumps to its step.
    cell_w = size["shown"] / (LONG_RUN / 2)
    overview.click(position={"x": (FAILING_AT[1] - LONG_RUN // 2 - 1) * cell_w + cell_w / 2, "y": 15})
    key = f"s{FAILING_AT[1]:02d}"
    assert_at_step(page, nav, key)


def test_a_long_unbroken_word_in_an_error_never_scrolls_the_page_sideways(
    narrow: Page, server: Server, mixed_run: int
) -> None:
    page = narrow
    key = f"s{FAILING_AT[0]:02d}"
    open_run(page, server, mixed_run, f"?step={key}")
    error = body(page, key).get_by_text(f"ValueError: {LONG_TOKEN}", exact=True)
    expect(error).to_be_visible()
    # The run's own error (in the header) carries the same word.
    header_error = page.locator("#run-root").get_by_text(f"step '{key}' failed")
    expect(header_error).to_be_visible()
    for what, element in (("the card's error", error), ("the run's error", header_error)):
        where = box(element)
        scroll_width, client_width = element.evaluate("e => [e.scrollWidth, e.clientWidth]")
        assert where["x"] >= 0 and where["x"] + where["width"] <= NARROW["width"], f"{what} is at {where}"
        assert scroll_width <= client_width, f"{what} is cut off: {scroll_width} px of text in {client_width} px"
    assert page_width(page) <= NARROW["width"], f"the page scrolls sideways: {page_width(page)} px"
    assert box(card(page, key))["width"] <= NARROW["width"]


def test_screenshots_light_and_dark(page: Page, server: Server, mixed_run: int, artifacts: Path) -> None:
    """The long mixed run opened at its first failure, at 1400 and 390 px, light and dark (look at them).
    Dark mode is switched with the header's toggle at 390 px (it fits on a phone) and remembered for the
    browser."""
    key = f"s{FAILING_AT[0]:02d}"

    def resize(size: dict[str, int]) -> None:
        page.set_viewport_size({"width": size["width"], "height": size["height"]})

    def shoot(size: dict[str, int], name: str) -> None:
        resize(size)
        nav = open_run(page, server, mixed_run, f"?step={key}")
        expect(body(page, key)).to_contain_text("ValueError")
        assert_at_step(page, nav, key)
        assert page_width(page) <= size["width"], f"the page scrolls sideways: {page_width(page)} px"
        # The navigator's buttons and counts read on its background, in either mode.
        for hook in ("expand-all", "step-counts"):
            ratio = contrast(page, page.get_by_test_id(hook), nav)
            assert ratio >= 3, f"{hook} on the navigator: contrast {ratio:.1f} in {name}"
        screenshot(page, artifacts, name)

    shoot(WIDE, "run-page-1400-light.png")
    shoot(NARROW, "run-page-390-light.png")
    toggle = page.locator(".q-header button", has_text="brightness_auto")  # follows the system: light here
    where = box(toggle)
    assert where["x"] >= 0 and where["x"] + where["width"] <= NARROW["width"], f"the theme toggle is at {where}"
    toggle.click()
    expect(page.locator("body")).to_have_class(re.compile(r"\bbody--dark\b"))
    shoot(WIDE, "run-page-1400-dark.png")
    expect(page.locator("body")).to_have_class(re.compile(r"\bbody--dark\b"))
    shoot(NARROW, "run-page-390-dark.png")
    expect(page.locator("body")).to_have_class(re.compile(r"\bbody--dark\b"))


def test_the_system_dark_preference_is_followed_until_a_choice_is_made(
    page: Page, server: Server, fifty_run: int
) -> None:
    page.emulate_media(color_scheme="dark")
    open_run(page, server, fifty_run)
    expect(page.locator("body")).to_have_class(re.compile(r"\bbody--dark\b"))
    page.locator(".q-header button", has_text="brightness_auto").click()  # → dark, remembered
    page.locator(".q-header button", has_text="dark_mode").click()  # → light, remembered
    expect(page.locator("body")).not_to_have_class(re.compile(r"\bbody--dark\b"))
    page.reload()
    open_run(page, server, fifty_run)
    expect(page.locator("body")).not_to_have_class(re.compile(r"\bbody--dark\b"))


def test_a_page_shows_its_loading_state_until_it_is_built_never_a_blank_page(
    page: Page, server: Server, fifty_run: int, artifacts: Path
) -> None:
    """Until the page's elements are mounted (held back here: NiceGUI's script does not arrive), the frame's
    bar and a spinner show; once they are, the loading state is gone."""
    held: list[str] = []
    page.route("**/_nicegui/**/nicegui.js", lambda route: held.append(route.request.url))
    page.goto(f"{server.base_url}/runs/{fifty_run}", wait_until="commit")
    boot = page.get_by_test_id("boot")
    expect(boot).to_be_visible()
    expect(boot).to_contain_text("Loading")
    assert held, "the page did not ask for NiceGUI's script"
    screenshot(page, artifacts, "run-page-loading.png")
    page.unroute("**/_nicegui/**/nicegui.js")

    open_run(page, server, fifty_run)
    expect(page.get_by_test_id("boot")).to_be_hidden()
