"""The run page's step navigator and cards in real Chromium: the sticky bar, pill jumps, deep links,
the keys (j/k/n/o/?), Expand all / Collapse all (screenshots under $STEPDECK_ARTIFACTS or
tests/e2e/artifacts/)."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from tests.e2e.conftest import FAILING_AT, LAST, WIDE
from tests.e2e.run_page import (
    PILL_SHOWN,
    assert_at_step,
    assert_card_in_view,
    assert_current,
    body,
    box,
    card,
    open_run,
    pill,
    pill_shown,
    screenshot,
    settled_box,
    topmost_inside,
)
from tests.integration.served import Server


def test_navigation_bar_stays_at_the_top_after_scrolling_to_the_bottom(
    page: Page, server: Server, fifty_run: int, artifacts: Path
) -> None:
    nav = open_run(page, server, fifty_run)
    expect(card(page, "s01")).to_be_in_viewport()
    expect(card(page, LAST)).not_to_be_in_viewport()
    screenshot(page, artifacts, "run-page-desktop.png")
    header = box(page.locator(".q-header"))

    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    page.wait_for_function("window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 2")
    expect(card(page, LAST)).to_be_in_viewport()
    screenshot(page, artifacts, "run-page-desktop-bottom.png")

    bar = settled_box(nav)
    assert page.evaluate("window.scrollY") > 1000, "the 50-step page did not scroll"
    # Right below the fixed header, inside the viewport, and drawn on top of the cards scrolling under it.
    assert header["y"] + header["height"] - 1 <= bar["y"] <= header["y"] + header["height"] + 12, (bar, header)
    assert bar["y"] + bar["height"] <= WIDE["height"]
    assert topmost_inside(page, nav, bar["x"] + 40, bar["y"] + bar["height"] / 2), "the bar is covered"
    expect(page.get_by_test_id("expand-all")).to_be_in_viewport()
    expect(page.get_by_test_id("overview")).to_be_in_viewport()
    # The navigator marks the step in view (the first card below it), and its pill is in the strip.
    marked = page.locator(".run-pill-current")
    expect(marked).to_have_count(1)
    key = (marked.get_attribute("data-testid") or "")[len("pill-") :]
    page.wait_for_function(PILL_SHOWN, arg=key)
    head = box(page.get_by_test_id(f"card-header-{key}"))
    assert bar["y"] + bar["height"] - 46 <= head["y"] <= bar["y"] + bar["height"] + 60, (
        f"{key} is marked current, but its card is at {head}, not the first below the navigator {bar}"
    )


def test_clicking_the_last_pill_brings_its_card_into_view(page: Page, server: Server, fifty_run: int) -> None:
    nav = open_run(page, server, fifty_run)
    expect(card(page, LAST)).not_to_be_in_viewport()
    assert not pill_shown(page, LAST)

    # As a person would: scroll the pill strip to its end, then click the last pill.
    page.get_by_test_id("pills").evaluate("strip => { strip.scrollLeft = strip.scrollWidth; }")
    pill(page, LAST).click()

    last_card = card(page, LAST)
    expect(last_card).to_have_attribute("data-open", "true")
    expect(body(page, LAST)).to_contain_text(f"{LAST} done")  # the body was built on opening
    assert_card_in_view(page, nav, LAST)
    where = settled_box(last_card)
    scroll_y, max_scroll_y = page.evaluate("[window.scrollY, document.documentElement.scrollHeight - innerHeight]")
    assert where["y"] >= 0 and where["y"] + where["height"] <= WIDE["height"], (
        f"the opened card {where} does not fit in the {WIDE['height']} px viewport after the scroll "
        f"(the page stopped at scrollY {scroll_y} of {max_scroll_y})"
    )
    assert_current(page, LAST)  # the URL follows (replaceState: no new history entry, no reload)


def test_a_deep_link_opens_its_step_scrolled_into_view(page: Page, server: Server, long_run: int) -> None:
    nav = open_run(page, server, long_run, "?step=s200")
    target = card(page, "s200")
    expect(target).to_have_attribute("data-open", "true")
    expect(body(page, "s200")).to_contain_text("s200 done")
    expect(body(page, "s200")).to_contain_text("attempt 1 · started")
    assert_card_in_view(page, nav, "s200")
    expect(body(page, "s200").get_by_text("s200 done")).to_be_in_viewport()
    assert_current(page, "s200")
    # Only that card was opened: its neighbours are drawn closed.
    expect(card(page, "s201")).to_have_attribute("data-open", "false")
    expect(page.locator('[data-testid^=card-][data-open="true"]')).to_have_count(1)


def test_n_jumps_to_the_next_failed_step_and_the_pill_strip_follows(page: Page, server: Server, mixed_run: int) -> None:
    nav = open_run(page, server, mixed_run)
    first, second = (f"s{i:02d}" for i in FAILING_AT)
    assert not pill_shown(page, first), f"{first}'s pill is in view already: following it would prove nothing"
    expect(card(page, first)).to_have_count(0)

    page.keyboard.press("n")
    assert_current(page, first)
    expect(pill(page, first)).to_have_attribute("data-status", "failed")
    expect(card(page, first)).to_have_attribute("data-open", "true")
    expect(body(page, first)).to_contain_text("ValueError")
    assert_card_in_view(page, nav, first)

    page.keyboard.press("n")
    assert_current(page, second)
    assert not pill_shown(page, first)
    assert_card_in_view(page, nav, second)

    page.keyboard.press("n")  # round again to the first
    assert_at_step(page, nav, first)

    page.get_by_test_id("next-failed").click()  # the button does the same for failed steps only
    assert_current(page, second)


def test_j_and_k_move_the_current_step_and_o_opens_and_closes_it(page: Page, server: Server, fifty_run: int) -> None:
    nav = open_run(page, server, fifty_run, "?step=s05")
    assert_at_step(page, nav, "s05")  # near the top too: the page scrolled exactly to it

    page.keyboard.press("j")
    assert_current(page, "s06")
    page.keyboard.press("j")
    assert_current(page, "s07")
    page.keyboard.press("k")
    assert_current(page, "s06")
    for _ in range(25):
        page.keyboard.press("j")
    assert_at_step(page, nav, "s31")
    expect(card(page, "s31")).to_have_attribute("data-open", "false")  # moving does not open

    page.keyboard.press("o")
    expect(card(page, "s31")).to_have_attribute("data-open", "true")
    expect(body(page, "s31")).to_contain_text("s31 done")
    page.keyboard.press("o")
    expect(card(page, "s31")).to_have_attribute("data-open", "false")
    expect(body(page, "s31")).to_have_count(0)
    assert_current(page, "s31")


def test_question_mark_shows_the_keys(page: Page, server: Server, fifty_run: int) -> None:
    open_run(page, server, fifty_run)
    keys = page.get_by_test_id("keys-help")
    expect(keys).to_have_count(0)
    page.keyboard.press("?")
    expect(keys).to_be_visible()
    for text in ("next step", "previous step", "next step that needs attention", "open or close the current step"):
        expect(keys).to_contain_text(text)
    page.keyboard.press("Escape")
    expect(keys).to_be_hidden()


def test_expand_all_then_collapse_all(page: Page, server: Server, fifty_run: int) -> None:
    open_run(page, server, fifty_run)
    cards = page.locator("[data-testid^=card-][data-open]")
    opened = page.locator('[data-testid^=card-][data-open="true"]')
    expect(opened).to_have_count(0)

    page.get_by_test_id("expand-all").click()
    expect(page.locator('[data-testid^=card-][data-open="false"]')).to_have_count(0)
    expect(body(page, "s01")).to_contain_text("s01 done")
    expect(body(page, "s02")).to_contain_text("s02 done")
    assert cards.count() >= 3
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    expect(card(page, LAST)).to_have_attribute("data-open", "true")  # cards drawn later are open too
    expect(body(page, LAST)).to_contain_text(f"{LAST} done")

    page.get_by_test_id("collapse-all").click()
    expect(opened).to_have_count(0)
    expect(page.locator(".run-card-body")).to_have_count(0)
    page.evaluate("window.scrollTo(0, 0)")
    expect(card(page, "s01")).to_have_attribute("data-open", "false")
