"""The run page kept live in real Chromium: statuses change without a reload, a step that fails or
waits opens its card, the choice banner jumps to its step, a watched 300-step run's page keeps up with
the engine, a tab that lost its connection catches up, and log lines arrive with their time."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.e2e.conftest import LONG_RUN
from tests.e2e.run_page import (
    assert_at_step,
    body,
    box,
    card,
    cell_statuses,
    epoch_s,
    gate_dir,
    open_gated_run,
    open_run,
    pill,
    screenshot,
)
from tests.integration.served import Server
from ui.theme import STATUS_COLORS, STATUS_ICONS


def test_a_pill_changes_colour_live_when_its_step_completes(
    page: Page, server: Server, tmp_path: Path, artifacts: Path
) -> None:
    run_id, gates = open_gated_run(page, server, tmp_path, "gated-trio", "bravo")
    bravo, charlie = pill(page, "bravo"), pill(page, "charlie")
    expect(bravo).to_have_attribute("data-status", "running")
    expect(bravo.locator(".q-icon")).to_have_class(re.compile(rf"\btext-{STATUS_COLORS['running']}\b"))
    expect(bravo.locator(".q-icon")).to_have_text(STATUS_ICONS["running"])  # colour always with an icon
    expect(charlie).to_have_attribute("data-status", "pending")
    expect(page.get_by_test_id("status-bravo")).to_have_text("running")
    root = page.locator("#run-root")
    expect(root).to_have_attribute("data-run-status", "running")
    expect(root).to_have_attribute("data-completed", "1")
    screenshot(page, artifacts, "run-page-desktop-running.png")
    page.evaluate("window.stepdeckNoReload = true")

    (gates / "bravo").touch()

    expect(bravo).to_have_attribute("data-status", "completed")
    expect(bravo.locator(".q-icon")).to_have_class(re.compile(rf"\btext-{STATUS_COLORS['completed']}\b"))
    expect(bravo.locator(".q-icon")).to_have_text(STATUS_ICONS["completed"])
    expect(charlie).to_have_attribute("data-status", "completed")
    expect(page.get_by_test_id("status-charlie")).to_have_text("completed")
    expect(page.get_by_test_id("step-counts")).to_have_text("3 completed")
    expect(root).to_have_attribute("data-run-status", "completed")
    expect(root).to_have_attribute("data-completed", "3")
    assert page.evaluate("window.stepdeckNoReload === true"), "the page was reloaded"
    assert server.run(run_id)["status"] == "completed"


def test_a_step_that_fails_or_waits_live_opens_its_card(page: Page, server: Server, tmp_path: Path) -> None:
    _, gates = open_gated_run(page, server, tmp_path, "live-attention", "bravo", "charlie")
    for key in ("alpha", "bravo", "charlie"):
        expect(card(page, key)).to_have_attribute("data-open", "false")
    page.evaluate("window.stepdeckNoReload = true")

    (gates / "charlie").touch()
    expect(card(page, "charlie")).to_have_attribute("data-open", "true")
    expect(body(page, "charlie")).to_contain_text("Pick one of 2 alternatives")
    expect(card(page, "charlie")).to_have_attribute("data-status", "waiting")

    (gates / "bravo").touch()
    expect(card(page, "bravo")).to_have_attribute("data-open", "true")
    expect(body(page, "bravo")).to_contain_text("bravo failed on purpose")
    expect(card(page, "alpha")).to_have_attribute("data-open", "false")  # nothing else opened
    assert page.evaluate("window.stepdeckNoReload === true"), "the page was reloaded"


def test_the_choice_banner_jumps_to_the_waiting_step(page: Page, server: Server, tmp_path: Path) -> None:
    gates = gate_dir(tmp_path)
    (gates / "pick").touch()
    run_id = server.start_run("choice-at-the-end", {"gate_dir": str(gates)})
    server.wait_run(run_id, "waiting")
    nav = open_run(page, server, run_id)
    expect(card(page, "pick")).to_have_count(0)  # 60 steps above it: far below the fold

    page.get_by_text("A choice is needed: Pick one").click()

    expect(card(page, "pick")).to_have_attribute("data-open", "true")
    expect(body(page, "pick")).to_contain_text("Pick one of 2 alternatives")
    assert_at_step(page, nav, "pick")


def test_a_watched_300_step_run_reaches_completed_soon_after_the_api(
    page: Page, server: Server, tmp_path: Path
) -> None:
    run_id, gates = open_gated_run(page, server, tmp_path, "long-gated", "gate")
    root = page.locator("#run-root")
    expect(root).to_have_attribute("data-run-status", "running")
    # When the page's hook turns completed, by the browser's clock (the server's, on this machine).
    root.evaluate(
        """root => {
            window.completedAt = null;
            const check = () => {
                if (window.completedAt !== null || root.dataset.runStatus !== 'completed') return;
                window.completedAt = Date.now();
            };
            new MutationObserver(check).observe(root, {attributes: true});
            check();
        }"""
    )

    (gates / "gate").touch()
    run = server.wait_run(run_id, "completed", timeout_s=120)
    page.wait_for_function("window.completedAt !== null", timeout=30_000)
    lag_s = page.evaluate("window.completedAt") / 1000 - epoch_s(run["finished_at"])
    print(f"\nrun page of a watched {LONG_RUN}-step run: completed {lag_s:.3f} s after the run finished")
    assert lag_s <= 5.0, f"the page showed completed {lag_s:.2f} s after the run finished (API finished_at)"
    expect(root).to_have_attribute("data-completed", str(LONG_RUN))
    expect(page.get_by_test_id("step-counts")).to_have_text(f"{LONG_RUN} completed")
    expect(page.get_by_test_id("status-gate")).to_have_text("completed")
    cells = cell_statuses(page)
    assert set(cells) == {"completed"}, f"cells not completed-green: {sorted(set(cells))}"


def test_a_tab_that_lost_its_connection_catches_up_without_reload(page: Page, server: Server, tmp_path: Path) -> None:
    run_id, gates = open_gated_run(page, server, tmp_path, "gated-trio", "bravo")
    bravo = pill(page, "bravo")
    expect(bravo).to_have_attribute("data-status", "running")
    page.evaluate("window.stepdeckNoReload = true")

    page.context.set_offline(True)  # the websocket drops, as with a sleeping laptop or a flaky LAN
    page.wait_for_timeout(1_500)
    (gates / "bravo").touch()
    server.wait_run(run_id, "completed")  # the run goes on without its viewer
    page.wait_for_timeout(500)
    # Still the old status: the tab really is cut off (otherwise this test would prove nothing).
    expect(bravo).to_have_attribute("data-status", "running")
    page.context.set_offline(False)

    expect(bravo).to_have_attribute("data-status", "completed", timeout=15_000)
    expect(pill(page, "charlie")).to_have_attribute("data-status", "completed")
    expect(page.locator("#run-root")).to_have_attribute("data-run-status", "completed")
    assert page.evaluate("window.stepdeckNoReload === true"), "the page was reloaded to catch up"


def test_a_model_starting_to_write_opens_its_card_and_streams_there(page: Page, server: Server, tmp_path: Path) -> None:
    run_id, gates = open_gated_run(page, server, tmp_path, "live-llm", "gate")
    write = card(page, "write")
    expect(write).to_have_attribute("data-open", "false")

    (gates / "gate").touch()

    expect(write).to_have_attribute("data-status", "running")
    expect(write).to_have_attribute("data-open", "true")
    expect(body(page, "write")).to_contain_text("Simulated output")  # the text as it streams
    assert server.run(run_id)["status"] == "running", "the text showed while the model was still writing"


# Whether a person sees the element: it is what the page draws at its centre (not clipped or covered).
DRAWN = """e => { const r = e.getBoundingClientRect();
    const hit = document.elementFromPoint(r.x + Math.min(20, r.width / 2), r.y + r.height / 2);
    return hit !== null && (hit === e || e.contains(hit)); }"""


def test_a_log_line_arrives_live_after_the_time_it_was_written(
    page: Page, server: Server, tmp_path: Path, artifacts: Path
) -> None:
    run_id, gates = open_gated_run(page, server, tmp_path, "live-log", "talk")
    pill(page, "talk").click()
    expect(card(page, "talk")).to_have_attribute("data-open", "true")
    lines = body(page, "talk").locator(".sd-log .q-scrollarea__content > *")  # one per line
    expect(lines).to_have_count(0)

    (gates / "talk-log").touch()

    time = r"\d\d:\d\d:\d\d\.\d{3}"
    expect(lines).to_have_text([re.compile(rf"^{time} through the first gate$")])
    expect(lines.first).to_have_attribute("title", re.compile(rf"^\d{{4}}-\d\d-\d\d {time} UTC$"))
    assert server.run(run_id)["status"] == "running", "the line showed while the step was still running"
    page.wait_for_function(DRAWN, arg=lines.first.element_handle())
    live_text, live_title = lines.first.inner_text(), lines.first.get_attribute("title")
    screenshot(page, artifacts, "run-page-log-times.png")

    (gates / "talk").touch()
    server.wait_run(run_id, "completed")
    expect(card(page, "talk")).to_have_attribute("data-status", "completed")
    [stored] = server.run(run_id)["steps"][0]["log_times"]
    at = datetime.fromisoformat(stored).astimezone(UTC)
    shown = f"{at:%H:%M:%S}.{at.microsecond // 1000:03d}"
    assert (live_text, live_title) == (f"{shown} through the first gate", f"{at:%Y-%m-%d} {shown} UTC")
    expect(lines).to_have_text([f"{shown} through the first gate"])  # and so after the step completed
    page.wait_for_function(DRAWN, arg=lines.first.element_handle())


def test_a_long_log_is_a_screenful_high_and_scrolls(page: Page, server: Server) -> None:
    run_id = server.start_run("long-log", {})
    server.wait_run(run_id, "completed")
    open_run(page, server, run_id)
    pill(page, "many").click()
    log = body(page, "many").locator(".sd-log")
    lines = log.locator(".q-scrollarea__content > *")
    expect(lines).to_have_count(100)
    assert 300 <= box(log)["height"] <= 330, box(log)  # 20rem, not 100 lines' worth
    assert lines.first.evaluate(DRAWN), "the first line is not drawn"
    assert not lines.last.evaluate(DRAWN), "the last line is drawn: the log does not scroll"
    log.locator(".q-scrollarea__container").evaluate("c => { c.scrollTop = c.scrollHeight; }")
    page.wait_for_function(DRAWN, arg=lines.last.element_handle())
